"""``mlgate demo``: both examples end to end, with nothing but mlgate's own jobs and commands.

Data -> Redis -> the examples' repository applied -> every online view built and synced ->
both models trained on point-in-time training sets and registered -> batch scores (the
fallbacks) -> one gateway serving both models -> real predictions and a curl line for each.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from urllib.parse import urlparse

import httpx

from examples import project
from serving.errors import CommandFailed
from serving.launcher import url
from serving.settings import Settings

EXAMPLES = ("fraud", "delivery")


def runners():
    """Each example's steps module, by example name (looked up at call time, so a test may
    replace one of their functions)."""
    from examples.delivery import runner as delivery
    from examples.fraud import runner as fraud

    return {"fraud": fraud, "delivery": delivery}


def spark_session(settings: Settings, debug: bool = False):
    from features_online import jobs
    from features_online.progress import step

    with step("starting Spark"):
        return jobs.session(settings, debug=debug)


@contextmanager
def quiet_mlflow(debug: bool = False):
    """MLflow's schema hints and registry chatter off: the line printed after says what happened."""
    with warnings.catch_warnings():
        if not debug:
            warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
            logging.getLogger("mlflow").setLevel(logging.WARNING)  # mlflow's import had set INFO
        yield


def ensure_redis(settings: Settings) -> None:
    """Start a local redis-server when none answers at the configured URL (local URLs only)."""
    import redis

    from features_online.redis_client import connect

    target = urlparse(settings.redis.url)
    try:
        connect(settings.redis, socket_timeout_s=1, retries=0).ping()  # with its password, if any
        return
    except redis.RedisError:
        if target.hostname not in ("127.0.0.1", "localhost"):
            raise
    port = target.port or 6379
    print(f"no Redis at {target.hostname}:{port}: starting redis-server", flush=True)
    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
                    "--save", "", "--appendonly", "no", "--dir", str(settings.state_dir)], check=True)


def apply(settings: Settings, repo):
    """Record the repository in the online store, as `mlgate apply` does: what gateways serve and
    what jobs read without --repo."""
    from features_online import repository
    from features_online.redis_client import connect

    client = connect(settings.redis)
    try:
        changes = repository.plan(repo, repository.applied(client, settings.redis.prefix)).changes
        recorded = repository.apply(client, settings.redis.prefix, repo)
    finally:
        client.close()
    print(f"applied repository {repo.project!r} ({len(repo.views)} views, {len(repo.models)} models, "
          f"digest {recorded.digest}; {len(changes)} changes)", flush=True)
    return recorded


def features(settings: Settings, spark, repo) -> None:
    """Build every online view's offline table as of now, and sync it to Redis."""
    from features_online import jobs
    from features_online.progress import step

    for view in jobs.views(repo):
        with step(f"building {view.name}"):
            path, as_of = jobs.build(settings, spark, repo, view)
        with step(f"syncing {view.name} to Redis"):
            result = jobs.sync(settings, spark, repo, view, "full")
        print(f"synced {result.rows:,} {view.entity.name}s to Redis as version {result.version} "
              f"({view.name} as of {as_of:%Y-%m-%d %H:%M:%S}Z, {result.seconds:.1f}s)", flush=True)


def batch_scores(settings: Settings, spark, repo, model: str, entities: str | None = None) -> None:
    """Precompute scores: the gateway's fallback when the online path cannot answer."""
    from batch.score import score
    from features_online.progress import step

    name = model.split("@", 1)[0]
    with step(f"batch scoring with {model}"):
        result = score(settings, spark, model, str(settings.state_dir / "scores" / name), repo=repo,
                       entities=entities)
    print(f"batch-scored {result.rows:,} rows with {result.model} v{result.version} "
          f"({result.rows_per_s:,.0f} rows/s); fallback scores synced to Redis", flush=True)


def wait_for_model(settings: Settings, model: str, timeout_s: float = 120.0) -> None:
    """Until the gateway describes ``model`` (it picks up models of the applied repository
    while it runs: the second one may load a moment after the gateway is ready)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url(settings, f"/v1/models/{model}"), timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise CommandFailed(f"the gateway does not serve {model} after {timeout_s:.0f}s: see "
                                f"{settings.state_dir / 'logs'}")
        time.sleep(1)


def run(args: argparse.Namespace, settings: Settings, serve_flags: list[str]) -> int:
    from serving import launcher

    if launcher.is_running(settings):  # before minutes of data, features and training
        raise CommandFailed(f"a gateway is already running (pid file {launcher.pid_file(settings)}); "
                            "run `mlgate stop` first")
    debug = getattr(args, "debug", False)
    steps = runners()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    steps["fraud"].ensure_data(settings, args.customers)
    steps["delivery"].ensure_data(settings, args.couriers)
    ensure_redis(settings)
    repo = apply(settings, project.load(settings))
    spark = spark_session(settings, debug)
    try:
        features(settings, spark, repo)
        for example in EXAMPLES:
            if not _has_alias(settings, steps[example].MODEL, "champion"):
                steps[example].train(settings, "champion", spark=spark, debug=debug)
        batch_scores(settings, spark, repo, f"{steps['fraud'].MODEL}@champion")
        batch_scores(settings, spark, repo, f"{steps['delivery'].MODEL}@champion",
                     entities=str(steps["delivery"].score_pairs(settings)))
    finally:
        spark.stop()
    from features_online.progress import step

    with step("starting the gateway on Ray Serve ...", plain=True):
        launcher.start_detached(settings, serve_flags)
    for example in EXAMPLES:
        wait_for_model(settings, steps[example].MODEL)
        steps[example].show_predictions(settings)
    print(f"  curl -s {url(settings, '/metrics')} | grep mlgate_\n", flush=True)
    traffic_rows = args.traffic or (DRIFT_ROWS if args.drift else 0)
    if traffic_rows:
        send_traffic(settings, steps["fraud"].MODEL, traffic_rows, args.drift)
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


DRIFT_ROWS = 3000


def send_traffic(settings: Settings, model: str, rows: int, drift: bool) -> None:
    """A burst of real requests (drifted inputs with ``drift``), then the loop's next commands."""
    from examples import traffic
    from features_online.progress import step

    with step(f"sending {rows:,} {'drifted ' if drift else ''}rows to {model}", plain=True):
        counts = traffic.send(settings, model, traffic.fraud_rows(settings, rows, drift=drift))
    print(f"{counts['answered']:,} rows answered, {counts['refused']:,} refused")
    print("Close the loop (the demo logs every request; --no-inference-log turns that off):\n"
          "  mlgate log compact\n"
          f"  mlgate monitor --model {model}\n"
          f"  mlgate retrain --model {model} --if-drift\n", flush=True)


def _has_alias(settings: Settings, name: str, alias: str) -> bool:
    from examples.registry import has_alias

    return has_alias(settings.tracking_uri, name, alias)
