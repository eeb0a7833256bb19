"""``mlgate features build|sync``: the feature store's commands (entry point ``mlgate.commands``)."""

from __future__ import annotations

import argparse

from features_online.settings import StoreSettings


def cmd_features(args: argparse.Namespace, settings: StoreSettings) -> int:
    from features_online import jobs
    from features_online.spark_job import parse_time

    spark = jobs.session(settings)
    try:
        if args.action == "build":
            path, as_of = jobs.build(settings, spark, parse_time(args.as_of))
            print(f"built as of {as_of.isoformat()}: {path}")
        else:
            result = jobs.sync(settings, spark, "incremental" if args.incremental else "full")
            print(f"{result.mode} sync: {result.rows:,} rows -> version {result.version} "
                  f"in {result.seconds:.2f}s ({result.rows_per_s:,.0f} rows/s)")
    finally:
        spark.stop()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("features", help="the Spark feature job: build the offline table, sync it to Redis")
    sp.add_argument("action", choices=("build", "sync"))
    sp.add_argument("--as-of", help="build: feature time (ISO 8601); default just after the latest event")
    sp.add_argument("--incremental", action="store_true",
                    help="sync: only entities with events since the last sync, in place")
    sp.set_defaults(func=cmd_features)
