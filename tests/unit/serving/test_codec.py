import math
from datetime import timedelta

import numpy as np
import pytest

from features_online import layout
from features_online.definitions import Entity, EntityKey, Feature, FeatureView
from serving import codec
from serving.errors import (
    InvalidFeatureType,
    InvalidRequest,
    MalformedJson,
    NestingTooDeep,
    NonFiniteValue,
    RequestFeaturesMissing,
    TooManyInstances,
    UnknownFeature,
)
from serving.runtime.base import FeatureSpec
from tests.unit.conftest import make_spec

ROW = {"amount": 12.5, "count": 3, "is_online": False, "score": 0.25}


def test_decode_builds_one_typed_column_per_feature(spec):
    cols = codec.decode([ROW, {**ROW, "amount": 7, "score": None}], spec)
    assert cols["amount"].tolist() == [12.5, 7.0]
    assert cols["count"].tolist() == [3, 3] and cols["count"].dtype == np.int64  # signature dtype
    assert cols["is_online"].dtype == np.bool_
    assert cols["score"][0] == 0.25 and math.isnan(cols["score"][1])  # optional null -> NaN


def test_optional_feature_may_be_absent(spec):
    row = {k: v for k, v in ROW.items() if k != "score"}
    assert math.isnan(codec.decode([row], spec)["score"][0])


def test_missing_required_feature_is_422_and_names_it(spec):
    row = {k: v for k, v in ROW.items() if k != "count"}
    with pytest.raises(RequestFeaturesMissing) as err:
        codec.decode([ROW, row], spec)
    assert err.value.status == 422
    assert err.value.message == "instances[1]: missing features: count"


def test_unknown_feature_is_400(spec):
    with pytest.raises(UnknownFeature) as err:
        codec.decode([{**ROW, "colour": "red"}], spec)
    assert err.value.status == 400 and "colour" in err.value.message


@pytest.mark.parametrize("value, got", [("12", "string"), (True, "boolean"), ([1], "array"),
                                        ({"a": 1}, "object"), (None, "null")])
def test_wrong_type_names_row_feature_and_kind_without_echoing_value(spec, value, got):
    with pytest.raises(InvalidFeatureType) as err:
        codec.decode([ROW, {**ROW, "amount": value}], spec)
    assert err.value.message == f"instances[1].amount: expected a number, got {got}"


def test_boolean_feature_accepts_only_booleans(spec):
    with pytest.raises(InvalidFeatureType, match=r"is_online: expected a boolean, got number"):
        codec.decode([{**ROW, "is_online": 1}], spec)


def test_integer_feature_refuses_fractions_but_accepts_integral_floats(spec):
    assert codec.decode([{**ROW, "count": 4.0}], spec)["count"][0] == 4.0
    with pytest.raises(InvalidFeatureType, match=r"instances\[0\].count: expected an integer"):
        codec.decode([{**ROW, "count": 4.5}], spec)


@pytest.mark.parametrize("value", [float("inf"), -float("inf"), 1e39, 10**400])
def test_non_finite_or_out_of_float32_range_is_refused(spec, value):
    with pytest.raises(NonFiniteValue):
        codec.decode([{**ROW, "amount": value}], spec)


def test_parse_json_tells_nan_literals_from_malformed_json():
    assert codec.parse_json(b'{"a": 1}') == {"a": 1}
    with pytest.raises(NonFiniteValue):
        codec.parse_json(b'{"a": NaN}')
    with pytest.raises(NonFiniteValue):
        codec.parse_json(b'{"a": -Infinity}')
    for bad in (b'{"a": ', b"", b"\xff\xfe", b"[1,]"):
        with pytest.raises(MalformedJson):
            codec.parse_json(bad)


def test_parse_json_refuses_deep_nesting_with_a_400_never_a_recursion_error():
    deep = b"[" * 1000 + b"]" * 1000
    assert codec.parse_json(deep)  # within orjson's fixed limit (1024): the codec refuses it later
    with pytest.raises(NestingTooDeep) as err:
        codec.parse_json(b"[" * 100_000 + b"]" * 100_000)
    assert (err.value.status, err.value.code) == (400, "nesting_too_deep")
    for bad in (b"[" * 1000, b"[" * 1000 + b"NaN", b'{"a": ' * 2000):  # the stdlib parser recursed
        with pytest.raises((MalformedJson, NestingTooDeep)):
            codec.parse_json(bad)


@pytest.mark.parametrize("payload", [[], "x", {"instances": []}, {"instances": {}},
                                     {"instances": [1]}, {"instances": [ROW], "extra": 1}])
def test_envelope_errors(payload):
    with pytest.raises(InvalidRequest):
        codec.instances_of(payload, max_instances=10)


def test_too_many_instances_is_413():
    with pytest.raises(TooManyInstances) as err:
        codec.instances_of({"instances": [ROW] * 11}, max_instances=10)
    assert err.value.status == 413


