"""The fraud example's steps: its data, its training, real predictions and a curl line.

The steps every example shares (Redis, applying the repository, features, batch scores, the
gateway) are in :mod:`examples.demo`.
"""

from __future__ import annotations

import json
import shlex

import httpx
import pandas as pd

from examples import project
from serving.launcher import url
from serving.settings import Settings

MODEL = "fraud-detector"
DEFAULT_CUSTOMERS = 100_000


def ensure_data(settings: Settings, customers: int = DEFAULT_CUSTOMERS) -> None:
    from examples.fraud import data
    from features_online.progress import step

    folder = project.data_dir(settings, "fraud")
    if (folder / "transactions.parquet").exists():
        return
    with step(f"generating fraud data for {customers:,} customers ...", plain=True):
        data.write(data.generate(n_customers=customers), folder)


def training_data(settings: Settings, spark, repo=None):
    """The last week's labelled transactions with point-in-time features (Spark's training set
    over the repository's ``customer_activity`` view)."""
    from examples.fraud import data
    from examples.fraud.train import labels, training_table

    repo = repo or project.load(settings)
    return training_table(spark, repo, labels(data.read(project.data_dir(settings, "fraud"))))


def train(settings: Settings, alias: str = "champion", spark=None, seed: int = 0, debug: bool = False):
    """Training set, fit, ONNX, registered as ``fraud-detector@<alias>``."""
    from examples.demo import quiet_mlflow, spark_session
    from examples.fraud.train import train_and_register
    from features_online.progress import step

    print(f"training {MODEL} for @{alias} (point-in-time training set from Spark) ...", flush=True)
    spark = spark or spark_session(settings, debug)
    from batch.retrain import training_tags

    repo = project.load(settings)
    lineage = training_tags(settings, repo, MODEL)  # before training: the parent is today's champion
    with step("point-in-time training set (Spark)"):
        table = training_data(settings, spark, repo)
    with step("fitting, converting to ONNX, registering"), quiet_mlflow(debug):
        result = train_and_register(table, settings.tracking_uri, settings.artifact_root, alias=alias, seed=seed,
                                    lineage=lineage)
    print(f"registered {result.name} v{result.version} as @{alias} "
          f"(AUC {result.metrics['auc']:.3f}, average precision {result.metrics['average_precision']:.3f})")
    return result


def show_predictions(settings: Settings, model: str = MODEL) -> None:
    """Score a few real recent transactions by customer_id, and print a curl line to paste."""
    from examples.fraud import data
    from examples.fraud.train import REQUEST_NAMES, request_table

    demo = data.read(project.data_dir(settings, "fraud"))
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
    print(f"  curl -s {url(settings, f'/v1/models/{model}')}   # version, signature, example body\n", flush=True)


def _plain(value):
    return value.item() if hasattr(value, "item") else value
