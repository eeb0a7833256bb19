"""The delivery example's steps: its data, its training, the pairs it batch-scores, real
predictions and a curl line. Shared steps: :mod:`examples.demo`."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import httpx
import pandas as pd

from examples import project
from serving.launcher import url
from serving.settings import Settings

MODEL = "delivery-eta"
DEFAULT_COURIERS = 300


def ensure_data(settings: Settings, couriers: int = DEFAULT_COURIERS) -> None:
    from examples.delivery import data
    from features_online.progress import step

    folder = project.data_dir(settings, "delivery")
    if (folder / "deliveries.parquet").exists():
        return
    with step(f"generating delivery data for {couriers:,} couriers ...", plain=True):
        data.write(data.generate(n_couriers=couriers, n_restaurants=max(20, couriers * 2 // 3),
                                 deliveries_per_day=couriers * 5), folder)


def training_data(settings: Settings, spark, repo=None):
    """Last week's orders with the courier's and the restaurant's features as of each order."""
    from examples.delivery import data
    from examples.delivery.train import labels, training_table

    repo = repo or project.load(settings)
    return training_table(spark, repo, labels(data.read_deliveries(project.data_dir(settings, "delivery"))))


def train(settings: Settings, alias: str = "champion", spark=None, seed: int = 0, debug: bool = False):
    """Training set, fit, ONNX, registered as ``delivery-eta@<alias>``."""
    from examples.delivery.train import train_and_register
    from examples.demo import quiet_mlflow, spark_session
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
    m = result.metrics
    print(f"registered {result.name} v{result.version} as @{alias} (R² {m['r2']:.3f}, MAE "
          f"{m['mae_minutes']:.2f} min; predicting the mean: {m['baseline_mae_minutes']:.2f} min)")
    return result


def score_pairs(settings: Settings) -> Path:
    """The (courier, restaurant) pairs of the last week's deliveries, as Parquet: the rows batch
    scoring precomputes fallback answers for (the model's two entities, no view holds both)."""
    from examples.delivery import data

    folder = project.data_dir(settings, "delivery")
    deliveries = data.read_deliveries(folder)
    recent = deliveries[deliveries.ordered_at > deliveries.ordered_at.max() - pd.Timedelta(days=7)]
    path = folder / "score_pairs.parquet"
    recent[["courier_id", "restaurant_id"]].drop_duplicates().to_parquet(path, index=False)
    return path


def show_predictions(settings: Settings, model: str = MODEL) -> None:
    """Predict the last few deliveries by courier and restaurant id; print a curl line."""
    from examples.delivery import data

    recent = data.read_deliveries(project.data_dir(settings, "delivery")).tail(4)
    rows = recent.to_dict("records")
    body = {"entities": [{"courier_id": r["courier_id"], "restaurant_id": r["restaurant_id"]} for r in rows],
            "features": [{"distance_km": float(r["distance_km"]), "hour_of_day": int(r["ordered_at"].hour)}
                         for r in rows]}
    endpoint = url(settings, f"/v1/models/{model}/predict")
    response = httpx.post(endpoint, json=body, timeout=10)
    response.raise_for_status()
    answer = response.json()
    print(f"\n{model} v{answer['version']} (@{answer['alias']}) answered request {answer['request_id']}:")
    for row, pred in zip(rows, answer["predictions"]):
        sources = ", ".join(f"{v}: {o.get('source', o.get('status'))}" for v, o in pred.get("features", {}).items())
        print(f"  courier {row['courier_id'][:10]}… restaurant {row['restaurant_id'][:10]}…  "
              f"{row['distance_km']:>5.1f} km at {row['ordered_at']:%H:%M}  -> {pred['prediction']:.1f} min "
              f"(took {row['eta_minutes']:.1f}); features: {sources}")
    one = json.dumps({"entities": body["entities"][:1], "features": body["features"][0]})
    print("\nTry it:\n  curl -s -X POST " + shlex.quote(endpoint)
          + " -H 'Content-Type: application/json' -d " + shlex.quote(one))
    print(f"  curl -s {url(settings, f'/v1/models/{model}')}   # version, signature, example body\n", flush=True)
