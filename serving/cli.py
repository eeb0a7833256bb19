"""``mlgate``: the one console script. Settings come from MLGATE_* variables; flags override them."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from serving.settings import Settings


def _settings(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Settings:
    overrides: dict[str, Any] = dict(base or {})
    http = {k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None)),
                              ("ingress", getattr(args, "ingress", None)),
                              ("replicas", getattr(args, "replicas", None))) if v is not None}
    if http:
        overrides["http"] = {**overrides.get("http", {}), **http}
    if getattr(args, "address", None):
        overrides["ray"] = {**overrides.get("ray", {}), "address": args.address}
    if getattr(args, "state_dir", None):
        overrides["state_dir"] = args.state_dir
    return Settings(**overrides)


def cmd_data(args: argparse.Namespace) -> int:
    from serving.demo import data

    settings = _settings(args)
    paths = data.write(data.generate(n_customers=args.customers, seed=args.seed), settings.data_dir)
    print("\n".join(str(p) for p in paths.values()))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from serving.demo.runner import ensure_data, train

    settings = _settings(args)
    ensure_data(settings, args.customers)
    train(settings, args.alias, seed=args.seed)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from features_online import jobs
    from features_online.spark_job import parse_time

    settings = _settings(args)
    spark = jobs.session(settings)
    if args.action == "build":
        path, as_of = jobs.build(settings, spark, parse_time(args.as_of))
        print(f"built as of {as_of.isoformat()}: {path}")
    else:
        result = jobs.sync(settings, spark, "incremental" if args.incremental else "full")
        print(f"{result.mode} sync: {result.rows:,} rows -> version {result.version} "
              f"in {result.seconds:.2f}s ({result.rows_per_s:,.0f} rows/s)")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from batch.score import score
    from features_online import jobs

    settings = _settings(args)
    output = args.output or str(settings.state_dir / "scores" / args.model.replace("@", "_").replace("/", "_"))
    result = score(settings, jobs.session(settings), args.model, output, sync=not args.no_sync)
    print(f"scored {result.rows:,} entities with {result.model} v{result.version} in {result.seconds:.1f}s "
          f"({result.rows_per_s:,.0f} rows/s) -> {result.output}")
    if result.sync:
        print(f"fallback scores live in Redis as version {result.sync.version}")
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    from loadtests.loadtest import run

    return run(args)


def cmd_rollout(args: argparse.Namespace) -> int:
    from serving import rollout_cli

    return rollout_cli.run(args, _settings(args))


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.launcher import app_args, read_config, serve_forever

    config = read_config(Path(args.config))
    serve_forever(_settings(args, base=app_args(config)), config)
    return 0


def _serve_flags(args: argparse.Namespace) -> list[str]:
    flags = []
    for name in ("host", "port", "ingress", "replicas", "address", "config"):
        value = getattr(args, name, None)
        if value is not None:
            flags += [f"--{name}", str(value)]
    return flags


def cmd_demo(args: argparse.Namespace) -> int:
    from serving.demo import runner

    from features_online import jobs

    settings = _settings(args)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    runner.ensure_data(settings, args.customers)
    runner.ensure_redis(settings)
    spark = jobs.session(settings)
    runner.features(settings, spark)
    if not runner.has_alias(settings, "fraud-detector", "champion"):
        runner.train(settings, "champion", spark=spark)
    runner.batch_scores(settings, spark)
    spark.stop()
    print("starting the gateway on Ray Serve ...", flush=True)
    runner.start_detached(settings, _serve_flags(args))
    runner.show_predictions(settings)
    if args.detach:
        print(f"gateway running in the background; logs in {settings.state_dir / 'logs'}; "
              "stop it with `mlgate stop`")
        return 0
    print("serving in the foreground: Ctrl-C stops it", flush=True)
    try:
        while runner.is_running(settings):
            import time

            time.sleep(1)
        print("the gateway exited; see its log", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...")
        runner.stop(settings)
        return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from serving.demo.runner import stop

    print("stopped" if stop(_settings(args)) else "no gateway was running")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlgate", description=__doc__)
    p.add_argument("--state-dir", help="local state folder (default .mlgate, or MLGATE_STATE_DIR)")
    sub = p.add_subparsers(dest="command", required=True)

    def serve_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", default=None, help="Ray Serve config file (default: the bundled one)")
        sp.add_argument("--host")
        sp.add_argument("--port", type=int)
        sp.add_argument("--ingress", choices=("direct", "reuseport", "haproxy", "proxy"))
        sp.add_argument("--replicas", type=int, help="gateway replicas (haproxy, reuseport ingress: one per CPU)")
        sp.add_argument("--address", help="join this Ray cluster instead of starting one")

    sp = sub.add_parser("data", help="generate the demo transactions (Parquet)")
    sp.add_argument("--customers", type=int, default=100_000)
    sp.add_argument("--seed", type=int, default=7)
    sp.set_defaults(func=cmd_data)

    sp = sub.add_parser("train", help="train the demo model and register it under an alias")
    sp.add_argument("--alias", default="champion", help="champion, challenger, ...")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--customers", type=int, default=100_000, help="if data must be generated")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("features", help="the Spark feature job: build the offline table, sync it to Redis")
    sp.add_argument("action", choices=("build", "sync"))
    sp.add_argument("--as-of", help="build: feature time (ISO 8601); default just after the latest event")
    sp.add_argument("--incremental", action="store_true",
                    help="sync: only entities with events since the last sync, in place")
    sp.set_defaults(func=cmd_features)

    sp = sub.add_parser("batch", help="Spark batch scoring: scores to Parquet and to the fallback keyspace")
    sp.add_argument("action", choices=("score",))
    sp.add_argument("--model", default="fraud-detector@champion", help="name@alias or name/version")
    sp.add_argument("--output", help="Parquet folder (default .mlgate/scores/<model>)")
    sp.add_argument("--no-sync", action="store_true", help="write Parquet only, leave Redis alone")
    sp.set_defaults(func=cmd_batch)

    try:  # a source checkout has it; the serving image does not ship the load tests
        from loadtests.loadtest import add_arguments
    except ImportError:
        add_arguments = None
    if add_arguments is not None:
        sp = sub.add_parser("loadtest", help="Locust against a running gateway, with SLO gates (exit 1 on a breach)")
        add_arguments(sp)
        sp.set_defaults(func=cmd_loadtest)

    from serving.rollout_cli import add_arguments as rollout_arguments

    sp = sub.add_parser("rollout", help="canary weight, shadows, approval and promotion on a running gateway")
    rollout_arguments(sp)
    sp.set_defaults(func=cmd_rollout)

    sp = sub.add_parser("serve", help="run the gateway on Ray Serve in the foreground")
    serve_options(sp)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("demo", help="data, features in Redis, model, gateway, and real predictions")
    serve_options(sp)
    sp.add_argument("--detach", action="store_true", help="return once ready; `mlgate stop` ends it")
    sp.add_argument("--customers", type=int, default=100_000)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("stop", help="stop a gateway started with `demo --detach`")
    sp.set_defaults(func=cmd_stop)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if getattr(args, "config", "unset") is None:
        from serving.launcher import DEFAULT_CONFIG

        args.config = str(DEFAULT_CONFIG)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
