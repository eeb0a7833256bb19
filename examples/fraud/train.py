"""Train the demo fraud model, convert it to ONNX and register it in MLflow under an alias."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from examples.fraud.data import DemoData
from features_online.definitions import CUSTOMER_ACTIVITY

log = logging.getLogger(__name__)

MODEL_NAME = "fraud-detector"
EXPERIMENT = "mlgate-demo"

# Request-time features: what the caller knows about the transaction being scored.
REQUEST_FEATURES: tuple[tuple[str, str], ...] = (
    ("amount", "double"),
    ("hour_of_day", "long"),
    ("day_of_week", "long"),
    ("merchant_category", "long"),
    ("merchant_risk", "double"),
    ("is_online", "long"),
    ("is_foreign", "long"),
    ("distance_from_home_km", "double"),
    ("card_age_days", "long"),
)
VIEW = CUSTOMER_ACTIVITY
# Stored features, named <view>__<feature> so the gateway knows to read them from the online store.
FEATURES = REQUEST_FEATURES + tuple((VIEW.qualified(f.name), f.dtype) for f in VIEW.features)
FEATURE_NAMES = [name for name, _ in FEATURES]
REQUEST_NAMES = [name for name, _ in REQUEST_FEATURES]
LABEL_DAYS = 7
"""Train on the last week's transactions, each with its features as of just before it."""

# Two recipes, so the challenger is a genuinely different model, not a copy.
RECIPES = {
    "champion": {"n_estimators": 100, "learning_rate": 0.1, "max_depth": 3},
    "challenger": {"n_estimators": 120, "learning_rate": 0.08, "max_depth": 4},
}
# sklearn's GradientBoostingClassifier, not HistGradientBoosting: skl2onnx 1.20 cannot convert
# the latter with scikit-learn 1.9 (boolean tree attributes). The classic one trains slower, so
# it fits on a uniform sample of the training window.
MAX_TRAIN_ROWS = 150_000


@dataclass(frozen=True)
class TrainResult:
    name: str
    version: str
    alias: str
    run_id: str
    metrics: dict[str, float]


def request_table(data: DemoData) -> pd.DataFrame:
    """One row per transaction: ids, time, label and the request-time features."""
    t = data.transactions.merge(data.customers, on="customer_id").merge(data.merchants, on="merchant_id")
    ts = pd.to_datetime(t["ts"], utc=True)
    table = pd.DataFrame({
        "transaction_id": t["transaction_id"].astype("int64"),
        "customer_id": t["customer_id"].astype("int64"),
        "ts": ts,
        "label": t["is_fraud"].astype("int64"),
        "amount": t["amount"].astype("float64"),
        "hour_of_day": ts.dt.hour.astype("int64"),
        "day_of_week": ts.dt.dayofweek.astype("int64"),
        "merchant_category": t["merchant_category"].astype("int64"),
        "merchant_risk": t["merchant_risk"].astype("float64"),
        "is_online": t["is_online"].astype("int64"),
        "is_foreign": t["is_foreign"].astype("int64"),
        "distance_from_home_km": t["distance_from_home_km"].astype("float64"),
        "card_age_days": t["card_age_days"].astype("int64"),
    })
    return table.sort_values("ts", kind="stable").reset_index(drop=True)


def training_table(data: DemoData, view_features: pd.DataFrame) -> pd.DataFrame:
    """Labelled transactions with request-time and point-in-time view features (``FEATURES``).

    ``view_features`` comes from the Spark feature job (``row_id`` = transaction_id): the same
    code that computes what the online store serves.
    """
    stored = view_features.rename(columns={f.name: VIEW.qualified(f.name) for f in VIEW.features})
    stored = stored.rename(columns={"row_id": "transaction_id"}).drop(columns=["customer_id", "as_of_ms"])
    table = request_table(data).merge(stored, on="transaction_id", how="inner")
    for name, dtype in FEATURES:
        table[name] = table[name].astype("int64" if dtype == "long" else "float64")
    return table.sort_values("ts", kind="stable").reset_index(drop=True)


def feature_stats(x: pd.DataFrame) -> dict[str, dict]:
    """Per-feature training statistics: the reference for drift detection later."""
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


