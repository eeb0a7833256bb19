"""The examples' commands (entry point ``mlgate.commands``): ``data``, ``train``, ``demo``.

``mlgate data`` writes both examples' raw tables, ``mlgate train --model NAME`` trains one of
their models on its point-in-time training set, ``mlgate demo`` runs everything and serves both.
"""

from __future__ import annotations

import argparse
import re

from serving.cli import serve_flags, serve_options
from serving.errors import UsageError
from serving.settings import ALIAS_PATTERN, Settings

MODELS = {"fraud-detector": "fraud", "delivery-eta": "delivery"}


def cmd_data(args: argparse.Namespace, settings: Settings) -> int:
    from examples import project
    from examples.delivery import data as delivery
    from examples.fraud import data as fraud
    from features_online.progress import step

    paths = {}
    with step(f"generating fraud data for {args.customers:,} customers"):
        paths |= fraud.write(fraud.generate(n_customers=args.customers, seed=args.seed),
                             project.data_dir(settings, "fraud"))
    with step(f"generating delivery data for {args.couriers:,} couriers"):
        paths |= delivery.write(delivery.generate(n_couriers=args.couriers,
                                                  n_restaurants=max(20, args.couriers * 2 // 3),
                                                  deliveries_per_day=args.couriers * 5, seed=args.seed),
                                project.data_dir(settings, "delivery"))
    print("\n".join(str(p) for p in paths.values()))
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from examples.demo import runners

    check_alias(args.alias)  # before minutes of data, Spark and training, not after
    runner = runners()[MODELS[args.model]]
    if MODELS[args.model] == "fraud":
        runner.ensure_data(settings, args.customers)
    else:
        runner.ensure_data(settings)
    runner.train(settings, args.alias, seed=args.seed, debug=getattr(args, "debug", False))
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
    from examples import demo

    return demo.run(args, settings, serve_flags(args))


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("data", help="generate the examples' raw data (Parquet): transactions, deliveries")
    sp.add_argument("--customers", type=int, default=100_000, help="fraud example: card holders")
    sp.add_argument("--couriers", type=int, default=300, help="delivery example: couriers")
    sp.add_argument("--seed", type=int, default=7)
    sp.set_defaults(func=cmd_data)

    sp = sub.add_parser("train", help="train an example model on its training set and register it under an alias")
    sp.add_argument("--model", choices=sorted(MODELS), default="fraud-detector")
    sp.add_argument("--alias", default="champion", help="champion, challenger, ...")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--customers", type=int, default=100_000, help="if fraud data must be generated")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("demo", help="both examples: data, features in Redis, models, batch scores, one gateway "
                                     "serving both, real predictions")
    serve_options(sp)
    sp.add_argument("--detach", action="store_true", help="return once ready; `mlgate stop` ends it")
    sp.add_argument("--no-inference-log", dest="inference_log", action="store_false",
                    help="keep no inference log (the demo records every request by default)")
    sp.set_defaults(inference_log=True)
    sp.add_argument("--customers", type=int, default=100_000, help="fraud example: card holders")
    sp.add_argument("--couriers", type=int, default=300, help="delivery example: couriers")
    sp.add_argument("--traffic", type=int, default=0, metavar="N",
                    help="once serving, send N real rows of the fraud example's recent transactions")
    sp.add_argument("--drift", action="store_true",
                    help="send drifted rows (amounts x3, more foreign and online, night hours); 3000 unless "
                         "--traffic says; then print the monitor and retrain commands")
    sp.set_defaults(func=cmd_demo)
