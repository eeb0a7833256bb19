"""Open Inference Protocol v2 inference, transport-free: an infer request's tensors onto the
pipeline's payload, the pipeline's answer onto output tensors (shared by REST and gRPC), and the
REST codec with the binary data extension.

Tabular models take one 1-D tensor (or [n, 1]) per input column, or a single 2-D tensor whose
columns are the model's request-time inputs in signature order. Tensors named after the model's
entity keys (INT64, or BYTES for string keys) make the request entity-keyed: the other inputs are
then request-time features, and the stored ones are read from the online store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import orjson

from serving import codec
from serving.errors import InvalidRequest, MlgateError
from serving.protocols import tensors
from serving.protocols.base import (Decoded, Headers, ModelInputs, answer_columns, check_rows, payload_of,
                                    timeout_ms_of)
from serving.protocols.tensors import Tensor

HEADER_LENGTH = b"inference-header-content-length"
REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})
# Outputs a caller may ask for by name besides the model's own: where each row's answer came from.
EXTRA_OUTPUTS = ("source",)
# Triton's request timeout parameter is in microseconds.
TIMEOUT_PARAMETER, TIMEOUT_SCALE_MS = "timeout", 0.001


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    outputs: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    """Outputs asked for by name, each with its parameters; empty: every output."""


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list
    """The elements, flat (see :class:`~serving.protocols.tensors.Tensor`)."""
    binary: bool = False


def to_payload(request: InferRequest, inputs: ModelInputs, max_rows: int) -> dict[str, Any]:
    """The pipeline's payload of an infer request (see module doc)."""
    if not request.inputs:
        raise InvalidRequest("'inputs' must hold at least one tensor")
    timeout_ms = timeout_ms_of(request.parameters.get(TIMEOUT_PARAMETER), TIMEOUT_SCALE_MS,
                               f"parameters.{TIMEOUT_PARAMETER}")
    known = set(inputs.names)
    if len(request.inputs) == 1 and request.inputs[0].name not in known and inputs.request:
        return _matrix_payload(request.inputs[0], inputs, max_rows, timeout_ms)
    columns: dict[str, list] = {}
    rows = request.inputs[0].rows
    for tensor in request.inputs:
        if tensor.name in columns:
            raise InvalidRequest(f"input {tensor.name!r} is sent twice")
        if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InvalidRequest(f"{tensor.name}: a column input has shape [n] or [n, 1]; a single 2-D "
                                 "input holds the model's inputs as columns")
        if tensor.rows != rows:
            raise InvalidRequest(f"{tensor.name}: {tensor.rows} rows, but {request.inputs[0].name} has {rows}")
        columns[tensor.name] = tensors.column_values(tensor.data, tensor.datatype)
    check_rows(rows, max_rows)
    return payload_of(columns, rows, inputs, timeout_ms)


def _matrix_payload(tensor: Tensor, inputs: ModelInputs, max_rows: int, timeout_ms: int | None) -> dict[str, Any]:
    names = [f.name for f in inputs.request or ()]
    if len(tensor.shape) != 2 or tensor.shape[1] != len(names):
        raise InvalidRequest(f"{tensor.name}: not an input of this model; a single 2-D input must have "
                             f"shape [n, {len(names)}] (inputs: {', '.join(names[:8])})")
    check_rows(tensor.rows, max_rows)
    matrix = tensor.columns()
    columns = {f.name: _as_input(tensors.column_values(matrix[:, j], tensor.datatype), f.dtype, f.name)
               for j, f in enumerate(inputs.request or ())}
    return payload_of(columns, tensor.rows, ModelInputs((), inputs.request), timeout_ms)


def _as_input(values: list, dtype: str, name: str) -> list:
    """A numeric matrix column of a boolean input: 0 and 1 are false and true (one datatype holds
    every column of a matrix)."""
    if dtype != "boolean" or all(type(v) is bool for v in values):
        return values
    if not all(v in (0, 1) for v in values):
        raise InvalidRequest(f"{name}: a boolean input takes 0 or 1 in a numeric matrix")
    return [bool(v) for v in values]


