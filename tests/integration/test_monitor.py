"""``mlgate monitor`` end to end: a log table written as the compactor writes it, baselines logged
in real MLflow runs of registered versions, real Spark (local) and a private Redis. PSI is
checked against numpy on the same rows, AUC and precision against scikit-learn."""

from datetime import datetime, timedelta, timezone
from functools import partial

import os

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from sklearn.metrics import precision_score, roc_auc_score

from batch import log_table
from batch.baseline import load_baseline, log_baseline
from batch.monitor import monitor, render, write_metrics
from observability.drift import EPSILON
from serving import drift_status

MODEL = "monitor-clf"
UNTIL = datetime(2026, 3, 2, 12, tzinfo=timezone.utc)
N_TRAIN = 4000


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def training(rng):
    amount = rng.normal(size=N_TRAIN)
    channel = rng.integers(0, 3, N_TRAIN)
    return {"amount": amount, "channel": channel}, {"probability": sigmoid(amount),
                                                    "label": (amount > 0).astype(int)}


def log_rows(rng, version, n, shift, t0):
    amount = rng.normal(shift, 1.0, n)
    channel = rng.choice([0, 1, 2], n, p=[0.8, 0.1, 0.1] if shift else [1 / 3] * 3)
    p = sigmoid(amount)
    return [{"request_id": f"{version}-{i}", "row": 0, "ts": t0 + i * 1_000_000, "version": version,
             "variant": "champion", "status": "ok", "source": "online", "in_amount": float(amount[i]),
             "in_channel": int(channel[i]), "out_probability": float(p[i]), "out_label": int(p[i] > 0.5)}
            for i in range(n)]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Versions 1 and 2 of MODEL, each with a baseline logged in its run, and 3 without."""
    folder = tmp_path_factory.mktemp("monitor-mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("monitor", artifact_location=str(folder / "artifacts"))
    client.create_registered_model(MODEL)
    mlflow.set_tracking_uri(uri)
    rng = np.random.default_rng(7)
    for with_baseline in (True, True, False):
        with mlflow.start_run(experiment_id=exp) as run:
            if with_baseline:
                log_baseline(*training(rng))
        client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return uri


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Version 1 unchanged from training, version 2 (more rows) drifted, version 3 unbaselined;
    labels for version 1's rows; one stable row outside the window."""
    root = str(tmp_path_factory.mktemp("monitor-log"))
    rng = np.random.default_rng(11)
    t0 = int((UNTIL - timedelta(hours=20)).timestamp() * 1e6)
    v1 = log_rows(rng, "1", 3000, 0.0, t0)
    v2 = log_rows(rng, "2", 3500, 1.0, t0)
    v3 = log_rows(rng, "3", 50, 0.0, t0)
    old = log_rows(rng, "1", 1, 5.0, int((UNTIL - timedelta(days=3)).timestamp() * 1e6))
    for rows in (v1 + v2 + v3, old):
        day = log_table.day_of(rows[0]["ts"])  # every row of a batch is in the same day here
        path = log_table.partition(root, "log", MODEL, day)
        os.makedirs(path, exist_ok=True)
        pq.write_table(log_table.arrow_table(rows, "log"), f"{path}/part-{rows[0]['request_id']}.parquet")
    labels = [{"request_id": r["request_id"], "row": None, "label": float(rng.random() < r["out_probability"]),
               "ts": r["ts"] + 60_000_000, "source": "api"} for r in v1]
    path = log_table.partition(root, "labels", MODEL, log_table.day_of(labels[0]["ts"]))
    os.makedirs(path, exist_ok=True)
    pq.write_table(log_table.arrow_table(labels, "labels"), f"{path}/part-0.parquet")
    return root, v1, v2, labels


def reference_psi(column, values, categorical=False):
    """PSI written independently: np.histogram / np.unique, then the textbook sum."""
    values = np.asarray(values, float)
    if categorical:
        cats = [float(c) for c in column.categories]
        body = [np.sum(values == c) for c in cats] + [np.sum(~np.isin(values, cats))]
    else:
        body = list(np.histogram(values, bins=np.asarray(column.edges, float))[0])
    observed = np.array(body + [0], float) / len(values)
    a, e = np.maximum(observed, EPSILON), np.maximum(np.asarray(column.shares), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def test_monitor_flags_drift_matches_references_and_records_status(spark, registry, table, redis_server):
    root, v1, v2, labels = table
    baselines = partial(load_baseline, registry, MODEL)
    result = monitor(spark, root, MODEL, baselines, window=timedelta(days=1), until=UNTIL)
    by_version = {v.version: v for v in result.versions}
    assert {v: r.rows for v, r in by_version.items()} == {"1": 3000, "2": 3500, "3": 50}

    for version, rows in (("1", v1), ("2", v2)):
        got, baseline = by_version[version].features, baselines(version)
        for name, categorical in (("in_amount", False), ("in_channel", True), ("out_probability", False)):
            want = reference_psi(baseline.columns[name], [r[name] for r in rows], categorical)
            assert got[name]["psi"] == pytest.approx(want, abs=1e-9), (version, name)
        assert "js" in got["in_channel"] and "js" not in got["in_amount"]
    assert not by_version["1"].drifted(result.threshold)
    assert by_version["2"].drifted(result.threshold)
    assert by_version["2"].features["in_amount"]["psi"] > 0.2
    assert by_version["3"].missing_baseline and not by_version["3"].features

    q = by_version["1"]
    assert q.labelled_rows == 3000 and not by_version["2"].quality
    y = [l["label"] for l in labels]
    assert q.quality["auc"] == pytest.approx(roc_auc_score(y, [r["out_probability"] for r in v1]), abs=1e-9)
    assert q.quality["precision"] == pytest.approx(precision_score(y, [r["out_label"] for r in v1]), abs=1e-12)

    status = result.status()  # the version that answered most rows
    assert status["version"] == "2" and status["drifted"] is True and status["rows"] == 3500
    client, prefix = redis_server.client(), "monitor-test"
    drift_status.write(client, prefix, status)
    assert drift_status.read(client, prefix, MODEL)["features"]["in_amount"]["psi"] > 0.2
    assert "DRIFTED" in render(result) and "not judged" in render(result)

    write_metrics(spark, root, result)
    spark.read.parquet(f"{root}/monitor").createOrReplaceTempView("monitor_metrics")
    psi = spark.sql(f"SELECT value FROM monitor_metrics WHERE model = '{MODEL}' AND version = '2' "
                    "AND `column` = 'in_amount' AND metric = 'psi'").collect()
    assert [r.value for r in psi] == [pytest.approx(by_version["2"].features["in_amount"]["psi"])]


def test_empty_window_judges_nothing(spark, registry, table):
    root = table[0]
    result = monitor(spark, root, MODEL, partial(load_baseline, registry, MODEL),
                     window=timedelta(hours=1), until=UNTIL + timedelta(days=30))
    assert result.versions == [] and result.status() is None
    assert "no logged rows" in render(result)
    assert write_metrics(spark, root, result) is None
    missing = monitor(spark, root, "never-logged", partial(load_baseline, registry, MODEL),
                      window=timedelta(days=1), until=UNTIL)
    assert missing.versions == []