def test_concat_and_split_round_trip():
    a = {"x": np.array([1.0, 2.0])}
    b = {"x": np.array([3.0])}
    merged = codec.concat([a, b])
    assert merged["x"].tolist() == [1.0, 2.0, 3.0]
    parts = codec.split({"y": merged["x"] * 10}, [2, 1])
    assert [p["y"].tolist() for p in parts] == [[10.0, 20.0], [30.0]]


def test_encode_rows_from_output_columns():
    out = codec.encode({"label": np.array([0, 1]), "probability": np.array([0.1, 0.9], np.float32)})
    assert out[0]["label"] == 0 and out[1]["label"] == 1
    assert out[1]["probability"] == pytest.approx(0.9)


def test_encode_classifier_probability_matrix():
    out = codec.encode({"label": np.array([1]), "probabilities": np.array([[0.2, 0.8]])})
    assert out == [{"label": 1, "probability": pytest.approx(0.8)}]
    out = codec.encode({"label": np.array([2]), "probabilities": np.array([[0.1, 0.2, 0.7]])})
    assert out == [{"label": 2, "probabilities": [0.1, 0.2, 0.7]}]


@pytest.mark.parametrize("field,value", [
    ("amount", 7), ("amount", -0.0), ("amount", 3.4e38), ("amount", 3.5e38), ("amount", 2**60),
    ("amount", True), ("amount", "7"), ("amount", None), ("count", 4.0), ("count", 4.5),
    ("count", -(2**53) - 1), ("count", 2**70), ("is_online", 1), ("is_online", True),
    ("score", None), ("score", 1e-300), ("score", [1]),
])
def test_one_row_fast_path_decodes_exactly_like_the_general_path(spec, field, value):
    """One-row requests skip the numpy validation; they must give the same columns or errors."""
    row = {**ROW, field: value}

    def outcome(rows):
        try:
            cols = codec.decode(rows, spec)
        except Exception as exc:
            return type(exc).__name__, exc.code
        return {k: (v.dtype.str, np.nan_to_num(v[:1], nan=-1.0).tolist()) for k, v in cols.items()}

    assert outcome([row]) == outcome([row, row])


# -- entity keys ---------------------------------------------------------------------------------
# Views of three entities: an int64 id, a string code (at most 8 UTF-8 bytes), and a composite key
# of a string and an int64 column.

ACCOUNT = Entity("account", (EntityKey("account_id"),))
MERCHANT = Entity("merchant", (EntityKey("merchant_code", "string", max_length=8),))
STORE = Entity("store", (EntityKey("chain", "string", max_length=16), EntityKey("store_no")))
ACCOUNTS = FeatureView("account_activity", ACCOUNT, (Feature("events_7d", "long", 0),), timedelta(hours=1))
ACCOUNT_RISK = FeatureView("account_risk", ACCOUNT, (Feature("flags", "int", 0),), timedelta(hours=1))
MERCHANTS = FeatureView("merchant_stats", MERCHANT, (Feature("refund_rate", "double", 0.0),), timedelta(days=1))
STORES = FeatureView("store_traffic", STORE, (Feature("visits_1d", "long", 0),), timedelta(days=1))
VIEWS = {v.name: v for v in (ACCOUNTS, ACCOUNT_RISK, MERCHANTS, STORES)}


def keyed_by(*features: str) -> codec.FeatureBinding:
    """The binding of a model reading ``features`` (``<view>__<feature>``) and ``amount``."""
    inputs = (FeatureSpec("amount", "double"), *(FeatureSpec(f, "double") for f in features))
    return codec.bind(make_spec(inputs=inputs, input_example=()), VIEWS)


def keys_of(entities: list, binding: codec.FeatureBinding) -> codec.EntityRows:
    rows, _ = codec.entity_rows({"entities": entities, "features": {"amount": 1.0}}, binding, 10)
    return rows


MERCHANT_MODEL = keyed_by("merchant_stats__refund_rate")
ACCOUNT_MODEL = keyed_by("account_activity__events_7d")
STORE_MODEL = keyed_by("store_traffic__visits_1d")


@pytest.mark.parametrize("code", ["m-42", "é/ü", "a b", "12345678", "éééé", "😀x", "{tag}\\"])
def test_a_string_key_is_any_printable_text_of_up_to_max_length_bytes(code):
    rows = keys_of([{"merchant_code": code}, {"merchant_code": "z"}], MERCHANT_MODEL)
    assert rows.keys(MERCHANT) == [code.encode(), b"z"]
    assert rows.keys(MERCHANT) == layout.encode_fields(MERCHANT, {"merchant_code": [code, "z"]})


