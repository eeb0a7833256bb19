"""The fraud demo's steps: data, features in Redis, a registered model, batch scores, real predictions."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import warnings
from datetime import timedelta
from urllib.parse import urlparse

import httpx
import pandas as pd

from serving.launcher import url
from serving.settings import Settings

log = logging.getLogger(__name__)


def ensure_data(settings: Settings, customers: int) -> None:
    from examples.fraud import data

    from features_online.progress import step

    if (settings.data_dir / "transactions.parquet").exists():
        return
    with step(f"generating demo data for {customers:,} customers ...", plain=True):
        data.write(data.generate(n_customers=customers), settings.data_dir)


def has_alias(settings: Settings, name: str, alias: str) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    try:
        client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return False
    return True


def training_data(settings: Settings, spark):
    """Last week's labelled transactions with point-in-time features from the Spark job."""
    from examples.fraud import data
    from examples.fraud.train import LABEL_DAYS, training_table
    from features_online import jobs, spark_job

    latest = spark_job.default_as_of(spark, str(settings.data_dir / "transactions.parquet"))
    since = latest - timedelta(days=LABEL_DAYS)
    return training_table(data.read(settings.data_dir), jobs.training_features(settings, spark, since))


def train(settings: Settings, alias: str, seed: int = 0, spark=None, debug: bool = False):
    from examples.fraud.train import train_and_register
    from features_online import jobs
    from features_online.progress import step

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    print(f"training fraud-detector for @{alias} (point-in-time features from Spark) ...", flush=True)
    if spark is None:
        with step("starting Spark"):
            spark = jobs.session(settings, debug=debug)
    with step("point-in-time training features (Spark)"):
        table = training_data(settings, spark)
    with step("fitting, converting to ONNX, registering"), warnings.catch_warnings():
        if not debug:  # MLflow's schema hint and registry chatter: the line below says what happened
            warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
            logging.getLogger("mlflow").setLevel(logging.WARNING)  # mlflow's import had set INFO
        result = train_and_register(table, settings.tracking_uri, settings.artifact_root, alias=alias, seed=seed)
    print(f"registered {result.name} v{result.version} as @{alias} "
          f"(AUC {result.metrics['auc']:.3f}, average precision {result.metrics['average_precision']:.3f})")
    return result


def features(settings: Settings, spark) -> None:
    """Build the offline feature table as of now and sync it to Redis (the demo's data flow)."""
    from features_online import jobs
    from features_online.progress import step

    with step("building the offline feature table"):
        path, as_of = jobs.build(settings, spark)
    print(f"built customer features as of {as_of.isoformat()} -> {path}", flush=True)
    with step("syncing features to Redis"):
        result = jobs.sync(settings, spark)
    print(f"synced {result.rows:,} customers to Redis as version {result.version} "
          f"in {result.seconds:.1f}s ({result.rows_per_s:,.0f} rows/s)", flush=True)


def batch_scores(settings: Settings, spark, model: str = "fraud-detector@champion") -> None:
    """Precompute every customer's score: the gateway's fallback when the online path can't answer."""
    from batch.score import score
    from features_online.progress import step

    with step(f"batch scoring every customer with {model}"):
        result = score(settings, spark, model, str(settings.state_dir / "scores" / "fraud-detector"))
    print(f"batch-scored {result.rows:,} customers with {result.model} v{result.version} "
          f"({result.rows_per_s:,.0f} rows/s); fallback scores synced to Redis", flush=True)


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


def show_predictions(settings: Settings, model: str = "fraud-detector") -> None:
    """Score a few real recent transactions by customer_id, and print a curl line to paste."""
    from examples.fraud import data
    from examples.fraud.train import REQUEST_NAMES, request_table

    demo = data.read(settings.data_dir)
    recent = request_table(data.DemoData(demo.customers, demo.merchants, demo.transactions.tail(3000)))
    picked = pd.concat([recent[recent.label == 1].tail(2), recent[recent.label == 0].tail(2)])
    rows = picked.to_dict("records")
    body = {"entities": [{"customer_id": int(r["customer_id"])} for r in rows],
            "features": [{k: _plain(r[k]) for k in REQUEST_NAMES} for r in rows]}
    endpoint = url(settings, f"/v1/models/{model}/predict")
    response = httpx.post(endpoint, json=body, timeout=10)
    response.raise_for_status()
    answer = response.json()
    print(f"\n{model} v{answer['version']} (@{answer['alias']}) answered request {answer['request_id']}:")
    for row, pred in zip(rows, answer["predictions"]):
        origin = pred["features"]["customer_activity"]
        print(f"  customer {row['customer_id']:>6}  amount {row['amount']:>8.2f}  foreign {row['is_foreign']}"
              f"  -> p(fraud) {pred['probability']:.3f}  label {pred['label']}  (truth {row['label']});"
              f" features: {origin['source']}, {origin.get('age_s', 0) / 3600:.1f} h old")
    one = json.dumps({"entities": body["entities"][:1], "features": body["features"][0]})
    print("\nTry it:\n  curl -s -X POST " + shlex.quote(endpoint)
          + " -H 'Content-Type: application/json' -d " + shlex.quote(one))
    print(f"  curl -s {url(settings, f'/v1/models/{model}')}   # version, signature, example body")
    print(f"  curl -s {url(settings, '/metrics')} | grep mlgate_\n", flush=True)


def _plain(value):
    return value.item() if hasattr(value, "item") else value
