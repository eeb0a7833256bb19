"""Spark batch scoring: a registered ONNX model over the offline feature table, in partitions.

Each Python worker opens one onnxruntime session per graph (``batch.worker``: cached for the
life of the process, not per task, row or batch) from model bytes shipped with the task, so the
job runs on a Spark cluster unchanged. The graph the workers run is the registered one
specialised to the request-time values every row gets (``batch.specialise``), checked to give
the same scores to the bit. Scores go to Parquet, then to the model's fallback keyspace in Redis
through the same versioned, verified, atomic sync as features.

What a per-entity score means: the model's request-time inputs (the transaction being scored)
are unknown in batch, so they take the training median (from the feature statistics logged with
the model): the score is the entity's risk for a typical request, a sensible stand-in when the
online path cannot answer.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta

import numpy as np

from batch.specialise import probe, read_columns, specialise
from batch.worker import SCORE_SCHEMA, ScoringPlan, score_batches
from features_online import jobs
from features_online.definitions import SCORED_ENTITY, VIEWS, score_view
from features_online.sync import FeatureSync, SyncResult
from serving.codec import bind
from serving.errors import ModelValidationError
from serving.runtime.loader import download, read_spec, resolve_version, verify_digest
from serving.settings import ModelSettings, Settings

log = logging.getLogger(__name__)


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


def specialised(scoring: ScoringPlan) -> ScoringPlan:
    """``scoring`` with the workers' graph specialised to the request-time values every row gets
    (``batch.specialise``: same scores to the bit, fewer splits per row) and the stored inputs
    that graph no longer reads left out of what is shipped."""
    names = [f.name for f in scoring.spec.inputs]  # the runtime's column order for a matrix input
    constants = {j: scoring.request_defaults[name] for j, name in enumerate(names) if name in scoring.request_defaults}
    graph = specialise(scoring.model_bytes, constants)
    if graph is scoring.model_bytes:
        return scoring
    if not _same_scores(scoring, graph, constants):
        log.warning("the specialised graph of %s v%s disagrees with the original on probe rows: "
                    "scoring with the original", scoring.spec.name, scoring.spec.version)
        return scoring
    read = read_columns(graph)
    unread = frozenset() if read is None else frozenset(
        name for j, name in enumerate(names) if name in scoring.stored and j not in read)
    return replace(scoring, graph=graph, unread=unread)


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


def _same_scores(scoring: ScoringPlan, graph: bytes, constants: dict[int, float]) -> bool:
    """Both graphs' outputs, bit for bit, on rows that exercise every split (``probe``)."""
    from serving.runtime.onnx_runtime import OnnxRuntime

    x = probe(scoring.model_bytes, len(scoring.spec.inputs), constants)
    inputs = {f.name: x[:, j] for j, f in enumerate(scoring.spec.inputs)}
    before = OnnxRuntime(scoring.model_bytes, scoring.spec, scoring.onnx).predict(inputs)
    after = OnnxRuntime(graph, scoring.spec, scoring.onnx).predict(inputs)
    return before.keys() == after.keys() and all(
        np.array_equal(np.asarray(before[k]).view(np.uint8), np.asarray(after[k]).view(np.uint8)) for k in before)


def model_columns(frame, scoring: ScoringPlan):
    """Only the columns the worker reads, stored inputs already of the dtype the graph takes: Spark
    casts (exactly as numpy would: IEEE round to nearest), so a float32 graph gets half the bytes
    of double across the JVM/Python boundary and Python converts nothing."""
    from pyspark.sql import functions as F

    return frame.select("customer_id", "as_of_ms", *[
        F.col(column).cast(scoring.feed_types[name]).alias(column) for name, column in scoring.shipped.items()])


def score_partitions(plan: ScoringPlan):
    """The function Spark runs per partition: ``batch.worker.score_batches`` for this plan,
    shipped by reference so a worker keeps its session across tasks."""
    return functools.partial(score_batches, plan)


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
    verify_digest(path, tags, f"models:/{ref.name}/{version}", required=settings.registry.require_digest)
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
    return specialised(ScoringPlan(
        model_bytes=model_bytes, spec=spec, onnx=settings.onnx,
        stored={view.qualified(f): f for f in binding.by_view["customer_activity"]},
        request_defaults=typical_request(binding.request_spec.inputs, stats),
        snapshot=str(table), feed_types={name: _SPARK_TYPES[d] for name, d in dtypes.items()})), str(table)


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
