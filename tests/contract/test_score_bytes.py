"""The batch-score view (FORMAT 2), pinned byte for byte: the batch scorer writes it, the gateway's
fallback reads it (features_online/definitions.py, score_view). Entities defined here."""

import struct
from datetime import timedelta

import numpy as np

from features_online import layout
from features_online.definitions import SCORE_FIELDS, Entity, EntityKey, score_view

USER = Entity("user", (EntityKey("user_id"),))
SHOP = Entity("shop", (EntityKey("shop_code", "string"),))
ONE = score_view("churn-model", (USER,), timedelta(days=2))
TWO = score_view("churn-model", (USER, SHOP), timedelta(days=2))


def test_golden_score_view_and_keys():
    assert [(f.name, f.dtype) for f in SCORE_FIELDS] == [("label", "long"), ("score", "double")]
    assert ONE.name == "score.churn-model" and ONE.entity.key_names == ("user_id",) and ONE.entity.is_int
    assert TWO.entity.key_names == ("user_id", "shop_code") and not TWO.entity.is_int
    assert (ONE.version, TWO.version) == ("b06fc96e", "e6611c55")
    assert layout.meta_key("mlg", TWO) == "mlg:fv:score.churn-model:e6611c55:meta"
    assert layout.bucket_key("mlg", TWO, 3, 17) == "mlg:fv:{score.churn-model:e6611c55:3:b017}"
    assert layout.bucket_key("mlg", ONE, 1, 0) == "mlg:fv:{score.churn-model:b06fc96e:1:b000}"
    assert ONE.buckets == TWO.buckets == 64 and ONE.ttl == timedelta(days=2)


def test_a_key_shared_by_two_entities_is_one_key_column():
    other = Entity("session", (EntityKey("user_id"), EntityKey("day")))
    assert score_view("m", (USER, other), timedelta(days=1)).entity.key_names == ("user_id", "day")


def test_golden_score_value_bytes():
    [value] = layout.encode(TWO, 1_700_000_000_123, {"label": np.array([1]), "score": np.array([0.75])})
    # format, as_of_ms, label (i64), score (f64)
    assert value == struct.pack("<Bqqd", 2, 1_700_000_000_123, 1, 0.75)
    assert value.hex() == "02" "7b68e5cf8b010000" "0100000000000000" "000000000000e83f"


def test_score_fields_of_a_composite_key():
    fields = layout.encode_fields(TWO.entity, {"user_id": [7], "shop_code": ["a{b}"]})
    assert fields == [b"1:74:a{b}"]
    assert layout.decode_field(TWO.entity, fields[0]) == {"user_id": 7, "shop_code": "a{b}"}


def test_a_score_without_a_probability_stores_nan_never_a_made_up_number():
    [value] = layout.encode(ONE, 5, {"label": np.array([0])})
    records, present = layout.decode(ONE, [value])
    assert present.tolist() == [True] and np.isnan(records["score"][0])
