"""``mlgate``: the one console script, assembled from each package's commands.

Each package contributes its subcommands through the ``mlgate.commands`` entry-point group
(``pyproject.toml``): a function ``register(subparsers)`` that adds them, each with
``set_defaults(func=...)``; ``func(args, settings)`` returns the exit status. This dispatcher
imports none of them by name, so the packages' imports keep pointing down, and an image that
leaves a package out (the serving image ships no load tests or examples) simply lacks its
commands. Entry points rather than a hard-coded list: the same mechanism lets a user's own
package add commands without touching mlgate.

Settings come from ``MLGATE_*`` variables; flags override them. Expected errors print one line
and exit 1 (a failure) or 2 (usage or configuration); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from features_online.errors import FeatureStoreError
from serving.errors import CommandFailed, MlgateError, ModelValidationError, RegistryUnavailable
from serving.settings import Settings

COMMANDS_GROUP = "mlgate.commands"
EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXPECTED = (CommandFailed, FeatureStoreError, MlgateError, ModelValidationError, RegistryUnavailable)
# Libraries whose INFO chatter is not the user's business (the log folder has Ray's and Spark's own).
QUIET_LOGGERS = ("mlflow", "alembic", "urllib3", "httpx", "py4j", "ray", "filelock")

log = logging.getLogger("mlgate")


def settings_from(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Settings:
    """Settings from the environment, ``base`` (a Serve config's args) and the flags given."""
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
    if getattr(args, "insecure", False):
        overrides["auth"] = {**overrides.get("auth", {}), "insecure": True}
    if getattr(args, "inference_log", False):
        overrides["inference_log"] = {**overrides.get("inference_log", {}), "enabled": True}
    return Settings(**overrides)


def serve_options(sp: argparse.ArgumentParser) -> None:
    """Flags of the commands that start a gateway (``serve``, ``demo``)."""
    sp.add_argument("--config", default=None, help="Ray Serve config file (default: the bundled one)")
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp.add_argument("--ingress", choices=("direct", "reuseport", "haproxy", "proxy"))
    sp.add_argument("--replicas", type=int, help="gateway replicas (haproxy, reuseport ingress: one per CPU)")
    sp.add_argument("--address", help="join this Ray cluster instead of starting one")
    sp.add_argument("--insecure", action="store_true", default=None,
                    help="serve predictions without credentials on a non-loopback --host "
                         "(refused otherwise: configure auth.api_keys_file or auth.jwt)")
    sp.add_argument("--inference-log", action="store_true", default=None,
                    help="record every answered request in the inference log (inference_log.enabled)")


def serve_flags(args: argparse.Namespace) -> list[str]:
    """The ``serve_options`` given, as flags for an ``mlgate serve`` started in the background."""
    flags = []
    for name in ("host", "port", "ingress", "replicas", "address", "config"):
        value = getattr(args, name, None)
        if value is not None:
            flags += [f"--{name}", str(value)]
    if getattr(args, "insecure", None):
        flags.append("--insecure")
    if getattr(args, "inference_log", None):
        flags.append("--inference-log")
    return flags


# -- the gateway's own commands -------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from serving.launcher import DEFAULT_CONFIG, app_args, read_config, serve_forever

    config = read_config(Path(args.config or DEFAULT_CONFIG))
    serve_forever(settings_from(args, base=app_args(config)), config, quiet=not getattr(args, "debug", False))
    return 0


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    from serving.launcher import stop

    print("stopped" if stop(settings) else "no gateway was running")
    return 0


def cmd_rollout(args: argparse.Namespace, settings: Settings) -> int:
    from serving import rollout_cli

    return rollout_cli.run(args, settings)


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    from serving import repo_cli

    return repo_cli.init(args, settings)


def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    from serving import repo_cli

    return repo_cli.plan(args, settings)


def cmd_apply(args: argparse.Namespace, settings: Settings) -> int:
    from serving import repo_cli

    return repo_cli.apply(args, settings)


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from serving.auth import keys_cli

    return keys_cli.run(args, settings)


def register(sub: argparse._SubParsersAction) -> None:
    """The gateway's commands: ``init``, ``plan``, ``apply``, ``serve``, ``stop``, ``rollout``,
    ``keys``."""
    from serving.auth.keys_cli import add_arguments as keys_arguments
    from serving.rollout_cli import add_arguments as rollout_arguments

    sp = sub.add_parser("init", help="scaffold a feature repository (project file, an entity, a source, "
                                     "a view, a model)")
    sp.add_argument("dir", nargs="?", default="feature_repo", metavar="DIR",
                    help="folder to write it into (default: feature_repo)")
    sp.add_argument("--project", help="project name (default: the folder's name)")
    sp.set_defaults(func=cmd_init)

    sp = sub.add_parser("plan", help="validate a feature repository and show what applying it would change "
                                     "(exit 1 if it would break something)")
    sp.add_argument("dir", nargs="?", default=".", metavar="DIR", help="repository folder (default: .)")
    sp.set_defaults(func=cmd_plan)

    sp = sub.add_parser("apply", help="record a feature repository in Redis for every gateway and job")
    sp.add_argument("dir", nargs="?", default=".", metavar="DIR", help="repository folder (default: .)")
    sp.add_argument("--force", action="store_true", help="apply even though the plan has errors")
    sp.set_defaults(func=cmd_apply)

    sp = sub.add_parser("serve", help="run the gateway on Ray Serve in the foreground")
    serve_options(sp)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("stop", help="stop a gateway started with `demo --detach`")
    sp.set_defaults(func=cmd_stop)

    sp = sub.add_parser("rollout", help="canary weight, shadows, approval and promotion on a running gateway")
    rollout_arguments(sp)
    sp.set_defaults(func=cmd_rollout)

    sp = sub.add_parser("keys", help="make, list and revoke API keys (stored hashed in a key file)")
    keys_arguments(sp)
    sp.set_defaults(func=cmd_keys)


# -- the dispatcher -------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlgate", description="Online inference gateway: MLflow models "
                                "on Ray Serve, features from Redis.")
    p.add_argument("--state-dir", help="local state folder (default .mlgate, or MLGATE_STATE_DIR)")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks, and Spark's and Ray's logs on the terminal instead of the log folder")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            contribute = ep.load()
        except ImportError as exc:  # a package this installation leaves out
            log.debug("commands of %s not available: %s", ep.value, exc)
            continue
        contribute(sub)
    return p


