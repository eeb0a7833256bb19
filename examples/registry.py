"""What both examples do with a trained model: log it to MLflow as ONNX with its signature and
training statistics, register it, point an alias at it."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

EXPERIMENT = "mlgate-demo"


@dataclass(frozen=True)
class TrainResult:
    name: str
    version: str
    alias: str
    run_id: str
    metrics: dict[str, float]


def feature_stats(x: pd.DataFrame) -> dict[str, dict]:
    """Per-input training statistics: the reference of drift detection, and the typical
    request-time values batch scoring fills in (``feature_stats.json`` beside the model)."""
    stats = {}
    for col in x.columns:
        v = x[col].to_numpy(dtype=np.float64)
        edges = np.unique(np.quantile(v, np.linspace(0, 1, 11)))
        counts, _ = np.histogram(v, bins=edges) if len(edges) > 1 else (np.array([len(v)]), edges)
        stats[col] = {"count": int(len(v)), "mean": float(v.mean()), "std": float(v.std()),
                      "min": float(v.min()), "max": float(v.max()),
                      "quantiles": {str(q): float(np.quantile(v, q)) for q in (0.01, 0.25, 0.5, 0.75, 0.99)},
                      "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}
    return stats


def register_onnx(onnx_model, *, name: str, alias: str, tracking_uri: str, artifact_root: str,
                  example: pd.DataFrame, outputs: pd.DataFrame, train_inputs: pd.DataFrame,
                  params: dict, metrics: dict[str, float], tags: dict[str, str],
                  lineage: dict[str, str] | None = None,
                  train_outputs: pd.DataFrame | None = None) -> TrainResult:
    """Log ``onnx_model`` with the signature of ``example`` -> ``outputs`` (input names are the
    model's inputs: ``view__feature`` read from the online store, others sent by the caller),
    register it as ``name`` and set ``alias`` on the new version. ``lineage``: the version's
    lineage tags (serving/lineage.py), e.g. from ``batch.retrain.training_tags``. The training
    distribution of ``train_inputs`` and of the model's ``train_outputs`` on them is logged as the
    version's drift baseline (batch/baseline.py)."""
    from batch.baseline import log_baseline

    import mlflow
    import mlflow.onnx
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)  # log_model registers through the global registry URI
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        EXPERIMENT, artifact_location=artifact_root)
    signature = infer_signature(example, outputs)
    # MLflow runs the example through its own pyfunc wrapper (to infer requirements, which we give,
    # and to validate it), which feeds a DataFrame with a boolean column to the float matrix as
    # strings and fails: a false alarm, since the gateway types each column by the signature. The
    # training code checks the ONNX graph against the fitted model instead.
    validation = logging.getLogger("mlflow.models.model")
    level = validation.level
    if any(example[c].dtype == bool for c in example.columns):
        validation.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=experiment_id) as run:
            stats_path = Path(tmp) / "feature_stats.json"
            stats_path.write_text(json.dumps(feature_stats(train_inputs)))
            mlflow.log_params(params)
            mlflow.log_metrics(metrics)
            log_baseline(train_inputs, train_outputs)
            info = mlflow.onnx.log_model(onnx_model, name="model", signature=signature,
                                         input_example=example, registered_model_name=name,
                                         extra_files=[str(stats_path)], save_as_external_data=False,
                                         onnx_execution_providers=["CPUExecutionProvider"],
                                         pip_requirements=mlflow.onnx.get_default_pip_requirements())
    finally:
        validation.setLevel(level)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, alias, version)
    for key, value in {**tags, **(lineage or {}), "trained_for": alias}.items():
        client.set_model_version_tag(name, version, key, value)
    log.info("registered %s v%s as @%s", name, version, alias)
    return TrainResult(name, version, alias, run.info.run_id, metrics)


def has_alias(tracking_uri: str, name: str, alias: str) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return False
    return True
