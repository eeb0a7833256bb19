"""The Spark batch scorer itself, over real Spark local mode and the real registered champion:
the scores it computes are the online runtime's, to the bit, for the same features."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from batch.score import arrow_for_scoring, model_columns, parse_ref, plan, scored
from batch.specialise import read_columns
from features_online.definitions import CUSTOMER_ACTIVITY as VIEW
from serving import codec
from serving.runtime.onnx_runtime import OnnxRuntime

pytestmark = pytest.mark.integration

MAX_BYTES = "spark.sql.execution.arrow.maxBytesPerBatch"
MAX_RECORDS = "spark.sql.execution.arrow.maxRecordsPerBatch"


def offline_like(rows: int) -> pd.DataFrame:
    """An offline feature table whose values do not fit float32 exactly: integers past 2**24
    and doubles with more digits than float32 keeps, so each one is rounded on its way in."""
    rng = np.random.default_rng(3)
    data = {"customer_id": np.arange(1, rows + 1, dtype=np.int64),
            "as_of_ms": np.full(rows, int(time.time() * 1000), dtype=np.int64)}
    for f in VIEW.features:
        if f.dtype == "long":
            data[f.name] = np.where(rng.random(rows) < 0.1, 2**24 + 1 + 2 * rng.integers(0, 2**20, rows),
                                    rng.integers(0, 60, rows)).astype(np.int64)
        else:
            data[f.name] = rng.gamma(2.0, 20.0, rows) + 1e-9
    return pd.DataFrame(data)


@pytest.fixture(scope="module")
def scoring(settings, champion, tmp_path_factory):
    """The plan `mlgate batch score` makes for the champion (only the offline table is elsewhere)."""
    table = tmp_path_factory.mktemp("offline") / "as_of=20260101T000000Z"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("batch.score.jobs.latest_table", lambda s, v: (table, datetime(2026, 1, 1, tzinfo=timezone.utc)))
        return plan(settings, parse_ref("fraud-detector@champion"))[0]


def online(scoring, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The gateway's path: each row's features spelled out as a caller would send them (stored
    ones by their qualified name, request-time ones at the batch scorer's typical values),
    through the codec into the runtime."""
    typical = {f.name: int(scoring.request_defaults[f.name]) if f.is_integral else scoring.request_defaults[f.name]
               for f in scoring.spec.inputs if f.name not in scoring.stored}
    instances = [{**{name: row[column] for name, column in scoring.stored.items()}, **typical}
                 for row in frame.to_dict("records")]
    runtime = OnnxRuntime(scoring.model_bytes, scoring.spec, scoring.onnx)
    return runtime.predict(codec.decode(instances, runtime.spec))


def test_batch_scores_are_the_online_runtimes_bit_for_bit(spark, scoring):
    assert scoring.graph is not None  # the workers run the specialised graph
    table = offline_like(3_000)
    with arrow_for_scoring(spark):
        got = scored(spark.createDataFrame(table).repartition(3), scoring).toPandas().sort_values("customer_id")
    expected = online(scoring, table)
    # the features move the score (a real comparison); how many distinct scores depends on the trees
    # of the freshly trained champion: 91 of 3,000 in one CI run, so the bar is well below that
    assert len(np.unique(expected["probability"])) > 20
    np.testing.assert_array_equal(got["customer_id"].to_numpy(), table["customer_id"].to_numpy())
    np.testing.assert_array_equal(got["as_of_ms"].to_numpy(), table["as_of_ms"].to_numpy())
    np.testing.assert_array_equal(got["label"].to_numpy(), expected["label"].astype(np.int64))
    np.testing.assert_array_equal(got["probability"].to_numpy(), expected["probability"].astype(np.float64))
    assert set(got["model"]) == {"fraud-detector"} and set(got["model_version"]) == {scoring.spec.version}
    assert set(got["feature_snapshot"]) == {scoring.snapshot} and got["scored_at_ms"].nunique() == 1


def test_only_the_inputs_the_graph_reads_cross_to_python_already_as_the_graph_takes_them(spark, scoring):
    table = offline_like(10).assign(unused=1.5)
    frame = model_columns(spark.createDataFrame(table), scoring)
    read = read_columns(scoring.worker_graph)
    names = [f.name for f in scoring.spec.inputs]
    assert frame.columns == ["customer_id", "as_of_ms", *scoring.shipped.values()]
    assert set(scoring.shipped) == {names[j] for j in read} and set(scoring.shipped) <= set(scoring.stored)
    assert {t for c, t in frame.dtypes if c in scoring.stored.values()} == {"float"}  # a float32 graph
    assert set(scoring.feed_types.values()) == {"float"}


def test_the_arrow_setting_lasts_only_for_the_scoring_job(spark):
    before = spark.conf.get(MAX_BYTES)
    with arrow_for_scoring(spark):
        assert spark.conf.get(MAX_BYTES) == str(2**31 - 1)
    assert spark.conf.get(MAX_BYTES) == before
    records = spark.conf.get(MAX_RECORDS)
    spark.conf.set(MAX_RECORDS, "0")  # no record limit: the byte limit is the only bound, kept
    try:
        with arrow_for_scoring(spark):
            assert spark.conf.get(MAX_BYTES) == before
    finally:
        spark.conf.set(MAX_RECORDS, records)