def to_onnx(model, n_features: int):
    """The classifier as ONNX with two 1-D outputs, ``label`` and ``probability`` (of fraud).

    skl2onnx emits ``probabilities`` as an [N, 2] matrix; a Gather of column 1 gives exactly what
    the API returns, and 1-D outputs keep the model usable through ``mlflow.pyfunc`` too.
    """
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = convert_sklearn(
        model, initial_types=[("features", FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    graph = onnx_model.graph
    graph.initializer.append(helper.make_tensor("positive_class", TensorProto.INT64, [], [1]))
    graph.node.append(helper.make_node("Gather", ["probabilities", "positive_class"], ["probability"],
                                       axis=1, name="positive_probability"))
    label = next(o for o in graph.output if o.name == "label")
    del graph.output[:]
    graph.output.extend([label, helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None])])
    return onnx_model


def check_parity(onnx_model, model, x: np.ndarray) -> float:
    """Largest probability difference between sklearn and onnxruntime on ``x``; must be tiny."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_p = sess.run(["probability"], {"features": x.astype(np.float32)})[0]
    return float(np.max(np.abs(onnx_p - model.predict_proba(x.astype(np.float32))[:, 1])))


def train_and_register(table: pd.DataFrame, tracking_uri: str, artifact_root: str,
                       alias: str = "champion", seed: int = 0, name: str = MODEL_NAME) -> TrainResult:
    """Fit on ``table`` (see :func:`training_table`), convert, log, register, set ``alias``."""
    import mlflow
    import mlflow.onnx
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import average_precision_score, roc_auc_score

    cut = int(len(table) * 0.8)  # time-based split: validate on the most recent 20 %
    train, test = table.iloc[:cut], table.iloc[cut:]
    if len(train) > MAX_TRAIN_ROWS:
        train = train.sample(MAX_TRAIN_ROWS, random_state=seed)
    recipe = RECIPES.get(alias, RECIPES["champion"])
    model = GradientBoostingClassifier(random_state=seed, subsample=0.8, **recipe)
    model.fit(train[FEATURE_NAMES].to_numpy(np.float32), train["label"].to_numpy())
    x_test = test[FEATURE_NAMES].to_numpy(np.float32)
    p = model.predict_proba(x_test)[:, 1]
    metrics = {"auc": float(roc_auc_score(test["label"], p)),
               "average_precision": float(average_precision_score(test["label"], p)),
               "fraud_rate": float(table["label"].mean()), "train_rows": float(len(train))}
    onnx_model = to_onnx(model, len(FEATURE_NAMES))
    metrics["onnx_max_abs_diff"] = check_parity(onnx_model, model, x_test[:5000])
    if metrics["onnx_max_abs_diff"] > 1e-4:
        raise RuntimeError(f"ONNX conversion changed predictions by {metrics['onnx_max_abs_diff']:.2g}")

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)  # log_model registers through the global registry URI
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        EXPERIMENT, artifact_location=artifact_root)
    example = test[FEATURE_NAMES].head(5).reset_index(drop=True)
    x_example = example.to_numpy(np.float32)
    signature = infer_signature(example, pd.DataFrame({
        "label": model.predict(x_example).astype(np.int64),
        "probability": model.predict_proba(x_example)[:, 1].astype(np.float32)}))
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=experiment_id) as run:
        stats_path = Path(tmp) / "feature_stats.json"
        stats_path.write_text(json.dumps(feature_stats(train[FEATURE_NAMES])))
        mlflow.log_params({**recipe, "seed": seed, "features": ",".join(FEATURE_NAMES)})
        mlflow.log_metrics(metrics)
        info = mlflow.onnx.log_model(onnx_model, name="model", signature=signature,
                                     input_example=example, registered_model_name=name,
                                     extra_files=[str(stats_path)], save_as_external_data=False,
                                     onnx_execution_providers=["CPUExecutionProvider"])
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, alias, version)
    for key, value in {"auc": f"{metrics['auc']:.4f}", "trained_for": alias}.items():
        client.set_model_version_tag(name, version, key, value)
    log.info("registered %s v%s as @%s (auc %.4f)", name, version, alias, metrics["auc"])
    return TrainResult(name, version, alias, run.info.run_id, metrics)
