"""``mlgate batch score`` (Spark batch scoring), ``mlgate monitor`` (drift and quality of the inference
log) and ``mlgate retrain`` (entry point ``mlgate.commands``)."""

from __future__ import annotations

import argparse
import re

from serving.errors import UsageError
from serving.drift_status import PSI_DRIFT
from serving.settings import ALIAS_PATTERN, VERSION_PATTERN, ModelSettings, Settings


def model_ref(text: str) -> ModelSettings:
    """``--model``, checked before anything starts: ``name@alias`` or ``name/version``."""
    from pydantic import ValidationError

    from batch.score import parse_ref

    hint = "use name@alias (my-model@champion) or name/version (my-model/3)"
    try:
        ref = parse_ref(text)
    except (ValueError, ValidationError):  # ValidationError is a ValueError; named for the reader
        raise UsageError(f"--model {text!r} is not a model reference: {hint}") from None
    if ref.version is None and not re.match(ALIAS_PATTERN, ref.alias or ""):
        raise UsageError(f"--model {text!r}: {ref.alias!r} is not an alias name (letters, digits, _ and -); "
                         f"{hint}")
    if ref.version is not None and not ref.version.isdigit():
        raise UsageError(f"--model {text!r}: {ref.version!r} is not a version number; {hint}")
    return ref


def load_repository(settings: Settings, path: str | None):
    """The feature repository in folder ``path``, else the one applied to the online store."""
    from features_online import repository
    from features_online.redis_client import connect

    if path is not None:
        try:
            return repository.load(path)
        except (repository.RepositoryError, OSError) as exc:
            raise UsageError(f"--repo {path}: not a feature repository: {exc}") from None
    client = connect(settings.redis)
    try:
        applied = repository.applied(client, settings.redis.prefix)
    finally:
        client.close()
    if applied is None:
        raise UsageError(f"no feature repository applied to {settings.redis.url} (prefix {settings.redis.prefix!r}): "
                         "run `mlgate apply PATH`, or pass --repo PATH")
    return applied


def default_model(settings: Settings, repo) -> str:
    """The model the gateway serves first, as it follows it: the first of the settings, else the
    repository's only one (settings no longer list any by default)."""
    from serving.catalog import catalog_of

    models = catalog_of(settings, repo).models
    if not settings.models and len(models) != 1:
        raise UsageError(f"the gateway serves {len(models)} models ({', '.join(m.name for m in models) or 'none'}): "
                         "say which with --model")
    first = models[0]
    return f"{first.name}/{first.version}" if first.version else f"{first.name}@{first.alias}"


def cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    from batch.score import plan, run
    from features_online import jobs
    from features_online.progress import step

    ref = model_ref(args.model) if args.model is not None else None
    repo = load_repository(settings, args.repo)
    if ref is None:
        args.model = default_model(settings, repo)
        ref = model_ref(args.model)
    # An unknown model or alias, inputs no view provides, missing offline tables: refused now,
    # not after a Spark start (ModelValidationError, OfflineTableMissing).
    job = plan(settings, ref, repo, entity_table=args.entities is not None)
    output = args.output or str(settings.state_dir / "scores" / args.model.replace("@", "_").replace("/", "_"))
    with step("starting Spark"):
        spark = jobs.session(settings, debug=getattr(args, "debug", False))
    try:
        with step(f"batch scoring with {args.model}"):
            result = run(settings, spark, job, output, sync=not args.no_sync, entities=args.entities)
    finally:
        spark.stop()
    print(f"scored {result.rows:,} entities with {result.model} v{result.version} in {result.seconds:.1f}s "
          f"({result.rows_per_s:,.0f} rows/s) -> {result.output}")
    if result.sync:
        print(f"fallback scores live in Redis as version {result.sync.version}")
    return 0


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from mlflow import MlflowClient

    from batch import retrain
    from features_online import jobs
    from features_online.progress import step
    from features_online.redis_client import connect
    from serving import drift_status

    repo = load_repository(settings, args.repo)
    job = retrain.plan(repo, args.model, args.alias)  # a bad entry point fails before anything runs
    status = None
    if args.if_drift:
        client = connect(settings.redis)
        try:
            status = drift_status.read(client, settings.redis.prefix, args.model)
        finally:
            client.close()
    decision = retrain.decide(status, args.if_drift)
    if not decision.train:
        print(f"{args.model}: not retraining: {decision.reason.replace('NAME', args.model)}")
        return retrain.NO_STATUS_EXIT if status is None else 0
    registry = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    with step("starting Spark"):
        spark = jobs.session(settings, debug=getattr(args, "debug", False))
    try:
        done = retrain.run(settings, repo, job, decision, args.alias, spark, registry)
    finally:
        spark.stop()
    print(f"registered {done.model} v{done.version} as @{done.alias} (trigger: {decision.trigger}; parent: "
          f"v{done.parent_version or '-'}); @{job.serving_alias} unchanged. Promote it after review: "
          f"mlgate rollout approve --model {done.model} --version {done.version} --by <you>")
    return 0


