"""Spark batch scoring: a registered ONNX model over its views' offline tables, in partitions.

Any model whose inputs come from the repository's views: its rows are the latest offline tables
of those views joined on their key columns (``batch.frame`` says which rows and how), its scores
are keyed by every key column of its entities and stored in its score view (``label``, ``score``;
``batch.outputs`` for classifiers and regressors).

Each Python worker opens one onnxruntime session per graph (``batch.worker``: cached for the
life of the process, not per task, row or batch) from model bytes shipped with the task, so the
job runs on a Spark cluster unchanged. The graph the workers run is the registered one
specialised to the request-time values every row gets (``batch.specialise``), checked to give
the same scores to the bit. Scores go to Parquet, then to the model's fallback keyspace in Redis
through the same versioned, verified, atomic sync as features.

What a per-entity score means: the model's request-time inputs (what the caller sends with a request)
are unknown in batch, so they take the training median (from the feature statistics logged with
the model): the score is the entity's score for a typical request, a sensible stand-in when the
online path cannot answer.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np

from batch.frame import FrameError, FramePlan, ViewInputs, build_frame, frame_plan
from batch.outputs import UnscorableOutputs, score_outputs
from batch.specialise import probe, read_columns, specialise
from batch.worker import ScoringPlan, score_batches
from features_online import jobs
from features_online.definitions import Entity, FeatureView, score_view, scored_entity
from features_online.repository import Repository
from features_online.sync import FeatureSync, SyncResult
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

    return frame.select(*scoring.key_names, "as_of_ms", *[
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
    """``frame`` (``batch.frame.build_frame``) scored: key columns, as_of_ms, label, score, then
    model, version, snapshot (the tables read) and scoring time."""
    from pyspark.sql import functions as F

    return (model_columns(frame, scoring).mapInArrow(score_partitions(scoring), schema=scoring.schema)
            .withColumn("model", F.lit(scoring.spec.name))
            .withColumn("model_version", F.lit(scoring.spec.version))
            .withColumn("feature_snapshot", F.lit(scoring.snapshot))
            .withColumn("scored_at_ms", F.lit(int(time.time() * 1000)).cast("long")))


@dataclass(frozen=True)
class Job:
    """One batch job, planned: what the workers run, the frame they read, where scores go."""

    scoring: ScoringPlan
    frame: FramePlan
    tables: dict[str, str]  # view -> its latest offline table
    as_of: datetime  # of the oldest table: the age of every score
    view: FeatureView  # the model's score view (Redis)


RESERVED = frozenset({"as_of_ms", "label", "score", "model", "model_version", "feature_snapshot", "scored_at_ms"})


def model_entities(repo: Repository, model: str, views: list[FeatureView]) -> tuple[Entity, ...]:
    """The entities the model's scores are keyed by: as the repository lists them for the model
    (the gateway looks its fallbacks up by the same), else those of its views, in input order."""
    listed = repo.model_entities(model)
    if listed:
        return listed
    log.warning("model %s is not listed in the repository: its scores are keyed by its views' entities", model)
    return tuple({v.entity.name: v.entity for v in views}.values())


def plan(settings: Settings, ref: ModelSettings, repo: Repository, entity_table: bool = False) -> Job:
    """Resolve and fetch the model; bind its inputs to the repository's views; find their latest
    offline tables and how they join (``batch.frame``)."""
    from serving.codec import bind
    from serving.runtime.onnx_runtime import OnnxRuntime

    spec, path, onnx_file = fetch(settings, ref)
    binding = bind(spec, repo.views)
    if not binding.by_view:
        raise ModelValidationError(f"{spec.name} reads no feature view: there is nothing to score it by")
    inputs = [ViewInputs(repo.views[name], tuple(features)) for name, features in binding.by_view.items()]
    entities = model_entities(repo, spec.name, [vi.view for vi in inputs])
    entity = scored_entity(spec.name, entities)
    if clash := RESERVED & set(entity.key_names):
        raise ModelValidationError(f"key columns named {sorted(clash)} clash with the score columns")
    try:
        frame = frame_plan(entity, inputs, entity_table)
    except FrameError as exc:
        raise ModelValidationError(str(exc)) from None
    stats_file = path / "extra_files" / "feature_stats.json"
    if binding.request_spec.inputs and not stats_file.exists():
        raise ModelValidationError("the model has request-time inputs but no feature_stats.json to default them")
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    located = {vi.view.name: jobs.latest_table(settings, vi.view) for vi in inputs}
    model_bytes = open(onnx_file, "rb").read()
    runtime = OnnxRuntime(model_bytes, spec, settings.onnx)  # opens once here, fails early
    if unknown := {str(d) for d in runtime.input_dtypes.values() if d not in _SPARK_TYPES}:
        raise ModelValidationError(f"batch scoring cannot feed graph inputs of type {sorted(unknown)}")
    try:
        outputs = score_outputs(runtime.spec.outputs, output_shapes(model_bytes))
    except UnscorableOutputs as exc:
        raise ModelValidationError(str(exc)) from None
    scoring = specialised(ScoringPlan(
        model_bytes=model_bytes, spec=spec, onnx=settings.onnx, stored=frame.columns,
        request_defaults=typical_request(binding.request_spec.inputs, stats),
        snapshot=";".join(f"{name}={table}" for name, (table, _) in located.items()),
        feed_types={name: _SPARK_TYPES[d] for name, d in runtime.input_dtypes.items()},
        keys=tuple((k.name, k.type) for k in entity.keys), outputs=outputs))
    view = score_view(spec.name, entities, timedelta(seconds=settings.fallback.max_age_s))
    return Job(scoring, frame, {name: str(table) for name, (table, _) in located.items()},
               min(as_of for _, as_of in located.values()), view)


def fetch(settings: Settings, ref: ModelSettings):
    """The registered version's spec, local folder and ONNX file (ONNX models only)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    version, alias, tags = resolve_version(client, ref)
    path = download(settings.tracking_uri, ref.name, version, settings.state_dir / "models")
    verify_digest(path, tags, f"models:/{ref.name}/{version}", required=settings.registry.require_digest)
    spec, onnx_file = read_spec(path, ref.name, version, alias, f"models:/{ref.name}/{version}", tags)
    if not onnx_file:
        raise ModelValidationError("batch scoring runs ONNX models (use mlflow.pyfunc.spark_udf for others)")
    return spec, path, onnx_file


