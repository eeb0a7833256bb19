"""The model runtime interface: small and synchronous.

A runtime is loaded once, answers ``predict`` with plain numpy arrays and is closed when its
version is retired. Async callers reach it through ``@serve.batch`` or ``asyncio.to_thread``
(onnxruntime releases the GIL while it computes).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Protocol

import numpy as np

# MLflow signature column types we accept, and the numpy dtype each becomes.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "double": np.dtype(np.float64),
    "float": np.dtype(np.float32),
    "long": np.dtype(np.int64),
    "integer": np.dtype(np.int32),
    "boolean": np.dtype(np.bool_),
}


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    dtype: str  # one of NUMPY_DTYPES
    required: bool = True

    @property
    def is_integral(self) -> bool:
        return self.dtype in ("long", "integer")


@dataclass(frozen=True)
class ModelSpec:
    """What the gateway knows about one loaded model version."""

    name: str
    version: str
    alias: str | None
    uri: str
    flavor: Literal["onnx", "pyfunc"]
    inputs: tuple[FeatureSpec, ...]
    outputs: tuple[str, ...]
    input_example: tuple[Mapping[str, Any], ...] = ()
    run_id: str | None = None
    load_seconds: float = 0.0
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.inputs)


class ModelRuntime(Protocol):
    spec: ModelSpec

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score a batch: one 1-D array per input feature (same length N), in any order.

        Returns one array per output, each with N rows along its first axis.
        """

    def close(self) -> None: ...


# Rows up to this many are scored inline on the event loop by ONNX models (microseconds for tree
# models); larger batches, and any pyfunc model (arbitrary Python: it may block), go to a worker
# thread so they cannot stall other requests.
INLINE_MAX_ROWS = 64


async def predict_async(runtime: ModelRuntime, inputs: Mapping[str, np.ndarray], rows: int
                        ) -> dict[str, np.ndarray]:
    """``runtime.predict`` from async code: inline when it is short, else in a worker thread."""
    if rows <= INLINE_MAX_ROWS and runtime.spec.flavor == "onnx":
        return runtime.predict(inputs)
    return await asyncio.to_thread(runtime.predict, inputs)