def cmd_monitor(args: argparse.Namespace, settings: Settings) -> int:
    from functools import partial

    from batch.baseline import load_baseline
    from batch.monitor import monitor, parse_window, render, write_metrics
    from features_online import jobs
    from features_online.progress import step
    from features_online.redis_client import connect
    from serving import drift_status

    try:
        window = parse_window(args.window)
    except ValueError as exc:
        raise UsageError(f"--window: {exc}") from None
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", args.model):  # ModelSettings.name; a path part
        raise UsageError(f"--model {args.model!r} is not a registered model name")
    if args.version is not None and not re.match(VERSION_PATTERN, args.version):
        raise UsageError(f"--version {args.version!r} is not a version number")
    root = settings.log_table
    with step("starting Spark"):
        spark = jobs.session(settings, debug=getattr(args, "debug", False))
    try:
        with step(f"judging {args.model} over {args.window}"):
            result = monitor(spark, root, args.model, partial(load_baseline, settings.tracking_uri, args.model),
                             window=window, version=args.version, threshold=args.threshold)
            write_metrics(spark, root, result)
    finally:
        spark.stop()
    status = result.status()
    if status is not None:
        client = connect(settings.redis)  # where the gateway reads it (serving/drift_watch.py)
        try:
            drift_status.write(client, settings.redis.prefix, status)
        finally:
            client.close()
    print(render(result))
    return 1 if args.fail_on_drift and status is not None and status["drifted"] else 0


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("retrain", help="train a model again through its repository entry point, into a "
                                        "challenger alias, with lineage tags")
    sp.add_argument("--model", required=True, help="the model's name in the feature repository")
    sp.add_argument("--if-drift", action="store_true",
                    help="only if its latest drift status (`mlgate monitor`) says drifted; exit 3 if there is none")
    sp.add_argument("--alias", default="challenger", help="alias to point at the new version (never the "
                                                          "serving one; default challenger)")
    sp.add_argument("--repo", help="feature repository folder (default: the one applied to the online store)")
    sp.set_defaults(func=cmd_retrain)
    sp = sub.add_parser("batch", help="Spark batch scoring: scores to Parquet and to the fallback keyspace")
    sp.add_argument("action", choices=("score",))
    sp.add_argument("--model", help="name@alias or name/version (default: the settings' first model, else the "
                                    "repository's only one)")
    sp.add_argument("--output", help="Parquet folder (default .mlgate/scores/<model>)")
    sp.add_argument("--repo", help="feature repository folder (default: the one applied to the online store)")
    sp.add_argument("--entities", help="Parquet table of the key rows to score (default: the rows of the model's "
                                       "first view keyed by all its entities' keys)")
    sp.add_argument("--no-sync", action="store_true", help="write Parquet only, leave Redis alone")
    sp.set_defaults(func=cmd_batch)

    sp = sub.add_parser("monitor", help="drift (PSI against the training baseline) and quality (with labels) of "
                                        "a model's logged traffic: metrics table, status in Redis")
    sp.add_argument("--model", required=True, help="registered model name")
    sp.add_argument("--window", default="1d", help="how far back from now: 30m, 6h, 1d (default 1d)")
    sp.add_argument("--version", help="judge only this version (default: every version in the window)")
    sp.add_argument("--threshold", type=float, default=PSI_DRIFT,
                    help=f"PSI over which a column has drifted (default {PSI_DRIFT})")
    sp.add_argument("--fail-on-drift", action="store_true", help="exit 1 when drift is found (CI)")
    sp.set_defaults(func=cmd_monitor)