def outputs_of(result: Mapping[str, Any], request: InferRequest, binary_default: bool = False) -> list[OutputTensor]:
    """The answer's output tensors: every model output, or those the request names (plus
    ``source`` when named), in the order asked."""
    predictions = result["predictions"]
    columns = answer_columns(predictions)
    wanted = request.outputs or [(name, {}) for name in columns]
    default_binary = bool(request.parameters.get("binary_data_output", binary_default))
    out = []
    for name, parameters in wanted:
        if name in columns:
            values = columns[name]
        elif name in EXTRA_OUTPUTS:
            values = [p.get(name) for p in predictions]
        else:
            raise InvalidRequest(f"unknown output {name[:64]!r}; outputs: {', '.join([*columns, *EXTRA_OUTPUTS])}")
        datatype, shape, data = _array(values, name)
        binary = parameters.get("binary_data", default_binary)
        out.append(OutputTensor(name, datatype, shape, data, bool(binary)))
    return out


_SCALAR_DATATYPES = {bool: "BOOL", int: "INT64", float: "FP64", str: "BYTES"}


def _array(values: list, name: str) -> tuple[str, tuple[int, ...], np.ndarray | list]:
    """An output column's datatype, shape and elements: scalars stay a list (no array for the
    one-row answers most calls get), rows of lists ([n, k] outputs) become an array."""
    if any(v is None for v in values):  # a row without this output (mixed sources): not a tensor
        raise InvalidRequest(f"output {name!r} is missing for some rows; ask for it alone with the "
                             "other protocols, or leave it out")
    kinds = set(map(type, values))
    if len(kinds) == 1 and next(iter(kinds)) in _SCALAR_DATATYPES:
        return _SCALAR_DATATYPES[next(iter(kinds))], (len(values),), values
    if kinds <= {int, float}:
        return "FP64", (len(values),), [float(v) for v in values]
    array = np.asarray(values)
    if array.dtype.kind in "USO":
        array = np.array([str(v).encode() for v in np.asarray(values, dtype=object).reshape(-1)],
                         dtype=object).reshape(array.shape)
    return tensors.datatype_of(array), array.shape, array.reshape(-1)