def configure_logging(debug: bool, level: str) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not debug:
        for noisy in QUIET_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # usage errors: argparse prints them and exits 2
    debug = args.debug
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        return _refuse(_config_problem(exc), EXIT_USAGE, debug)
    configure_logging(debug, settings.log_level)
    try:
        return args.func(args, settings)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ValidationError as exc:  # a flag or argument that makes invalid settings (an alias name)
        return _refuse(_config_problem(exc), EXIT_USAGE, debug)
    except EXPECTED as exc:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return _refuse(message, getattr(exc, "exit_code", EXIT_FAILURE), debug)


def _config_problem(exc: ValidationError) -> str:
    """Every invalid setting, by its place (``http.port``), without echoing secrets' values."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "settings"
        parts.append(f"{where}: {error['msg']}")
    return "invalid settings (MLGATE_* variables or flags): " + "; ".join(parts)


def _refuse(message: str, code: int, debug: bool) -> int:
    """One line on stderr (``mlgate --help`` tells of ``--debug``); the traceback with ``--debug``."""
    if debug:
        logging.getLogger("mlgate").exception("%s", message)
    line = " ".join(message.split())  # a library's message may span lines: the user gets one
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.text import Text

        Console(stderr=True, highlight=False).print(Text.assemble(("mlgate: error: ", "bold red"), line),
                                                   soft_wrap=True)
    else:
        print(f"mlgate: error: {line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

