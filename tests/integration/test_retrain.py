"""`mlgate retrain` on the real parts: MLflow (SQLite), Spark local, a private Redis holding the
drift status. A drifted model gets a new version tagged with its lineage and ``challenger``
pointing at it, ``champion`` untouched; a model that has not drifted gets nothing."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from batch import retrain
from batch.cli import cmd_retrain
from serving import drift_status, lineage
from serving.settings import Settings
from tests.integration.conftest import apply_examples

pytestmark = pytest.mark.integration

MODEL = "fraud-detector"


@pytest.fixture(scope="module")
def loop_settings(settings, redis_url, champion) -> Settings:
    """The session's state (registry with the trained champion), a Redis prefix of its own."""
    return Settings(state_dir=settings.state_dir, mlflow_tracking_uri=None,
                    redis={"url": redis_url, "prefix": "retrain-it"})


def status(drifted: bool) -> dict:
    return {"model": MODEL, "version": "1", "computed_at": 1_700_000_000, "window": {"start": 0, "end": 1},
            "rows": 5000, "labelled_rows": 0, "drifted": drifted, "threshold": drift_status.PSI_DRIFT,
            "features": {"amount": {"psi": 0.9 if drifted else 0.01, "kind": "numeric", "n": 5000},
                         "is_foreign": {"psi": 0.35 if drifted else 0.02, "kind": "categorical", "n": 5000}},
            "quality": {}}


def client_for(settings: Settings):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def test_not_drifted_trains_nothing(loop_settings, redis_server, capsys):
    apply_examples(loop_settings)
    registry = client_for(loop_settings)
    before = len(registry.search_model_versions(f"name='{MODEL}'"))
    args = argparse.Namespace(model=MODEL, if_drift=True, alias="challenger", repo=None)
    assert cmd_retrain(args, loop_settings) == retrain.NO_STATUS_EXIT  # never monitored
    assert "run `mlgate monitor --model fraud-detector` first" in capsys.readouterr().out
    drift_status.write(redis_server.client(), "retrain-it", status(drifted=False))
    assert cmd_retrain(args, loop_settings) == 0
    assert "not drifted" in capsys.readouterr().out
    assert len(registry.search_model_versions(f"name='{MODEL}'")) == before


def test_drifted_registers_a_tagged_challenger(loop_settings, redis_server, spark, train_table, examples_repo):
    from examples.fraud.train import train_and_register

    calls = []

    def entry_point(settings, alias, spark, seed=0):  # the contract; the session's training set
        calls.append((alias, spark))
        return train_and_register(train_table, settings.tracking_uri, settings.artifact_root, alias=alias, seed=seed)

    registry = client_for(loop_settings)
    champion = str(registry.get_model_version_by_alias(MODEL, "champion").version)
    drift_status.write(redis_server.client(), "retrain-it", status(drifted=True))
    job = retrain.plan(examples_repo, MODEL, "challenger")  # the repository's real entry point, resolved
    assert job.function.__module__ == "examples.fraud.runner"
    job = dataclasses.replace(job, function=entry_point)
    decision = retrain.decide(drift_status.read(redis_server.client(), "retrain-it", MODEL), True)
    done = retrain.run(loop_settings, examples_repo, job, decision, "challenger", spark, registry)

    assert calls == [("challenger", spark)]
    assert str(registry.get_model_version_by_alias(MODEL, "challenger").version) == done.version
    assert str(registry.get_model_version_by_alias(MODEL, "champion").version) == champion
    assert int(done.version) > int(champion)
    tags = lineage.read(registry.get_model_version(MODEL, done.version).tags)
    assert tags["trigger"] == "drift" and tags["parent_version"] == champion
    assert tags["drift"]["psi"] == {"amount": 0.9, "is_foreign": 0.35}
    assert tags["feature_views"] == {v.name: v.version for v in examples_repo.views.values()
                                     if v.entity.name == "customer"}
    source = tags["data_snapshot"]["sources"]["transactions"]
    assert source["path"].endswith("transactions.parquet") and source["modified"]
