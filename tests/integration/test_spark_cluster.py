"""The Spark jobs on a Spark standalone cluster (the ``spark_cluster`` fixture: a master and a
worker, separate JVMs, an executor with Python workers of its own): the feature build, a full and
an incremental sync, a point-in-time training set and batch scoring (tests/integration/every_job.py)
run unchanged with ``MLGATE_SPARK__MASTER=spark://...`` and give what the same code gives in this
process's ``local[2]`` session (the ``spark`` fixture) on the same input: the same offline tables,
the same records in Redis, the same training set, the same scores.

The cluster side runs in a process of its own: a process has one SparkSession, and this one's is
the suite's local session, the reference. Why one session for every job rather than one CLI
command each: every_job.py says. The input is the fraud example's data, small; the first build is
as of six hours before its end, so that the incremental sync has entities to bring.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from examples.fraud import data
from examples.fraud.runner import MODEL
from examples.fraud.train import VIEW as CUSTOMER_ACTIVITY
from examples.fraud.train import labels
from features_online.settings import RedisSettings
from serving.settings import Settings
from tests.integration import every_job
from tests.integration.conftest import apply_examples, gateway_env
from tests.integration.spark_cluster import ROOT

pytestmark = pytest.mark.integration

CUSTOMERS = 1_000
HELD_BACK = timedelta(hours=6)
"""The data's last hours: after the first build's time, for the incremental sync to bring."""
ATOL = 1e-9
SIDES = ("cluster", "local")


def same_frames(cluster: pd.DataFrame, local: pd.DataFrame) -> None:
    """Same columns, rows and values; floats within ATOL (a sum's order may differ between runs)."""
    pd.testing.assert_frame_equal(cluster, local, check_exact=False, rtol=0, atol=ATOL)


@pytest.fixture(scope="module")
def world(tmp_path_factory, redis_server, settings, champion):
    """The raw data, the labelled rows of a training set, the repository applied under a Redis
    prefix per side, each side's settings (a state folder of its own); the model is the
    session's champion."""
    root = tmp_path_factory.mktemp("spark-cluster-jobs")
    demo = data.generate(n_customers=CUSTOMERS, seed=23)
    shared = Settings(state_dir=root / "shared", mlflow_tracking_uri=settings.tracking_uri)
    data.write(demo, shared.data_dir / "fraud")
    entities = root / "labels.parquet"
    labels(demo)[["transaction_id", "customer_id", "event_timestamp", "label"]].to_parquet(
        entities, coerce_timestamps="us", allow_truncated_timestamps=True)
    latest = pd.Timestamp(demo.transactions.ts.max())
    latest = latest.tz_localize("UTC") if latest.tzinfo is None else latest.tz_convert("UTC")
    sides = {}
    for name in SIDES:
        redis = RedisSettings(url=redis_server.url, prefix=f"spark-{name}")
        apply_examples(shared.model_copy(update={"redis": redis}), models=(MODEL,))  # sources: the shared data
        sides[name] = Settings(state_dir=root / name, mlflow_tracking_uri=settings.tracking_uri, redis=redis)
    return {"root": root, "entities": entities, "sides": sides, "model": f"{MODEL}/{champion.version}",
            "first_as_of": (latest - HELD_BACK).floor("s").to_pydatetime()}


def cluster_env(side: Settings, cluster) -> dict[str, str]:
    """The driver's environment: the settings as the CLI reads them, with the cluster's master;
    the interpreter the executors run (PySpark sends the driver's ``PYSPARK_PYTHON`` with every
    task); the driver on 127.0.0.1, where the executors reach it; this checkout on its path (the
    executors get it from the worker)."""
    uri = side.tracking_uri
    return gateway_env(side.state_dir, side.redis.url, MLGATE_REDIS__PREFIX=side.redis.prefix,
                       MLGATE_SPARK__MASTER=cluster.url, MLGATE_SPARK__SHUFFLE_PARTITIONS="4",  # as `spark`'s
                       MLGATE_MLFLOW_TRACKING_URI=uri, MLFLOW_TRACKING_URI=uri, PYSPARK_PYTHON=sys.executable,
                       SPARK_LOCAL_IP="127.0.0.1", PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def runs(world, spark, spark_cluster):
    """Every job on the cluster (a driver process of its own), then in this process's local
    session: each side's folder of results and its manifest."""
    folders = {name: world["root"] / f"out-{name}" for name in SIDES}
    args = [folders["cluster"], world["model"], world["entities"], world["first_as_of"].isoformat()]
    side = world["sides"]["cluster"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tests.integration.every_job", *map(str, args)], cwd=ROOT,
                          env={**os.environ, **cluster_env(side, spark_cluster)}, capture_output=True, text=True,
                          timeout=600)
    cluster_s = time.perf_counter() - started
    log = side.state_dir / "logs" / "spark.log"
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:], log.read_text()[-4000:] if log.exists() else "")
    started = time.perf_counter()
    every_job.run(world["sides"]["local"], spark, world["model"], world["entities"], world["first_as_of"],
                  folders["local"])
    local_s = time.perf_counter() - started
    manifests = {name: json.loads((folder / every_job.MANIFEST).read_text()) for name, folder in folders.items()}
    print(f"\ncluster driver process: {cluster_s:.1f}s, jobs {manifests['cluster']['seconds']}"
          f"\nlocal session: {local_s:.1f}s, jobs {manifests['local']['seconds']}")
    return {"folders": folders, "manifests": manifests}


