"""The Redis contract (FORMAT 2), pinned byte for byte: the Spark writer and the gateway reader
share it (features_online/layout.py, wire.py). The views are defined here, not taken from any
example: one per kind of entity key, each with every dtype."""

import struct
import zlib
from datetime import timedelta

import numpy as np
import pytest

from features_online import layout, wire
from features_online.definitions import FORMAT, Entity, EntityKey, Feature, FeatureView, split_inputs

USER = Entity("user", (EntityKey("user_id"),))
SHOP = Entity("shop", (EntityKey("shop_code", "string"),))
USER_SHOP = Entity("user_shop", (EntityKey("user_id"), EntityKey("shop_code", "string")))
EVERY_DTYPE = (Feature("spend", "double", 1.5), Feature("ratio", "float", 0.25), Feature("clicks", "long", -1),
               Feature("visits", "int", 7), Feature("vip", "bool", False))


def view(entity: Entity, name: str = "tiny", features=EVERY_DTYPE, buckets: int = 8) -> FeatureView:
    return FeatureView(name=name, entity=entity, features=features, ttl=timedelta(hours=1), buckets=buckets)


BY_ID, BY_NAME, BY_PAIR = view(USER), view(SHOP), view(USER_SHOP)
NASTY = "{x}:y\r\nz"  # a hash tag, the field separator and a line break in one key


def test_format_and_schema_versions_are_pinned():
    assert FORMAT == 2
    # the schema version: a digest of format, view name, buckets, key names+types, features+dtypes
    assert (BY_ID.version, BY_NAME.version, BY_PAIR.version) == ("52349216", "d0682aec", "ece3facf")
    assert BY_ID.fingerprint == BY_ID.version


def test_golden_value_bytes_of_every_dtype():
    [value] = layout.encode(BY_ID, 1_700_000_000_123, {
        "spend": np.array([2.25]), "ratio": np.array([0.5], np.float32), "clicks": np.array([-7]),
        "visits": np.array([3], np.int32), "vip": np.array([True])})
    # format u8, as_of_ms i64, then double f64, float f32, long i64, int i32, bool u8; little-endian
    assert value == struct.pack("<Bqdfqi?", 2, 1_700_000_000_123, 2.25, 0.5, -7, 3, True)
    assert value.hex() == ("02" "7b68e5cf8b010000" "0000000000000240" "0000003f" "f9ffffffffffffff"
                           "03000000" "01")
    assert layout.record_dtype(BY_ID).itemsize == len(value) == 34


def test_golden_keys_carry_the_schema_version():
    assert layout.bucket_key("mlg", BY_ID, 5, 3) == "mlg:fv:{tiny:52349216:5:b003}"
    assert layout.meta_key("mlg", BY_ID) == "mlg:fv:tiny:52349216:meta"
    assert layout.lock_key("mlg", BY_ID) == "mlg:fv:tiny:52349216:sync-lock:{mlg:fv:tiny:52349216:meta}"
    assert layout.bucket_key("mlg", BY_NAME, 1, 63) == "mlg:fv:{tiny:d0682aec:1:b063}"
    assert layout.bucket_key("p", BY_PAIR, 12, 0) == "p:fv:{tiny:ece3facf:12:b000}"
    assert len(layout.bucket_keys("p", BY_ID, 1)) == 8


def test_int64_key_fields_are_decimal_and_buckets_the_id_mod_buckets():
    assert layout.field(42) == b"42" and layout.field(np.int64(-7)) == b"-7"
    assert layout.fields(np.array([42, -7, 10**15])) == [b"42", b"-7", b"1000000000000000"]
    assert layout.encode_fields(USER, {"user_id": [42, -7]}) == [b"42", b"-7"]
    assert layout.bucket_of(BY_ID, np.array([0, 7, 8, 1_000_000_011])).tolist() == [0, 7, 0, 3]
    assert layout.decode_field(USER, b"-7") == {"user_id": -7}


def test_string_key_fields_are_utf8_and_buckets_their_crc32_mod_buckets():
    keys = [NASTY, "ünï", "a b", ""]
    fields = layout.encode_fields(SHOP, {"shop_code": keys})
    assert fields == [b"{x}:y\r\nz", b"\xc3\xbcn\xc3\xaf", b"a b", b""]
    assert layout.bucket_of(BY_NAME, fields).tolist() == [6, 2, 3, 0]
    assert [zlib.crc32(f) % 8 for f in fields] == [6, 2, 3, 0]
    assert [layout.decode_field(SHOP, f) for f in fields] == [{"shop_code": k} for k in keys]