def parse_request(body: Any, binary: memoryview | None, max_elements: int) -> InferRequest:
    """An infer request's JSON (``body``, parsed) with the binary section that followed it."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object with an 'inputs' list")
    extra = body.keys() - REQUEST_FIELDS
    if extra:
        raise InvalidRequest(f"unknown top-level fields: {', '.join(sorted(str(e)[:64] for e in extra)[:5])}")
    rid = body.get("id")
    if rid is not None and (type(rid) is not str or len(rid) > 256):
        raise InvalidRequest("'id' must be a string of at most 256 characters")
    parameters = _parameters(body.get("parameters"), "parameters")
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest("'inputs' must be a non-empty list of tensors")
    offset, budget = 0, max_elements
    inputs = []
    for item in raw_inputs:
        tensor, offset = _input(item, binary, offset, budget)
        budget -= len(tensor.data)
        inputs.append(tensor)
    if binary is not None and offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} bytes of binary data follow the inputs that use it")
    return InferRequest(rid, inputs, parameters, _requested_outputs(body.get("outputs")))


_PLAIN = frozenset({"name", "datatype", "shape", "data"})


def _input(item: Any, binary: memoryview | None, offset: int, budget: int) -> tuple[Tensor, int]:
    if type(item) is dict and item.keys() == _PLAIN:  # most calls: one value per input column
        shape, data, name = item["shape"], item["data"], item["name"]
        if (type(shape) is list and len(shape) == 1 and shape[0] == 1 and type(shape[0]) is int
                and type(data) is list and len(data) == 1 and type(name) is str and 0 < len(name) <= 256
                and tensors.is_scalar_of(item["datatype"], data[0])):
            return Tensor(name, item["datatype"], (1,), data), offset
    if not isinstance(item, dict):
        raise InvalidRequest("each input must be an object with name, datatype, shape and data")
    name, datatype, shape = tensors.check_header(item.get("name"), item.get("datatype"), item.get("shape"), budget)
    parameters = _parameters(item.get("parameters"), f"{name}.parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise InvalidRequest(f"{name}: 'data' is missing (or give parameters.binary_data_size)")
        return Tensor(name, datatype, shape, tensors.from_json_data(name, datatype, shape, item["data"]),
                      parameters), offset
    if "data" in item:
        raise InvalidRequest(f"{name}: send 'data' or binary data, not both")
    if binary is None or type(size) is not int or size < 0 or offset + size > len(binary):
        raise InvalidRequest(f"{name}: binary_data_size does not match the binary data sent")
    raw = binary[offset:offset + size]
    return Tensor(name, datatype, shape, tensors.from_raw(name, datatype, shape, raw), parameters), offset + size


def _parameters(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or any(isinstance(v, (list, dict)) for v in value.values()):
        raise InvalidRequest(f"'{where}' must be an object of scalar values")
    return value


def _requested_outputs(value: Any) -> list[tuple[str, Mapping[str, Any]]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 64:
        raise InvalidRequest("'outputs' must be a list of at most 64 objects with a name")
    out = []
    for item in value:
        if not isinstance(item, dict) or type(item.get("name")) is not str:
            raise InvalidRequest("each requested output must be an object with a name")
        out.append((item["name"], _parameters(item.get("parameters"), f"{item['name'][:64]}.parameters")))
    return out


class OipRest:
    """``POST /v2/models/{m}[/versions/{v}]/infer``: JSON, or JSON then binary tensor data."""

    name = "v2"

    def __init__(self, max_elements: int) -> None:
        self.max_elements = max_elements

    def accepts(self, headers: Mapping[bytes, bytes]) -> bool:
        media = headers.get(b"content-type")
        # tritonclient sends binary requests without a content type, or as octet-stream
        return (media is None or codec.is_json_media(media)
                or media.split(b";")[0].strip().lower() == b"application/octet-stream")

    def decode(self, raw: bytes, headers: Mapping[bytes, bytes], inputs: ModelInputs, max_rows: int) -> Decoded:
        declared = headers.get(HEADER_LENGTH)
        binary = None
        if declared is not None:
            if not declared.isdigit() or int(declared) > len(raw):
                raise InvalidRequest("Inference-Header-Content-Length must be the JSON header's length in bytes")
            binary = memoryview(raw)[int(declared):]
            raw = raw[:int(declared)]
        request = parse_request(codec.parse_json(raw), binary, self.max_elements)
        return Decoded(to_payload(request, inputs, max_rows), request)

    def encode(self, result: dict[str, Any], decoded: Decoded, disclose: bool) -> tuple[bytes, Headers]:
        request: InferRequest = decoded.context
        body: dict[str, Any] = {"model_name": result["model"]}
        if disclose:
            body["model_version"] = result["version"]
        if request.id is not None:
            body["id"] = request.id
        chunks, outputs = [], []
        for out in outputs_of(result, request):
            entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
            if out.binary:
                raw = tensors.to_raw(out.data, out.datatype)
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                entry["data"] = tensors.to_json_data(out.data, out.datatype)
            outputs.append(entry)
        body["outputs"] = outputs
        header = orjson.dumps(body)
        if not chunks:
            return header, [(b"content-type", b"application/json")]
        return b"".join([header, *chunks]), [(b"content-type", b"application/octet-stream"),
                                              (HEADER_LENGTH, str(len(header)).encode())]

    def error(self, exc: MlgateError, rid: str) -> bytes:
        return orjson.dumps({"error": exc.message, "code": exc.code, "request_id": rid})