@pytest.mark.parametrize("code", [
    "",  # empty
    "123456789",  # 9 bytes
    "ééééé",  # 5 characters, 10 bytes
    "😀😀x",  # 3 characters, 9 bytes
    "a\nb", "\t", "x\x00", "\x7f", "\u200b",  # not printable
    "\ud800",  # a lone surrogate (orjson refuses it in a body: the codec does too)
    5, 5.0, True, None, ["m"], {"m": 1},  # not a string
])
def test_a_bad_string_key_is_400_without_echoing_it(code):
    with pytest.raises(InvalidRequest) as err:
        keys_of([{"merchant_code": "ok"}, {"merchant_code": code}], MERCHANT_MODEL)
    assert err.value.status == 400
    assert err.value.message == ("entities[1].merchant_code: expected a string id of 1 to 8 bytes of "
                                 "printable UTF-8 text")


def test_a_lone_surrogate_in_a_body_is_refused_as_malformed_json():
    with pytest.raises(MalformedJson):
        codec.parse_json(b'{"entities": [{"merchant_code": "\\ud800"}]}')


@pytest.mark.parametrize("account_id", [0, 7, -5, 2**63 - 1, -(2**63)])
def test_an_int64_key_is_any_int64_negative_ones_included(account_id):
    keys = keys_of([{"account_id": account_id}, {"account_id": 1}], ACCOUNT_MODEL).keys(ACCOUNT)
    assert keys.dtype == np.int64 and keys.tolist() == [account_id, 1]


@pytest.mark.parametrize("account_id", [True, False, 2**63, -(2**63) - 1, 5.0, "5", None, [5]])
def test_a_bad_int64_key_is_400(account_id):
    with pytest.raises(InvalidRequest) as err:
        keys_of([{"account_id": account_id}], ACCOUNT_MODEL)
    assert err.value.message == "entities[0].account_id: expected an integer id (int64)"


def test_a_composite_key_is_encoded_from_both_columns():
    rows = keys_of([{"chain": "north", "store_no": 7}, {"store_no": -12, "chain": "süd"}], STORE_MODEL)
    assert STORE_MODEL.key_columns == STORE.keys
    assert rows.keys(STORE) == [b"5:north1:7", b"4:s\xc3\xbcd3:-12"]
    assert rows.keys(STORE) == layout.encode_fields(STORE, {"chain": ["north", "süd"], "store_no": [7, -12]})


@pytest.mark.parametrize("entity, message", [
    ({"chain": "north"}, r"entities\[0\] must be an object with exactly: chain, store_no"),
    ({"chain": "north", "store_no": 7, "till": 2}, r"entities\[0\] must be an object with exactly"),
    ({"chain": "north", "store_no": "7"}, r"entities\[0\].store_no: expected an integer id"),
    ({"chain": "", "store_no": 7}, r"entities\[0\].chain: expected a string id of 1 to 16 bytes"),
])
def test_each_column_of_a_composite_key_is_checked(entity, message):
    with pytest.raises(InvalidRequest, match=message):
        keys_of([entity], STORE_MODEL)


def test_a_model_of_two_entities_reads_each_view_by_its_own_entitys_keys():
    binding = keyed_by("account_activity__events_7d", "merchant_stats__refund_rate", "account_risk__flags")
    assert binding.entities == (ACCOUNT, MERCHANT)  # in view order, each once
    assert binding.key_columns == (EntityKey("account_id"), EntityKey("merchant_code", "string", 8))
    rows = keys_of([{"account_id": 3, "merchant_code": "m-1"}, {"merchant_code": "m-2", "account_id": 4}],
                   binding)
    by_view = {view.name: rows.keys(view.entity) for view in binding.views}
    assert by_view["account_activity"].tolist() == [3, 4] and by_view["account_risk"].tolist() == [3, 4]
    assert by_view["merchant_stats"] == [b"m-1", b"m-2"]


@pytest.mark.parametrize("entity", [{"account_id": 3}, {"merchant_code": "m-1"},
                                    {"account_id": 3, "merchant_code": "m-1", "store_no": 1}, {}])
def test_a_row_missing_or_adding_a_key_of_a_two_entity_model_is_400(entity):
    binding = keyed_by("account_activity__events_7d", "merchant_stats__refund_rate")
    with pytest.raises(InvalidRequest) as err:
        keys_of([{"account_id": 1, "merchant_code": "ok"}, entity], binding)
    assert err.value.message == "entities[1] must be an object with exactly: account_id, merchant_code"


def test_entity_keys_without_a_model_are_checked_against_the_keys_given():
    """For batch scores while the model loads: the keys its score view is keyed by."""
    scored = (EntityKey("account_id"), EntityKey("merchant_code", "string", 8))
    rows = codec.entity_keys({"entities": [{"account_id": -1, "merchant_code": "m"}]}, scored, 10)
    assert rows.n == 1 and rows.columns == {"account_id": [-1], "merchant_code": ["m"]}
    for bad in ({"account_id": 1}, {"account_id": 1, "merchant_code": "m\n"}):
        with pytest.raises(InvalidRequest):
            codec.entity_keys({"entities": [bad]}, scored, 10)
    with pytest.raises(TooManyInstances):
        codec.entity_keys({"entities": [{"account_id": 1, "merchant_code": "m"}] * 11}, scored, 10)