def finished(cluster, app_id: str, timeout_s: float = 20) -> dict:
    """The master's record of ``app_id`` once it ended (the driver's goodbye reaches the master a
    moment after the driver exits)."""
    deadline = time.monotonic() + timeout_s
    while True:
        app = next((a for a in cluster.applications() if a["id"] == app_id), None)
        if (app is not None and app["state"] not in ("WAITING", "RUNNING")) or time.monotonic() > deadline:
            return app
        time.sleep(0.2)


def test_the_jobs_ran_in_the_clusters_executor(runs, spark_cluster):
    cluster, local = runs["manifests"]["cluster"], runs["manifests"]["local"]
    assert (cluster["master"], local["master"]) == (spark_cluster.url, "local[2]")
    assert cluster["block_managers"] == 2  # the driver's and the executor's
    app = finished(spark_cluster, cluster["app_id"])
    assert app is not None and app["state"] == "FINISHED", app
    logs = spark_cluster.executor_logs(cluster["app_id"])
    assert len(logs) == 1, logs
    text = logs[0].read_text(errors="replace")
    assert text.count("Finished task") >= 10, text[-3000:]
    # the sync's writers and the scoring ran in the executor's own Python workers
    assert "Starting Python task execution" in text, text[-3000:]


def test_the_offline_tables_are_the_local_ones(runs):
    cluster, local = runs["manifests"]["cluster"]["tables"], runs["manifests"]["local"]["tables"]
    assert len(cluster) == len(local) == 2
    for got, want in zip(cluster, local):
        assert Path(got).name == Path(want).name  # the same as-of time
        keys = list(CUSTOMER_ACTIVITY.entity.key_names)
        got, want = (pd.read_parquet(t).sort_values(keys).reset_index(drop=True) for t in (got, want))
        assert len(want) > CUSTOMERS // 2
        same_frames(got, want)


def stored(runs, step: str) -> tuple[dict, dict]:
    """Each side's meta hash and live records after ``step``: {side: meta}, {side: records}."""
    return ({name: runs["manifests"][name]["redis"][step] for name in SIDES},
            {name: pd.read_parquet(runs["folders"][name] / f"redis-{step}.parquet") for name in SIDES})


def test_a_full_sync_stores_what_it_stores_from_local(runs):
    meta, records = stored(runs, "full")
    facts = ("version", "rows", "as_of_ms", "watermark_ms", "fingerprint")
    assert {k: meta["cluster"][k] for k in facts} == {k: meta["local"][k] for k in facts}
    assert int(meta["local"]["rows"]) == len(records["local"]) > CUSTOMERS // 2
    same_frames(records["cluster"], records["local"])


def test_an_incremental_sync_rewrites_the_same_entities_with_the_same_values(runs):
    meta, records = stored(runs, "incremental")
    facts = ("version", "rows", "watermark_ms", "incremental_rows")
    assert {k: meta["cluster"][k] for k in facts} == {k: meta["local"][k] for k in facts}
    changed = int(meta["local"]["incremental_rows"])
    assert 0 < changed < len(records["local"])  # some entities, not all
    newer = records["local"]["as_of_ms"] == int(meta["local"]["watermark_ms"])
    assert newer.sum() == changed  # exactly those carry the new as-of time
    same_frames(records["cluster"], records["local"])


def test_a_training_set_is_the_local_one(runs):
    got, want = (pd.read_parquet(runs["folders"][name] / "training.parquet").sort_values("transaction_id")
                 .reset_index(drop=True) for name in SIDES)
    assert len(want) > 1_000
    assert [CUSTOMER_ACTIVITY.qualified(f) for f in CUSTOMER_ACTIVITY.feature_names] == list(want.columns[4:])
    same_frames(got, want)


def test_batch_scores_and_their_fallback_records_are_the_local_ones(runs, world):
    compared = ["customer_id", "as_of_ms", "label", "score", "model", "model_version"]
    got, want = (pd.read_parquet(runs["folders"][name] / "scores")[compared].sort_values("customer_id")
                 .reset_index(drop=True) for name in SIDES)
    assert len(want) > CUSTOMERS // 2 and want["score"].nunique() > 10
    assert set(want["model_version"]) == {world["model"].split("/")[1]}
    same_frames(got, want)
    meta, records = stored(runs, "scores")
    assert meta["cluster"]["rows"] == meta["local"]["rows"] == str(len(want))
    same_frames(records["cluster"], records["local"])
