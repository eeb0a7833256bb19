import math

import numpy as np
import pytest

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
