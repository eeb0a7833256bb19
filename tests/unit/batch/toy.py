"""A small feature repository and small ONNX models for the batch tests (unit and integration).

Three views over two entities, one with a string key: ``shop_stats`` and ``shop_risk`` (shop,
``shop_code`` string), ``account_stats`` (account, ``account_id`` int64). ``shop-classifier``
reads both shop views and one request-time input; ``pair-regressor`` reads a view of each entity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPOSITORY = """
entities:
  - name: shop
    keys: [{name: shop_code, type: string, max_length: 40}]
  - name: account
    keys: [{name: account_id, type: int64}]
sources:
  - name: events
    parquet: events.parquet
    timestamp: ts
views:
  - name: shop_stats
    entity: shop
    source: events
    ttl: 7d
    features:
      - {name: orders_7d, dtype: long, default: 0, aggregation: {function: count, window: 7d}}
      - {name: revenue_7d, dtype: double, default: 0.0, aggregation: {function: sum, column: amount, window: 7d}}
  - name: shop_risk
    entity: shop
    source: events
    ttl: 30d
    features:
      - {name: disputes, dtype: int, default: 3}
  - name: account_stats
    entity: account
    source: events
    ttl: 30d
    features:
      - {name: spend_30d, dtype: double, default: 1.5, aggregation: {function: sum, column: amount, window: 30d}}
models:
  - name: shop-classifier
    entities: [shop]
  - name: pair-regressor
    entities: [account, shop]
"""

CLASSIFIER_INPUTS = ("shop_stats__orders_7d", "shop_stats__revenue_7d", "hour", "shop_risk__disputes")
REGRESSOR_INPUTS = ("account_stats__spend_30d", "shop_stats__orders_7d")


def write_repository(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mlgate.yaml").write_text("project: batch-toy\n")
    (root / "definitions.yaml").write_text(REPOSITORY)
    return root


def training_rows(width: int, rows: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features spread over the ranges the tests' tables use, and a target that depends on each."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 50, (rows, width)).astype(np.float32)
    y = x @ np.linspace(1.0, -0.5, width).astype(np.float32) + rng.normal(0, 3, rows).astype(np.float32)
    return x, y


def classifier_onnx(width: int) -> bytes:
    """A gradient-boosted binary classifier: outputs ``label`` [N] and ``probabilities`` [N, 2]."""
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = training_rows(width)
    model = GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0).fit(x, y > np.median(y))
    return convert(model, width, {"zipmap": False})


def regressor_onnx(width: int) -> bytes:
    """A gradient-boosted regressor: one output, ``variable`` [N, 1]."""
    from sklearn.ensemble import GradientBoostingRegressor

    x, y = training_rows(width, seed=1)
    return convert(GradientBoostingRegressor(n_estimators=15, max_depth=3, random_state=0).fit(x, y), width)


def convert(model, width: int, options: dict | None = None) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    return convert_sklearn(model, initial_types=[("features", FloatTensorType([None, width]))],
                           options={id(model): options} if options else None,
                           target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()
