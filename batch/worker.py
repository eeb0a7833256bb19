"""What runs inside Spark's Python workers: the plan they receive and the per-partition scorer.

Kept apart from the planning code (``batch.score``) so that a worker imports only this module,
numpy, pyarrow and the onnxruntime wrapper. The job hands Spark
``functools.partial(score_batches, plan)``: cloudpickle ships the function by reference, so this
module, and its session cache, lives as long as the worker process (Spark reuses Python workers
across tasks by default). A worker opens one onnxruntime session per graph, not one per task as
a closure shipped by value would (each task unpickles a closure's globals afresh).
"""

from __future__ import annotations

import gc
import hashlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from batch.outputs import ScoreOutputs
from serving.runtime.base import ModelSpec
from serving.runtime.onnx_runtime import OnnxRuntime
from serving.settings import OnnxSettings

_SESSIONS: dict[str, OnnxRuntime] = {}  # graph digest -> session, for the life of the worker process

SCORE_FIELDS = ("as_of_ms", "label", "score")
"""What follows the key columns in a worker's output (the score view's fields, and their age)."""
_KEY_TYPES = {"int64": "bigint", "string": "string"}


@dataclass(frozen=True)
class ScoringPlan:
    """Everything a worker needs, small and picklable."""

    model_bytes: bytes  # the registered graph, as the online path runs it
    spec: ModelSpec
    onnx: OnnxSettings
    stored: dict[str, str]  # model input -> offline table column
    request_defaults: dict[str, float]
    snapshot: str
    feed_types: dict[str, str]  # model input -> the Spark type of the dtype the graph takes
    keys: tuple[tuple[str, str], ...]  # the scored entity's key columns: (name, "int64" | "string")
    outputs: ScoreOutputs  # which graph outputs become label and score
    graph: bytes | None = None  # what the workers run, if not model_bytes (``batch.score.specialised``)
    unread: frozenset[str] = frozenset()  # stored inputs the workers' graph never reads: not shipped, fed as 0

    @property
    def worker_graph(self) -> bytes:
        return self.model_bytes if self.graph is None else self.graph

    @property
    def shipped(self) -> dict[str, str]:
        """The stored inputs that travel to the workers (model input -> offline table column)."""
        return {name: column for name, column in self.stored.items() if name not in self.unread}

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.keys)

    @property
    def columns(self) -> tuple[str, ...]:
        """The worker's output columns: the key columns, then ``SCORE_FIELDS``."""
        return (*self.key_names, *SCORE_FIELDS)

    @property
    def schema(self) -> str:
        """The worker's output as a Spark DDL schema (keys of any type, carried through)."""
        keys = [f"`{name}` {_KEY_TYPES[kind]}" for name, kind in self.keys]
        return ", ".join([*keys, "`as_of_ms` bigint", "`label` bigint", "`score` double"])

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.worker_graph).hexdigest()


def score_batches(plan: ScoringPlan, batches: Iterator[Any]) -> Iterator[Any]:
    """One partition (mapInArrow): Arrow columns straight into the model, the key columns
    (whatever their type) passed through as they came, label and score back; constant columns
    are added by Spark afterwards."""
    import pyarrow as pa

    runtime = _session(plan)
    dtypes = runtime.input_dtypes
    shipped = plan.shipped
    fixed = {**plan.request_defaults, **dict.fromkeys(plan.unread, 0.0)}
    for batch in batches:
        n = batch.num_rows
        if n == 0:
            continue
        inputs = {f.name: (batch.column(shipped[f.name]).to_numpy(zero_copy_only=False)
                           if f.name in shipped else np.full(n, fixed[f.name], dtype=dtypes[f.name]))
                  for f in plan.spec.inputs}
        label, score = plan.outputs.scores(runtime.predict(inputs))
        yield pa.RecordBatch.from_arrays(
            [*(batch.column(key) for key in plan.key_names), batch.column("as_of_ms"), pa.array(label),
             pa.array(score)], names=list(plan.columns))


def _session(plan: ScoringPlan) -> OnnxRuntime:
    """The worker's session for the plan's graph, opened on its first task.

    PySpark's worker loop runs a full ``gc.collect()`` after every task (``pyspark/daemon.py``),
    and the worker cannot start its next task until it returns. A worker that has imported pandas,
    pyarrow and onnxruntime holds about 120,000 objects, so that collection took 50-110 ms per
    task here (longer than scoring a 50,000-row batch). Once the session is open, what the worker
    keeps for the rest of its life exists: ``gc.freeze()`` takes it out of the collector's view
    (reference counting still frees it), so the per-task collection walks only what a task made."""
    runtime = _SESSIONS.get(plan.digest)
    if runtime is None:
        runtime = _SESSIONS[plan.digest] = OnnxRuntime(plan.worker_graph, plan.spec, plan.onnx)
        gc.freeze()
    return runtime
