"""The fraud example's commands (entry point ``mlgate.commands``): ``data``, ``train``, ``demo``."""

from __future__ import annotations

import argparse
import re
import sys
import time

from serving.cli import serve_flags, serve_options
from serving.errors import CommandFailed, UsageError
from serving.settings import ALIAS_PATTERN, Settings

MODEL = "fraud-detector"


def cmd_data(args: argparse.Namespace, settings: Settings) -> int:
    from examples.fraud import data
    from features_online.progress import step

    with step(f"generating demo data for {args.customers:,} customers"):
        paths = data.write(data.generate(n_customers=args.customers, seed=args.seed), settings.data_dir)
    print("\n".join(str(p) for p in paths.values()))
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from examples.fraud.runner import ensure_data, train

    check_alias(args.alias)  # before minutes of data, Spark and training, not after
    ensure_data(settings, args.customers)
    train(settings, args.alias, seed=args.seed, debug=getattr(args, "debug", False))
    return 0


def check_alias(alias: str) -> None:
    """An alias MLflow accepts: letters, digits, ``_`` and ``-``, not ``latest`` nor ``v<number>``
    (MLflow reserves both)."""
    if not re.match(ALIAS_PATTERN, alias):
        raise UsageError(f"--alias {alias!r} is not an alias name: use letters, digits, _ and -, "
                         "starting with a letter (champion, challenger)")
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise UsageError(f"--alias {alias!r} is reserved by MLflow: pick another name (champion, challenger)")


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from examples.fraud import runner
    from features_online import jobs
    from serving import launcher

    if launcher.is_running(settings):  # before minutes of data, features and training
        raise CommandFailed(f"a gateway is already running (pid file {launcher.pid_file(settings)}); "
                                     "run `mlgate stop` first")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    runner.ensure_data(settings, args.customers)
    runner.ensure_redis(settings)
    from features_online.progress import step

    with step("starting Spark"):
        spark = jobs.session(settings, debug=getattr(args, "debug", False))
    runner.features(settings, spark)
    if not runner.has_alias(settings, MODEL, "champion"):
        runner.train(settings, "champion", spark=spark)
    runner.batch_scores(settings, spark, f"{MODEL}@champion")
    spark.stop()
    with step("starting the gateway on Ray Serve ...", plain=True):
        launcher.start_detached(settings, serve_flags(args))
    runner.show_predictions(settings, MODEL)
    if args.detach:
        print(f"gateway running in the background; logs in {settings.state_dir / 'logs'}; "
              "stop it with `mlgate stop`")
        return 0
    print("serving in the foreground: Ctrl-C stops it", flush=True)
    try:
        while launcher.is_running(settings):
            time.sleep(1)
        print("the gateway exited; see its log", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...")
        launcher.stop(settings)
        return 0


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("data", help="generate the demo transactions (Parquet)")
    sp.add_argument("--customers", type=int, default=100_000)
    sp.add_argument("--seed", type=int, default=7)
    sp.set_defaults(func=cmd_data)

    sp = sub.add_parser("train", help="train the demo model and register it under an alias")
    sp.add_argument("--alias", default="champion", help="champion, challenger, ...")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--customers", type=int, default=100_000, help="if data must be generated")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("demo", help="data, features in Redis, model, gateway, and real predictions")
    serve_options(sp)
    sp.add_argument("--detach", action="store_true", help="return once ready; `mlgate stop` ends it")
    sp.add_argument("--customers", type=int, default=100_000)
    sp.set_defaults(func=cmd_demo)
