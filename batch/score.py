"""Spark batch scoring: a registered ONNX model over the offline feature table, in partitions.

Each Python worker opens one onnxruntime session per model version (cached for the life of the
process, not per row or per batch) from model bytes shipped with the task, so the job runs on a
Spark cluster unchanged. Scores go to Parquet, then to the model's fallback keyspace in Redis
through the same versioned, verified, atomic sync as features.

What a per-entity score means: the model's request-time inputs (the transaction being scored)
are unknown in batch, so they take the training median (from the feature statistics logged with
the model): the score is the entity's risk for a typical request, a sensible stand-in when the
online path cannot answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import numpy as np

from batch.keyspace import SCORED_ENTITY, score_view
from features_online import jobs
from features_online.definitions import VIEWS
from features_online.sync import FeatureSync, SyncResult
from serving.errors import ModelValidationError
from serving.features import bind
from serving.runtime.base import ModelSpec
from serving.runtime.loader import download, read_spec, resolve_version
from serving.settings import ModelSettings, OnnxSettings, Settings

log = logging.getLogger(__name__)

_RUNTIMES: dict[str, Any] = {}  # one onnxruntime session per model version per worker process


@dataclass(frozen=True)
class BatchResult:
    model: str
    version: str
    rows: int
    seconds: float
    output: str
    sync: SyncResult | None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def parse_ref(ref: str) -> ModelSettings:
    """``name@alias``, ``name/version`` or ``name:version``."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return ModelSettings(name=name, alias=alias)
    for sep in ("/", ":"):
        if sep in ref:
            name, version = ref.split(sep, 1)
            return ModelSettings(name=name, version=version, alias=None)
    raise ValueError(f"model reference {ref!r}: use name@alias or name/version")


@dataclass(frozen=True)
class ScoringPlan:
    """Everything a worker needs, small and picklable."""

    model_bytes: bytes
    spec: ModelSpec
    onnx: OnnxSettings
    stored: dict[str, str]  # model input -> offline table column
    request_defaults: dict[str, float]
    snapshot: str
    feed_types: dict[str, str]  # model input -> the Spark type of the dtype the graph takes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.model_bytes).hexdigest()


SCORE_SCHEMA = "customer_id long, as_of_ms long, label long, probability double"

# numpy dtype a graph takes -> the Spark type that arrives in Python as exactly that dtype.
_SPARK_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double", np.dtype(np.int64): "bigint",
                np.dtype(np.int32): "int", np.dtype(np.bool_): "boolean"}

_MAX_BYTES = "spark.sql.execution.arrow.maxBytesPerBatch"
_MAX_RECORDS = "spark.sql.execution.arrow.maxRecordsPerBatch"


@contextmanager
def arrow_for_scoring(spark):
    """Spark's Arrow settings for the length of one scoring job, restored afterwards.

    While it fills an Arrow batch for Python, Spark compares the batch's size in bytes with
    ``maxBytesPerBatch`` after every row, and computing that size walks every column vector: about
    a quarter of the JVM's time in a scoring job (profiled with JFR on Spark 4.3). At Int.MaxValue
    Spark skips the check. A scoring row is a few fixed-width numbers, so ``maxRecordsPerBatch``
    alone bounds a batch (50,000 rows of 14 numbers: under 6 MB); with no record limit set, the
    byte limit stays. Scoped to our job so nothing else in the session changes."""
    previous = spark.conf.get(_MAX_BYTES)
    if int(spark.conf.get(_MAX_RECORDS)) > 0:
        spark.conf.set(_MAX_BYTES, str(2**31 - 1))
    try:
        yield
    finally:
        spark.conf.set(_MAX_BYTES, previous)


def model_columns(frame, scoring: ScoringPlan):
    """Only the columns the worker reads, stored inputs already of the dtype the graph takes: Spark
    casts (exactly as numpy would: IEEE round to nearest), so a float32 graph gets half the bytes
    of double across the JVM/Python boundary and Python converts nothing."""
    from pyspark.sql import functions as F

    return frame.select("customer_id", "as_of_ms", *[
        F.col(column).cast(scoring.feed_types[name]).alias(column) for name, column in scoring.stored.items()])


def score_partitions(plan: ScoringPlan):
    """The function Spark runs per partition (mapInArrow): Arrow columns straight into the model,
    numeric columns straight back; constant columns are added by Spark afterwards."""

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        from serving.runtime.onnx_runtime import OnnxRuntime

        runtime = _RUNTIMES.get(plan.digest)
        if runtime is None:
            runtime = _RUNTIMES[plan.digest] = OnnxRuntime(plan.model_bytes, plan.spec, plan.onnx)
        dtypes = runtime.input_dtypes
        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            inputs = {f.name: (batch.column(plan.stored[f.name]).to_numpy(zero_copy_only=False)
                               if f.name in plan.stored
                               else np.full(n, plan.request_defaults[f.name], dtype=dtypes[f.name]))
                      for f in plan.spec.inputs}
            out = runtime.predict(inputs)
            yield pa.RecordBatch.from_arrays(
                [batch.column("customer_id"), batch.column("as_of_ms"),
                 pa.array(np.asarray(out["label"], np.int64)), pa.array(np.asarray(out["probability"], np.float64))],
                names=["customer_id", "as_of_ms", "label", "probability"])

    return run


