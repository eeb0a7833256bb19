"""``mlgate features build|sync``: the feature store's commands (entry point ``mlgate.commands``)."""

from __future__ import annotations

import argparse

from features_online.settings import StoreSettings


def cmd_features(args: argparse.Namespace, settings: StoreSettings) -> int:
    from features_online import jobs
    from features_online.progress import step

    as_of = args.as_of
    with step("starting Spark"):
        spark = jobs.session(settings, debug=getattr(args, "debug", False))
    try:
        if args.action == "build":
            with step("building the offline feature table"):
                path, as_of = jobs.build(settings, spark, as_of)
            print(f"built as of {as_of.isoformat()}: {path}")
        else:
            mode = "incremental" if args.incremental else "full"
            with step(f"{mode} sync to Redis"):
                result = jobs.sync(settings, spark, mode)
            print(f"{result.mode} sync: {result.rows:,} rows -> version {result.version} "
                  f"in {result.seconds:.2f}s ({result.rows_per_s:,.0f} rows/s)")
    finally:
        spark.stop()
    return 0


def iso_time(text: str):
    """``--as-of``: parsed by argparse, so a malformed time is a usage error before Spark starts."""
    from features_online.spark_job import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("features", help="the Spark feature job: build the offline table, sync it to Redis")
    sp.add_argument("action", choices=("build", "sync"))
    sp.add_argument("--as-of", type=iso_time, help="build: feature time (ISO 8601); default just after the latest event")
    sp.add_argument("--incremental", action="store_true",
                    help="sync: only entities with events since the last sync, in place")
    sp.set_defaults(func=cmd_features)