def test_composite_key_fields_are_length_prefixed_parts():
    fields = layout.encode_fields(USER_SHOP, {"user_id": [42, -7, 1], "shop_code": [NASTY, "", "2:ab"]})
    assert fields == [b"2:428:{x}:y\r\nz", b"2:-70:", b"1:14:2:ab"]
    assert layout.bucket_of(BY_PAIR, fields).tolist() == [zlib.crc32(f) % 8 for f in fields]
    assert layout.decode_field(USER_SHOP, fields[0]) == {"user_id": 42, "shop_code": NASTY}
    assert layout.decode_field(USER_SHOP, fields[2]) == {"user_id": 1, "shop_code": "2:ab"}


def test_golden_hset_of_a_string_key_is_one_command_with_that_exact_field():
    [value] = layout.encode(BY_NAME, 5, {})
    records = layout.encode_records(BY_NAME, 5, {})  # every feature its default
    keys = [k.encode() for k in layout.bucket_keys("mlg", BY_NAME, 1)]
    field = layout.encode_fields(SHOP, {"shop_code": [NASTY]})
    [(bucket, chunks, rows)] = wire.hset_field_commands(keys, layout.bucket_of(BY_NAME, field), field, records, 10)
    assert (bucket, rows) == (6, 1)
    assert b"".join(chunks) == (b"*4\r\n$4\r\nHSET\r\n$29\r\nmlg:fv:{tiny:d0682aec:1:b006}\r\n"
                                b"$8\r\n{x}:y\r\nz\r\n$34\r\n" + value + b"\r\n")


def test_the_hash_tag_of_a_key_depends_only_on_the_bucket():
    from redis.crc import key_slot

    slots = {key_slot(k.encode()) for k in layout.bucket_keys("mlg", BY_NAME, 1)}
    assert len(slots) == 8  # every bucket its own slot: a version spreads over the cluster
    for v in (BY_ID, BY_NAME, BY_PAIR):
        assert key_slot(layout.lock_key("mlg", v).encode()) == key_slot(layout.meta_key("mlg", v).encode())


def test_decode_round_trip_and_defaults_for_nan_and_missing_columns():
    values = layout.encode(BY_ID, np.array([10, 20]), {"spend": np.array([np.nan, 3.0]), "clicks": np.array([1, 2]),
                                                       "vip": np.array([np.nan, 1.0])})
    records, present = layout.decode(BY_ID, [values[1], None, values[0]])
    assert present.tolist() == [True, False, True]
    assert records["clicks"].tolist() == [2, 0, 1] and records["as_of_ms"].tolist() == [20, 0, 10]
    assert records["spend"][2] == 1.5  # NaN at write time became the feature's default
    assert records["visits"][0] == 7 and records["ratio"][0] == np.float32(0.25)  # no column: defaults
    assert records["vip"].tolist() == [1, 0, 0]


def test_values_of_another_format_or_size_read_as_absent():
    [good] = layout.encode(BY_ID, 1, {"spend": np.array([1.0])})
    older_format = b"\x01" + good[1:]
    records, present = layout.decode(BY_ID, [good[:-1], older_format, good + b"\x00", good])
    assert present.tolist() == [False, False, False, True]


def test_the_schema_version_changes_with_anything_the_bytes_or_keys_depend_on():
    base = BY_ID.version
    assert view(USER, buckets=16).version != base
    assert view(USER, features=EVERY_DTYPE[::-1]).version != base
    assert view(USER, features=(*EVERY_DTYPE, Feature("new", "long", 0))).version != base
    assert view(USER, features=(Feature("spend", "float", 1.5), *EVERY_DTYPE[1:])).version != base
    assert view(Entity("user", (EntityKey("user_id", "string"),))).version != base
    assert view(USER, name="other").version != base
    # what changes only values keeps the version (the next sync replaces them)
    same = FeatureView("tiny", USER, (Feature("spend", "double", 9.0), *EVERY_DTYPE[1:]), timedelta(days=9),
                       buckets=8, description="new text")
    assert same.version == base and same.definition_digest != BY_ID.definition_digest


def test_split_inputs_separates_view_features_from_request_features():
    views = {"tiny": BY_ID, "shops": view(SHOP, name="shops")}
    by_view, request = split_inputs(["amount", "tiny__clicks", "hour", "shops__vip", "tiny__spend"], views)
    assert by_view == {"tiny": ["clicks", "spend"], "shops": ["vip"]}
    assert request == ["amount", "hour"]
    with pytest.raises(ValueError, match="other__x, tiny__nope"):
        split_inputs(["tiny__nope", "other__x"], views)
