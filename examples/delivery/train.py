"""Train the delivery-time model on a point-in-time training set: a GradientBoostingRegressor,
converted to ONNX, registered in MLflow as ``delivery-eta`` under an alias.

Entity table: the orders of the last week (courier, restaurant, the time the order came in,
what the caller knows then: distance and hour) with the minutes each one took. The stored
features of the courier and the restaurant come from the repository's views as of each order's
time: a delivery counts in a courier's statistics only once it was handed over, never the order
being predicted, nor any delivery after it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from examples import project
from examples.registry import TrainResult, register_onnx
from features_online import repository
from features_online.layout import MODEL_DTYPES

MODEL_NAME = "delivery-eta"
VIEW_NAMES = ("courier_stats", "restaurant_stats", "courier_profile")
REQUEST_FEATURES: tuple[tuple[str, str], ...] = (("distance_km", "double"), ("hour_of_day", "long"))
"""What the caller knows when the order comes in."""
LABEL_DAYS = 7
RECIPES = {
    "champion": {"n_estimators": 150, "learning_rate": 0.1, "max_depth": 4},
    "challenger": {"n_estimators": 250, "learning_rate": 0.06, "max_depth": 5},
}

_VIEWS = repository.load(project.ROOT).views
VIEW_FEATURES: tuple[tuple[str, str], ...] = tuple(
    (_VIEWS[v].qualified(f.name), f.dtype) for v in VIEW_NAMES for f in _VIEWS[v].features)
FEATURES = REQUEST_FEATURES + VIEW_FEATURES
FEATURE_NAMES = [name for name, _ in FEATURES]
REQUEST_NAMES = [name for name, _ in REQUEST_FEATURES]


def labels(deliveries: pd.DataFrame, days: int = LABEL_DAYS) -> pd.DataFrame:
    """The entity table: the last ``days`` of orders, keyed by courier and restaurant, taken as
    of ``event_timestamp`` (the order's time), with request-time inputs and ``label`` (minutes)."""
    ordered = pd.to_datetime(deliveries["ordered_at"], utc=True)
    table = pd.DataFrame({
        "delivery_id": deliveries["delivery_id"].astype("int64"),
        "courier_id": deliveries["courier_id"].astype(str),
        "restaurant_id": deliveries["restaurant_id"].astype(str),
        "event_timestamp": ordered,
        "distance_km": deliveries["distance_km"].astype("float64"),
        "hour_of_day": ordered.dt.hour.astype("int64"),
        "label": deliveries["eta_minutes"].astype("float64"),
    })
    since = table["event_timestamp"].max() - pd.Timedelta(days=days)
    return table[table["event_timestamp"] > since].reset_index(drop=True)


def typed(table: pd.DataFrame) -> pd.DataFrame:
    """The model inputs in the dtypes the gateway hands the model (its signature's)."""
    for name, dtype in FEATURES:
        table[name] = table[name].astype(MODEL_DTYPES[dtype])
    return table


def training_table(spark, repo, entities: pd.DataFrame) -> pd.DataFrame:
    """``entities`` with every view feature as of each order's time (Spark's training set)."""
    from features_online import spark_job

    keys = spark.createDataFrame(entities[["delivery_id", "courier_id", "restaurant_id", "event_timestamp"]])
    names = [name for name, _ in VIEW_FEATURES]
    stored = spark_job.training_set(spark, repo, keys, names, timestamp="event_timestamp")
    stored = stored.drop("courier_id", "restaurant_id", "event_timestamp").toPandas()
    table = typed(entities.merge(stored, on="delivery_id", how="inner"))
    return table.sort_values(["event_timestamp", "delivery_id"], kind="stable").reset_index(drop=True)


def to_onnx(model, n_features: int):
    """The regressor as ONNX with one 1-D output, ``prediction`` (minutes): what the API returns
    and what batch scoring stores as a regressor's score."""
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, n_features]))],
                                 target_opset={"": 17, "ai.onnx.ml": 3})
    graph = onnx_model.graph
    (raw,) = graph.output  # [N, 1]
    graph.initializer.append(helper.make_tensor("flat", TensorProto.INT64, [1], [-1]))
    graph.node.append(helper.make_node("Reshape", [raw.name, "flat"], ["prediction"], name="flatten"))
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info("prediction", TensorProto.FLOAT, [None])])
    return onnx_model


def check_parity(onnx_model, model, x: np.ndarray) -> float:
    """Largest difference in minutes between sklearn and onnxruntime on ``x``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["prediction"], {"features": x.astype(np.float32)})[0]
    return float(np.max(np.abs(got - model.predict(x.astype(np.float32)))))


def train_and_register(table: pd.DataFrame, tracking_uri: str, artifact_root: str,
                       alias: str = "champion", seed: int = 0, name: str = MODEL_NAME,
                       lineage: dict[str, str] | None = None) -> TrainResult:
    """Fit on ``table`` (:func:`training_table`), check it learnt something, convert, register."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.metrics import mean_absolute_error, r2_score

    cut = int(len(table) * 0.8)  # time-based split: validate on the most recent 20 %
    train, test = table.iloc[:cut], table.iloc[cut:]
    recipe = RECIPES.get(alias, RECIPES["champion"])
    model = GradientBoostingRegressor(random_state=seed, subsample=0.8, **recipe)
    x_train = train[FEATURE_NAMES].to_numpy(np.float32)
    model.fit(x_train, train["label"].to_numpy())
    x_test = test[FEATURE_NAMES].to_numpy(np.float32)
    predicted = model.predict(x_test)
    metrics = {"r2": float(r2_score(test["label"], predicted)),
               "mae_minutes": float(mean_absolute_error(test["label"], predicted)),
               "baseline_mae_minutes": float(np.mean(np.abs(test["label"] - train["label"].mean()))),
               "train_rows": float(len(train))}
    onnx_model = to_onnx(model, len(FEATURE_NAMES))
    metrics["onnx_max_abs_diff"] = check_parity(onnx_model, model, x_test[:5000])
    if metrics["onnx_max_abs_diff"] > 1e-2:  # minutes; float32 sums of 150 trees
        raise RuntimeError(f"ONNX conversion changed predictions by {metrics['onnx_max_abs_diff']:.2g} min")
    example = test[FEATURE_NAMES].head(5).reset_index(drop=True)
    outputs = pd.DataFrame({"prediction": model.predict(example.to_numpy(np.float32)).astype(np.float32)})
    return register_onnx(onnx_model, name=name, alias=alias, tracking_uri=tracking_uri,
                         artifact_root=artifact_root, example=example, outputs=outputs,
                         train_inputs=train[FEATURE_NAMES].astype("float64"),
                         train_outputs=pd.DataFrame({"prediction": model.predict(x_train)}),
                         params={**recipe, "seed": seed, "features": ",".join(FEATURE_NAMES)},
                         metrics=metrics, tags={"r2": f"{metrics['r2']:.4f}"}, lineage=lineage)
