"""Training baselines in MLflow: what a model version saw at training, stored beside it so that
``mlgate monitor`` judges live traffic on the training bins (observability/drift.py).

At training, inside the active MLflow run, :func:`log_baseline` fits the training inputs and the
model's outputs on those inputs and logs them as ``mlgate/baseline.json``. Columns are named as
the inference log names them (batch/log_table.py): ``in_<model input>`` and ``out_<output>``,
so a monitor reads both sides with one name. :func:`load_baseline` finds the artifact of a
registered version through the version's run.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from batch.log_table import INPUT, OUTPUT
from observability.drift import Baseline

ARTIFACT = "mlgate/baseline.json"


class BaselineMissing(LookupError):
    """The registered version's run logged no baseline (trained before baselines, or elsewhere)."""


def fit_baseline(inputs: Mapping[str, object], outputs: Mapping[str, object] | None = None,
                 bins: int = 10) -> Baseline:
    """The baseline of training ``inputs`` and model ``outputs`` (column name -> values; a
    pandas DataFrame is such a mapping), named as the log table names them."""
    columns = {INPUT + str(name): np.asarray(inputs[name]) for name in inputs}
    columns.update({OUTPUT + str(name): np.asarray(outputs[name]) for name in (outputs if outputs is not None else {})})
    return Baseline.fit(columns, bins=bins)


def log_baseline(inputs: Mapping[str, object], outputs: Mapping[str, object] | None = None,
                 bins: int = 10) -> Baseline:
    """Fit and log the baseline as an artifact of the active MLflow run (raises without one)."""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_baseline needs an active MLflow run (mlflow.start_run())")
    baseline = fit_baseline(inputs, outputs, bins)
    mlflow.log_text(baseline.to_json(), ARTIFACT)
    return baseline


def load_baseline(tracking_uri: str, name: str, version: str) -> Baseline:
    """The baseline of registered version ``models:/<name>/<version>`` (its run's artifact)."""
    import mlflow.artifacts
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run_id = client.get_model_version(name, str(version)).run_id
    if not run_id:
        raise BaselineMissing(f"models:/{name}/{version} has no run, so no training baseline")
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT,
                                                   tracking_uri=tracking_uri)
    except (MlflowException, OSError) as exc:
        raise BaselineMissing(f"models:/{name}/{version}: run {run_id} logged no {ARTIFACT}") from exc
    with open(path, encoding="utf-8") as f:
        return Baseline.from_json(f.read())