def typical_request(inputs, stats: dict) -> dict[str, float]:
    """Training medians of the request-time inputs, as values a caller could send: an integer
    input takes its median rounded (half to even), so a batch score is always the score of a
    request the online path would accept."""
    medians = {f.name: float(stats[f.name]["quantiles"]["0.5"]) for f in inputs}
    return {f.name: float(round(medians[f.name])) if f.is_integral else medians[f.name] for f in inputs}


def scored(frame, scoring: ScoringPlan):
    """``frame`` (offline table) scored, with model, version, snapshot and scoring time."""
    from pyspark.sql import functions as F

    return (model_columns(frame, scoring).mapInArrow(score_partitions(scoring), schema=SCORE_SCHEMA)
            .withColumn("model", F.lit(scoring.spec.name))
            .withColumn("model_version", F.lit(scoring.spec.version))
            .withColumn("feature_snapshot", F.lit(scoring.snapshot))
            .withColumn("scored_at_ms", F.lit(int(time.time() * 1000)).cast("long")))


def plan(settings: Settings, ref: ModelSettings) -> tuple[ScoringPlan, str]:
    """Resolve and fetch the model; map its inputs to the offline table (the table path too)."""
    from mlflow import MlflowClient

    from serving.runtime.onnx_runtime import OnnxRuntime

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    version, alias, tags = resolve_version(client, ref)
    path = download(settings.tracking_uri, ref.name, version, settings.state_dir / "models")
    spec, onnx_file = read_spec(path, ref.name, version, alias, f"models:/{ref.name}/{version}", tags)
    if not onnx_file:
        raise ModelValidationError("batch scoring runs ONNX models (use mlflow.pyfunc.spark_udf for others)")
    binding = bind(spec)
    if list(binding.by_view) != ["customer_activity"]:
        raise ModelValidationError("batch scoring needs a model fed by the customer_activity view")
    view = VIEWS["customer_activity"]
    stats_file = path / "extra_files" / "feature_stats.json"
    if binding.request_spec.inputs and not stats_file.exists():
        raise ModelValidationError("the model has request-time inputs but no feature_stats.json to default them")
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    table, _ = jobs.latest_table(settings, view)
    model_bytes = open(onnx_file, "rb").read()
    dtypes = OnnxRuntime(model_bytes, spec, settings.onnx).input_dtypes  # opens once here, fails early
    if unknown := {str(d) for d in dtypes.values() if d not in _SPARK_TYPES}:
        raise ModelValidationError(f"batch scoring cannot feed graph inputs of type {sorted(unknown)}")
    return ScoringPlan(
        model_bytes=model_bytes, spec=spec, onnx=settings.onnx,
        stored={view.qualified(f): f for f in binding.by_view["customer_activity"]},
        request_defaults=typical_request(binding.request_spec.inputs, stats),
        snapshot=str(table), feed_types={name: _SPARK_TYPES[d] for name, d in dtypes.items()}), str(table)


def score(settings: Settings, spark, ref: str, output: str, sync: bool = True) -> BatchResult:
    """Score every entity of the latest offline table; write Parquet; sync the fallback keyspace."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    scoring, table = plan(settings, parse_ref(ref))
    with arrow_for_scoring(spark):
        scored(spark.read.parquet(table), scoring).write.mode("overwrite").parquet(output)
    written = spark.read.parquet(output)
    rows = written.count()
    synced = None
    if sync:
        as_of_ms = written.agg(F.max("as_of_ms")).first()[0]
        from datetime import datetime, timezone

        as_of = datetime.fromtimestamp(as_of_ms / 1000, timezone.utc)
        to_redis = written.select(F.col("customer_id").alias(SCORED_ENTITY.key), "as_of_ms", "label", "probability")
        view = score_view(scoring.spec.name, timedelta(seconds=settings.fallback.max_age_s))
        synced = FeatureSync(settings.fallback.redis or settings.redis, settings.features, view).full(
            to_redis.repartition(settings.spark.sync_partitions), as_of, output,
            extra={"model_version": scoring.spec.version})
    result = BatchResult(scoring.spec.name, scoring.spec.version, rows, time.perf_counter() - started,
                         output, synced)
    log.info("scored %d entities with %s v%s in %.1fs", rows, result.model, result.version, result.seconds)
    return result
