"""Training baselines through a real MLflow registry (SQLite file): logged in the training run,
found again from the registered version, named as the inference log names its columns."""

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from batch.baseline import BaselineMissing, load_baseline, log_baseline
from observability.drift import psi


def test_baseline_logged_at_training_is_found_from_the_version(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("baseline-test", artifact_location=str(tmp_path / "artifacts"))
    rng = np.random.default_rng(3)
    x = pd.DataFrame({"amount": rng.normal(size=2000), "n_items": rng.integers(0, 5, 2000)})
    y = pd.DataFrame({"probability": 1 / (1 + np.exp(-x["amount"])), "label": (x["amount"] > 0).astype(int)})
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp) as run:
        logged = log_baseline(x, y)
    client.create_registered_model("baseline-model")
    with_baseline = client.create_model_version("baseline-model", f"runs:/{run.info.run_id}/model",
                                                run_id=run.info.run_id).version
    with mlflow.start_run(experiment_id=exp) as bare:
        pass
    without = client.create_model_version("baseline-model", f"runs:/{bare.info.run_id}/model",
                                          run_id=bare.info.run_id).version

    found = load_baseline(uri, "baseline-model", with_baseline)
    assert found == logged
    assert set(found.columns) == {"in_amount", "in_n_items", "out_probability", "out_label"}
    assert found.columns["in_n_items"].kind == "categorical"
    assert psi(found.columns["in_amount"], x["amount"].to_numpy()) < 1e-9
    with pytest.raises(BaselineMissing):
        load_baseline(uri, "baseline-model", without)
    with pytest.raises(RuntimeError):
        log_baseline(x)  # no active run
