"""The inference log's flattening (stream records -> table rows) and column typing, and the
recorder's sampling: pure functions, no Redis."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from batch import log_table
from observability.metrics import GatewayMetrics
from serving.inference_log import stream
from serving.inference_log.recorder import InferenceLog, _plain
from serving.settings import InferenceLogSettings

RECORD = {"id": "r1", "t": 1_700_000_000_000_000, "ms": 1.5, "ver": "3", "var": "canary", "cl": "key:a", "st": "ok",
          "keys": [{"account_id": 7}, {"account_id": 8}],
          "in": {"amount": [1.0, 2.5], "view__count": [3, 4], "kind": ["a", "b"]},
          "out": [{"label": 1, "probability": 0.9, "source": "online", "model_version": "3",
                   "features": {"view": {"status": "fresh"}}},
                  {"label": 0, "probability": 0.2, "source": "batch_fallback", "model_version": "2",
                   "fallback_reason": "features_missing"}]}


def test_a_record_becomes_one_row_per_answered_row_with_prefixed_columns():
    rows = log_table.prediction_rows(stream.decode(stream.encode([RECORD])))
    assert len(rows) == 2
    first, second = rows
    assert first == {"request_id": "r1", "row": 0, "ts": RECORD["t"], "version": "3", "variant": "canary",
                     "client": "key:a", "status": "ok", "latency_ms": 1.5, "key_account_id": 7, "in_amount": 1.0,
                     "in_view__count": 3, "in_kind": "a", "source": "online", "fallback_reason": None,
                     "out_label": 1, "out_probability": 0.9}
    assert second["version"] == "2" and second["fallback_reason"] == "features_missing"  # the row's own version


def test_a_failed_request_is_one_row_without_outputs():
    rows = log_table.prediction_rows([{"id": "r2", "t": 5, "st": "dependency_unavailable", "out": []}])
    assert rows == [{"request_id": "r2", "row": 0, "ts": 5, "version": None, "variant": None, "client": None,
                     "status": "dependency_unavailable", "latency_ms": None}]


def test_column_types_merge_across_files():
    rows = log_table.prediction_rows([RECORD])
    table = log_table.arrow_table(rows, "log")
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("key_account_id").type == pa.int64()
    assert table.schema.field("in_view__count").type == pa.float64()  # 3 then 3.5 in another file: one type
    assert table.schema.field("out_label").type == pa.float64()
    assert table.schema.field("in_kind").type == pa.string()
    assert log_table.day_of(RECORD["t"]) == "2023-11-14"


def test_numpy_columns_and_text_arrays_encode():
    record = {"id": "r", "t": 1, "in": {"x": np.array([1.5], np.float32), "s": np.array(["a"], object)},
              "out": [{"y": np.float32(0.5)}]}
    [decoded] = stream.decode(stream.encode([record], default=_plain))
    assert decoded["in"] == {"x": [1.5], "s": ["a"]} and decoded["out"] == [{"y": 0.5}]


def test_an_entry_of_another_format_is_refused():
    with pytest.raises(ValueError, match="format"):
        stream.decode({b"v": b"9", b"r": b"[]"})


@pytest.mark.parametrize("rate, expected", [(1.0, 1000), (0.0, 0)])
def test_sampling_all_or_nothing(rate, expected):
    recorder = InferenceLog(InferenceLogSettings(sample=rate), None, "p", GatewayMetrics())
    assert sum(recorder.sampled("m") for _ in range(1000)) == expected


def test_sampling_per_model_share():
    recorder = InferenceLog(InferenceLogSettings(sample=1.0, models={"m": 0.25}), None, "p", GatewayMetrics())
    taken = sum(recorder.sampled("m") for _ in range(20_000))
    assert 4_400 < taken < 5_600 and recorder.sampled("other")
