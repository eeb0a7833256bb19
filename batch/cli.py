"""``mlgate batch score``: Spark batch scoring (entry point ``mlgate.commands``)."""

from __future__ import annotations

import argparse

from serving.settings import Settings


def cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    from batch.score import score
    from features_online import jobs

    output = args.output or str(settings.state_dir / "scores" / args.model.replace("@", "_").replace("/", "_"))
    spark = jobs.session(settings)
    try:
        result = score(settings, spark, args.model, output, sync=not args.no_sync)
    finally:
        spark.stop()
    print(f"scored {result.rows:,} entities with {result.model} v{result.version} in {result.seconds:.1f}s "
          f"({result.rows_per_s:,.0f} rows/s) -> {result.output}")
    if result.sync:
        print(f"fallback scores live in Redis as version {result.sync.version}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("batch", help="Spark batch scoring: scores to Parquet and to the fallback keyspace")
    sp.add_argument("action", choices=("score",))
    sp.add_argument("--model", required=True, help="name@alias or name/version")
    sp.add_argument("--output", help="Parquet folder (default .mlgate/scores/<model>)")
    sp.add_argument("--no-sync", action="store_true", help="write Parquet only, leave Redis alone")
    sp.set_defaults(func=cmd_batch)
