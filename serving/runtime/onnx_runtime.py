"""The fast path: an MLflow onnx-flavour model run by onnxruntime."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Mapping

import numpy as np
import onnxruntime as ort

from serving.errors import ModelValidationError
from serving.runtime.base import ModelSpec
from serving.settings import OnnxSettings

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def session_options(settings: OnnxSettings) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = settings.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization]
    # Spinning worker threads burn a core between requests; on a shared 2-core box they steal
    # it from the event loop. Requests arrive one by one, so wake threads only when needed.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def check_size(model: str | bytes, limit: int) -> None:
    """Refuse a graph larger than ``limit`` bytes before onnxruntime parses it."""
    try:
        size = len(model) if isinstance(model, (bytes, bytearray)) else os.path.getsize(model)
    except OSError as exc:
        raise ModelValidationError(f"cannot read the ONNX file: {exc.strerror}") from exc
    if size > limit:
        raise ModelValidationError(
            f"the ONNX graph is {size / 2**20:.1f} MiB, over the limit of {limit / 2**20:.1f} MiB "
            f"(onnx.max_model_bytes)")


class OnnxRuntime:
    """Feeds either one 2-D tensor (columns in signature order) or one tensor per feature."""

    def __init__(self, model: str | bytes, spec: ModelSpec, settings: OnnxSettings) -> None:
        """``model``: the path of the ONNX file, or its bytes (batch workers get them shipped)."""
        check_size(model, settings.max_model_bytes)
        try:
            self._session = ort.InferenceSession(
                model, sess_options=session_options(settings),
                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelValidationError(f"onnxruntime cannot open the model: {exc}") from exc
        graph_inputs = self._session.get_inputs()
        self._output_names = [o.name for o in self._session.get_outputs()]
        self.spec = replace(spec, outputs=tuple(self._output_names))
        names = [f.name for f in spec.inputs]
        if len(graph_inputs) == 1 and len(graph_inputs[0].shape) == 2 and (
                graph_inputs[0].shape[1] in (len(names), None) or isinstance(graph_inputs[0].shape[1], str)):
            self._matrix_input = graph_inputs[0].name
            self._matrix_dtype = _ORT_TYPES.get(graph_inputs[0].type, np.float32)
            self._column_inputs: dict[str, type] = {}
        elif sorted(i.name for i in graph_inputs) == sorted(names):
            self._matrix_input = None
            self._column_inputs = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in graph_inputs}
            self._column_ranks = {i.name: len(i.shape) for i in graph_inputs}
        else:
            raise ModelValidationError(
                "the ONNX graph inputs match neither one 2-D tensor nor the signature columns "
                f"(graph: {[i.name for i in graph_inputs]}, signature: {names})")
        self._names = names

    @property
    def input_dtypes(self) -> dict[str, np.dtype]:
        """The dtype the graph takes for each signature input. Arrays already of that dtype go
        into the graph without a conversion (a batch scorer can cast before the data arrives)."""
        if self._matrix_input is not None:
            return {name: np.dtype(self._matrix_dtype) for name in self._names}
        return {name: np.dtype(dtype) for name, dtype in self._column_inputs.items()}

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._matrix_input is not None:
            matrix = np.empty((len(inputs[self._names[0]]), len(self._names)), dtype=self._matrix_dtype)
            for j, name in enumerate(self._names):
                matrix[:, j] = inputs[name]
            feed = {self._matrix_input: matrix}
        else:
            feed = {}
            for name, dtype in self._column_inputs.items():
                col = np.asarray(inputs[name], dtype=dtype)
                feed[name] = col.reshape(-1, 1) if self._column_ranks[name] == 2 else col
        results = self._session.run(self._output_names, feed)
        return dict(zip(self._output_names, results))

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]
