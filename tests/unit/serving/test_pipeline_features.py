"""Binding model inputs to feature views (codec), entity-keyed bodies (codec), and the
missing/stale policies that decide which rows need a fallback (pipeline.stored_inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from features_online import layout
from features_online.definitions import CUSTOMER_ACTIVITY as VIEW
from features_online.reader import ViewRead
from features_online.settings import FeatureSettings
from observability.metrics import GatewayMetrics
from serving import codec
from serving.errors import (
    InvalidRequest,
    ModelValidationError,
    StoredFeaturesMissing,
    StoredFeaturesStale,
)
from serving.pipeline import stored_inputs
from serving.runtime.base import FeatureSpec
from tests.unit.conftest import make_spec

SPEC = make_spec(inputs=(FeatureSpec("amount", "double"),
                         FeatureSpec("customer_activity__txn_count_7d", "long"),
                         FeatureSpec("customer_activity__amount_mean_30d", "double")))
TTL = VIEW.ttl.total_seconds()


def read(present, age_s, counts):
    values = layout.encode(VIEW, 0, {"txn_count_7d": np.array(counts, dtype=float),
                                     "amount_mean_30d": np.array(counts, dtype=float) * 10})
    records, _ = layout.decode(VIEW, values)
    return {"customer_activity": ViewRead(VIEW, records, np.array(present), np.array(age_s, dtype=float))}


def test_bind_splits_inputs_and_refuses_unknown_view_features():
    binding = codec.bind(SPEC)
    assert dict(binding.by_view) == {"customer_activity": ("txn_count_7d", "amount_mean_30d")}
    assert binding.request_spec.feature_names == ("amount",)
    assert binding.entity_keys == ["customer_id"]
    with pytest.raises(ModelValidationError, match="customer_activity__velocity"):
        codec.bind(make_spec(inputs=(FeatureSpec("customer_activity__velocity", "double"),)))


def test_entity_rows_with_shared_or_per_row_request_features():
    binding = codec.bind(SPEC)
    ids, rows = codec.entity_rows({"entities": [{"customer_id": 5}, {"customer_id": 9}],
                                      "features": {"amount": 3.0}}, binding, 10)
    assert ids["customer_activity"].tolist() == [5, 9] and rows == [{"amount": 3.0}] * 2
    _, rows = codec.entity_rows({"entities": [{"customer_id": 5}], "features": [{"amount": 1.0}]},
                                   binding, 10)
    assert rows == [{"amount": 1.0}]


@pytest.mark.parametrize("body, message", [
    ({"entities": []}, "non-empty"),
    ({"entities": [{"customer_id": "5"}]}, "non-negative integer"),
    ({"entities": [{"customer_id": True}]}, "non-negative integer"),
    ({"entities": [{"customer_id": -1}]}, "non-negative integer"),
    ({"entities": [{"user": 1}]}, "exactly: customer_id"),
    ({"entities": [{"customer_id": 1}], "features": [{}, {}]}, "one object per entity"),
    ({"entities": [{"customer_id": 1}], "features": [1]}, r"features\[0\] must be an object"),
    ({"entities": [{"customer_id": 1}, {"customer_id": 2}], "features": [{"amount": 1.0}, [1.0]]},
     r"features\[1\] must be an object"),
    ({"entities": [{"customer_id": 1}], "features": [None]}, r"features\[0\] must be an object"),
    ({"entities": [{"customer_id": 1}], "extra": 1}, "unknown top-level"),
])
def test_entity_body_errors_are_400(body, message):
    with pytest.raises(InvalidRequest, match=message):
        codec.entity_rows(body, codec.bind(SPEC), 10)


def test_stored_inputs_serve_stored_values_and_defaults_missing_rows_saying_so():
    metrics = GatewayMetrics()
    columns, origin, _ = stored_inputs(codec.bind(SPEC), read([True, False], [60.0, np.nan], [4, 0]),
                                           FeatureSettings(on_missing="default"), metrics)
    assert columns["customer_activity__txn_count_7d"].tolist() == [4.0, 0.0]
    assert columns["customer_activity__amount_mean_30d"].tolist() == [40.0, 0.0]
    assert origin[0]["customer_activity"] == {"source": "online_store", "status": "fresh", "age_s": 60.0}
    assert origin[1]["customer_activity"] == {"source": "default", "status": "missing"}
    get = metrics.registry.get_sample_value
    assert get("mlgate_feature_rows_total", {"view": "customer_activity", "status": "missing"}) == 1


def test_stale_policies():
    binding, stale = codec.bind(SPEC), read([True], [TTL + 1], [4])
    _, origin, _ = stored_inputs(binding, stale, FeatureSettings(on_stale="serve"), GatewayMetrics())
    assert origin[0]["customer_activity"]["status"] == "stale"
    assert origin[0]["customer_activity"]["source"] == "online_store"
    columns, origin, _ = stored_inputs(binding, stale, FeatureSettings(on_stale="default"), GatewayMetrics())
    assert columns["customer_activity__txn_count_7d"].tolist() == [0.0]
    assert origin[0]["customer_activity"]["source"] == "default"
    with pytest.raises(StoredFeaturesStale):
        stored_inputs(binding, stale, FeatureSettings(on_stale="error"), GatewayMetrics())


def test_missing_policy_error_is_422():
    with pytest.raises(StoredFeaturesMissing) as err:
        stored_inputs(codec.bind(SPEC), read([True, False], [1.0, np.nan], [1, 0]),
                          FeatureSettings(on_missing="error"), GatewayMetrics())
    assert err.value.status == 422 and "entities[1]" in err.value.message


def test_fallback_policy_marks_rows_for_batch_scores():
    _, _, fallback = stored_inputs(codec.bind(SPEC), read([True, False, True], [1.0, np.nan, TTL + 5],
                                                               [1, 0, 2]),
                                       FeatureSettings(on_missing="fallback", on_stale="fallback"),
                                       GatewayMetrics())
    assert fallback == {1: "features_missing", 2: "features_stale"}


def test_entity_ids_without_a_model():
    assert codec.entity_ids({"entities": [{"customer_id": 3}, {"customer_id": 4}]}, 10).tolist() == [3, 4]
    with pytest.raises(InvalidRequest):
        codec.entity_ids({"entities": [{"a": 1, "b": 2}]}, 10)
