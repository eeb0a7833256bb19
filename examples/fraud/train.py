"""Train the fraud model on a point-in-time training set, convert it to ONNX, register it in
MLflow under an alias.

The entity table is the labelled transactions (customer, time, label, what the caller knows about
the transaction); the stored features come from the repository's ``customer_activity`` view,
computed by the feature repository's training-set job as of each transaction's time: the same
definition the online store is synced from, so training and serving cannot drift apart.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from examples import project
from examples.fraud.data import DemoData
from examples.registry import TrainResult, feature_stats, register_onnx  # noqa: F401 (re-exported)
from features_online import repository

log = logging.getLogger(__name__)

MODEL_NAME = "fraud-detector"
VIEW_NAME = "customer_activity"

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
VIEW = repository.load(project.ROOT).views[VIEW_NAME]
"""The view as examples/fraud/features.yaml defines it (names, dtypes, defaults)."""
# Stored features, named <view>__<feature> so the gateway knows to read them from the online store.
FEATURES = REQUEST_FEATURES + tuple((VIEW.qualified(f.name), f.dtype) for f in VIEW.features)
FEATURE_NAMES = [name for name, _ in FEATURES]
REQUEST_NAMES = [name for name, _ in REQUEST_FEATURES]
VIEW_FEATURE_NAMES = [VIEW.qualified(f.name) for f in VIEW.features]
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


def labels(data: DemoData, days: int = LABEL_DAYS) -> pd.DataFrame:
    """The entity table of a training set: the last ``days`` of labelled transactions with their
    request-time features and ``event_timestamp`` (the time the features are taken as of)."""
    table = request_table(data)
    since = table["ts"].max() - pd.Timedelta(days=days)
    return table[table["ts"] > since].assign(event_timestamp=lambda t: t["ts"]).reset_index(drop=True)


def training_table(spark, repo, entities: pd.DataFrame) -> pd.DataFrame:
    """``entities`` (:func:`labels`) with the view's features as of each row's time, from the
    repository's point-in-time training set (Spark), typed as the model's inputs."""
    from features_online import spark_job

    keys = spark.createDataFrame(entities[["transaction_id", "customer_id", "event_timestamp"]])
    stored = spark_job.training_set(spark, repo, keys, VIEW_FEATURE_NAMES, timestamp="event_timestamp")
    stored = stored.drop("customer_id", "event_timestamp").toPandas()
    table = entities.merge(stored, on="transaction_id", how="inner")
    for name, dtype in FEATURES:
        table[name] = table[name].astype("int64" if dtype in ("long", "int") else "float64")
    return table.sort_values(["ts", "transaction_id"], kind="stable").reset_index(drop=True)


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
                       alias: str = "champion", seed: int = 0, name: str = MODEL_NAME,
                       lineage: dict[str, str] | None = None) -> TrainResult:
    """Fit on ``table`` (see :func:`training_table`), convert, log, register, set ``alias``."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import average_precision_score, roc_auc_score

    cut = int(len(table) * 0.8)  # time-based split: validate on the most recent 20 %
    train, test = table.iloc[:cut], table.iloc[cut:]
    if len(train) > MAX_TRAIN_ROWS:
        train = train.sample(MAX_TRAIN_ROWS, random_state=seed)
    recipe = RECIPES.get(alias, RECIPES["champion"])
    model = GradientBoostingClassifier(random_state=seed, subsample=0.8, **recipe)
    x_train = train[FEATURE_NAMES].to_numpy(np.float32)
    model.fit(x_train, train["label"].to_numpy())
    x_test = test[FEATURE_NAMES].to_numpy(np.float32)
    p = model.predict_proba(x_test)[:, 1]
    metrics = {"auc": float(roc_auc_score(test["label"], p)),
               "average_precision": float(average_precision_score(test["label"], p)),
               "fraud_rate": float(table["label"].mean()), "train_rows": float(len(train))}
    onnx_model = to_onnx(model, len(FEATURE_NAMES))
    metrics["onnx_max_abs_diff"] = check_parity(onnx_model, model, x_test[:5000])
    if metrics["onnx_max_abs_diff"] > 1e-4:
        raise RuntimeError(f"ONNX conversion changed predictions by {metrics['onnx_max_abs_diff']:.2g}")
    example = test[FEATURE_NAMES].head(5).reset_index(drop=True)
    x_example = example.to_numpy(np.float32)
    outputs = pd.DataFrame({"label": model.predict(x_example).astype(np.int64),
                            "probability": model.predict_proba(x_example)[:, 1].astype(np.float32)})
    return register_onnx(onnx_model, name=name, alias=alias, tracking_uri=tracking_uri,
                         artifact_root=artifact_root, example=example, outputs=outputs,
                         train_inputs=train[FEATURE_NAMES],
                         train_outputs=pd.DataFrame({"label": model.predict(x_train).astype(np.int64),
                                                     "probability": model.predict_proba(x_train)[:, 1]}),
                         params={**recipe, "seed": seed, "features": ",".join(FEATURE_NAMES)},
                         metrics=metrics, tags={"auc": f"{metrics['auc']:.4f}"}, lineage=lineage)
