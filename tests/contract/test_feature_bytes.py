"""The Redis contract, pinned byte for byte: the Spark writer and the gateway reader share it."""

from datetime import timedelta

import numpy as np
import pytest

from features_online import layout
from features_online.definitions import CUSTOMER_ACTIVITY, Entity, Feature, FeatureView, split_inputs

TINY = FeatureView(name="tiny", version=2, entity=Entity("user", "user_id"), ttl=timedelta(hours=1),
                   features=(Feature("clicks", "long", 0), Feature("spend", "double", 1.5)), buckets=8)


def test_golden_value_bytes():
    [value] = layout.encode(TINY, 1_700_000_000_123, {"clicks": np.array([7]), "spend": np.array([2.25])})
    # struct.pack("<Bqqd", 1, 1_700_000_000_123, 7, 2.25): format, as_of_ms, clicks, spend
    assert value.hex() == "01" "7b68e5cf8b010000" "0700000000000000" "0000000000000240"
    assert len(value) == 9 + 8 * 2


def test_golden_keys():
    assert layout.bucket_key("mlg", TINY, 5, 3) == "mlg:fv:{tiny:2:5:b003}"
    assert layout.meta_key("mlg", TINY) == "mlg:fv:tiny:2:meta"
    assert layout.bucket_of(TINY, np.array([0, 7, 8, 1_000_000_011])).tolist() == [0, 7, 0, 3]
    assert layout.field(42) == b"42" and layout.field(np.int64(-7)) == b"-7"
    assert layout.fields(np.array([42, -7, 10**15])) == [b"42", b"-7", b"1000000000000000"]
    assert len(layout.bucket_keys("p", TINY, 1)) == 8
    assert layout.lock_key("mlg", TINY) == "mlg:fv:tiny:2:sync-lock:{mlg:fv:tiny:2:meta}"


def test_the_sync_lease_and_the_meta_hash_share_a_cluster_slot():
    from redis.crc import key_slot

    for view in (TINY, CUSTOMER_ACTIVITY):
        assert key_slot(layout.lock_key("mlg", view).encode()) == key_slot(layout.meta_key("mlg", view).encode())


def test_decode_round_trip_and_defaults_for_nan():
    values = layout.encode(TINY, np.array([10, 20]), {"clicks": np.array([1, 2]),
                                                       "spend": np.array([np.nan, 3.0])})
    records, present = layout.decode(TINY, [values[1], None, values[0]])
    assert present.tolist() == [True, False, True]
    assert records["clicks"].tolist() == [2, 0, 1] and records["as_of_ms"].tolist() == [20, 0, 10]
    assert records["spend"][2] == 1.5  # NaN at write time became the feature's default


def test_values_of_another_format_or_size_read_as_absent():
    [good] = layout.encode(TINY, 1, {"clicks": np.array([1]), "spend": np.array([1.0])})
    wrong_format = b"\x02" + good[1:]
    records, present = layout.decode(TINY, [good[:-1], wrong_format, good])
    assert present.tolist() == [False, False, True]


def test_fingerprint_changes_with_anything_the_bytes_depend_on():
    base = TINY.fingerprint
    assert FeatureView("tiny", 3, TINY.entity, TINY.features, TINY.ttl, buckets=8).fingerprint != base
    swapped = FeatureView("tiny", 2, TINY.entity, TINY.features[::-1], TINY.ttl, buckets=8)
    assert swapped.fingerprint != base
    assert FeatureView("tiny", 2, TINY.entity, TINY.features, timedelta(days=9), buckets=8).fingerprint == base


def test_split_inputs_separates_view_features_from_request_features():
    by_view, request = split_inputs(["amount", "customer_activity__txn_count_7d",
                                     "hour_of_day", "customer_activity__amount_mean_30d"])
    assert by_view == {"customer_activity": ["txn_count_7d", "amount_mean_30d"]}
    assert request == ["amount", "hour_of_day"]
    with pytest.raises(ValueError, match="customer_activity__nope, other__x"):
        split_inputs(["customer_activity__nope", "other__x"])


def test_the_demo_view_is_well_formed():
    names = CUSTOMER_ACTIVITY.feature_names
    assert len(names) == len(set(names)) == 12
    assert layout.record_dtype(CUSTOMER_ACTIVITY).itemsize == 9 + 8 * 12