def output_shapes(model_bytes: bytes) -> dict[str, list]:
    """Each graph output's declared shape (ints, or None/str for free dimensions)."""
    import onnx

    shapes = {}
    for out in onnx.load_from_string(model_bytes).graph.output:
        dims = out.type.tensor_type.shape.dim
        shapes[out.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    return shapes


def score(settings: Settings, spark, ref: str, output: str, repo: Repository, sync: bool = True,
          entities: str | None = None) -> BatchResult:
    """Score every entity of the model's views (or of the ``entities`` table); write Parquet;
    sync the model's score view."""
    started = time.perf_counter()
    job = plan(settings, parse_ref(ref), repo, entity_table=entities is not None)
    return run(settings, spark, job, output, sync, entities, started)


def run(settings: Settings, spark, job: Job, output: str, sync: bool = True, entities: str | None = None,
        started: float | None = None) -> BatchResult:
    """Run a planned job (:func:`plan`: refusals come before Spark is needed)."""
    started = time.perf_counter() if started is None else started
    rows_in = spark.read.parquet(entities) if entities is not None else None
    frame = build_frame(spark, job.frame, job.tables, int(job.as_of.timestamp() * 1000), rows_in)
    with arrow_for_scoring(spark):
        scored(frame, job.scoring).write.mode("overwrite").parquet(output)
    written = spark.read.parquet(output)
    rows = written.count()
    synced = None
    if sync:
        to_redis = written.select(*job.scoring.key_names, "as_of_ms", "label", "score")
        synced = FeatureSync(settings.fallback.redis or settings.redis, settings.features, job.view).full(
            to_redis.repartition(settings.spark.sync_partitions), job.as_of, output,
            extra={"model_version": job.scoring.spec.version, "outputs": job.scoring.outputs.kind})
    spec = job.scoring.spec
    result = BatchResult(spec.name, spec.version, rows, time.perf_counter() - started, output, synced)
    log.info("scored %d entities with %s v%s in %.1fs", rows, result.model, result.version, result.seconds)
    return result
