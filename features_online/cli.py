"""``mlgate features build|sync|training-set``: the feature store's commands (entry point
``mlgate.commands``), for any feature repository: ``--repo PATH``, else the applied one."""

from __future__ import annotations

import argparse

from features_online.settings import StoreSettings


def cmd_features(args: argparse.Namespace, settings: StoreSettings) -> int:
    from features_online import jobs
    from features_online.errors import FeatureJobError
    from features_online.progress import step

    if args.action == "training-set":
        missing = [flag for flag, value in (("--entities", args.entities), ("--features", args.features),
                                            ("--output", args.output)) if not value]
        if missing:
            error = FeatureJobError(f"features training-set needs {', '.join(missing)}")
            error.exit_code = 2  # a usage error, as the command line reports them
            raise error
    repo = jobs.load_repository(settings, args.repo)
    if args.action != "training-set":
        views = jobs.views(repo, args.view)  # unknown names fail before Spark starts
    with step("starting Spark"):
        spark = jobs.session(settings, debug=getattr(args, "debug", False))
    try:
        if args.action == "build":
            for view in views:
                with step(f"building the offline table of {view.name}"):
                    path, as_of = jobs.build(settings, spark, repo, view, args.as_of)
                print(f"{view.name}: built as of {as_of.isoformat()}: {path}")
        elif args.action == "sync":
            mode = "incremental" if args.incremental else "full"
            for view in views:
                with step(f"{mode} sync of {view.name} to Redis"):
                    result = jobs.sync(settings, spark, repo, view, mode)
                print(f"{view.name}: {result.mode} sync: {result.rows:,} rows -> version {result.version} "
                      f"in {result.seconds:.2f}s ({result.rows_per_s:,.0f} rows/s)")
        else:
            features = [f.strip() for f in args.features.split(",") if f.strip()]
            with step("point-in-time training set"):
                frame = jobs.training_set(spark, repo, args.entities, features, args.timestamp_column, args.output)
                rows = frame.count()
            print(f"training set: {rows:,} rows, {len(frame.columns)} columns -> {args.output}")
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
    sp = sub.add_parser("features", help="the Spark feature jobs: build offline tables, sync them to Redis, "
                                         "point-in-time training sets")
    sp.add_argument("action", choices=("build", "sync", "training-set"))
    sp.add_argument("--repo", help="feature repository folder (default: the one applied with `mlgate apply`)")
    sp.add_argument("--view", action="append", help="build/sync: this view only (repeatable; default: "
                                                    "every online view)")
    sp.add_argument("--as-of", type=iso_time, help="build: feature time (ISO 8601); default just after the latest event")
    sp.add_argument("--incremental", action="store_true",
                    help="sync: only entities with events since the last sync, in place")
    sp.add_argument("--entities", help="training-set: entity table (.parquet or .csv with a header): key "
                                       "columns, an event time, labels")
    sp.add_argument("--timestamp-column", default="event_timestamp",
                    help="training-set: the entity table's time column (timestamp or epoch seconds)")
    sp.add_argument("--features", help="training-set: comma-separated view__feature or view names")
    sp.add_argument("--output", help="training-set: where to write the result (Parquet)")
    sp.set_defaults(func=cmd_features)
