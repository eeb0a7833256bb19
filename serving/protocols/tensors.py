"""Open Inference Protocol tensors: datatypes, JSON data, the binary data extension.

Transport-free and shared by the REST and gRPC codecs: a :class:`Tensor` is a name, a datatype,
a shape and its elements as one flat numpy array (``BYTES``: an object array of ``bytes``).
Every check is done here, once, and fails with :class:`~serving.errors.InvalidRequest`: element
counts against the shape, values against the datatype, binary sizes against the buffer.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from serving.errors import InvalidRequest, NonFiniteValue

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
# MLflow signature types (serving/runtime/base.py) and entity key types, as OIP datatypes.
SIGNATURE_DATATYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32",
                       "boolean": "BOOL", "int64": "INT64", "string": "BYTES"}
MAX_DIMS = 8
_LENGTH = struct.Struct("<I")


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list
    """The elements, flat, in row-major order: a list of checked Python values when they came as
    JSON or typed contents (no array is built for the one-row calls most requests are), a numpy
    array when they came as raw bytes."""
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    def columns(self) -> np.ndarray:
        """The elements as ``rows`` x ``width``: a 1-D tensor, or [n, 1], is one column."""
        data = np.asarray(self.data, dtype=DTYPES[self.datatype])
        return data.reshape(self.rows, -1) if data.size else data.reshape(self.rows, 0)


def check_header(name: Any, datatype: Any, shape: Any, max_elements: int) -> tuple[str, str, tuple[int, ...]]:
    """A tensor's name, datatype and shape, checked."""
    if type(name) is not str or not 0 < len(name) <= 256:
        raise InvalidRequest("every tensor needs a 'name' of 1 to 256 characters")
    if type(datatype) is not str or datatype not in DTYPES:
        raise InvalidRequest(f"{name}: unknown datatype; expected one of {', '.join(DTYPES)}")
    if (not isinstance(shape, (list, tuple)) or len(shape) > MAX_DIMS
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise InvalidRequest(f"{name}: 'shape' must be a list of at most {MAX_DIMS} non-negative integers")
    if math.prod(shape) > max_elements:
        raise InvalidRequest(f"{name}: more than {max_elements} elements")
    return name, datatype, tuple(shape)


def from_json_data(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> list:
    """The flat, checked elements of a tensor sent as JSON ``data`` (flat or nested as the shape)."""
    return from_elements(name, datatype, shape, flatten(name, data, len(shape)))


def from_elements(name: str, datatype: str, shape: tuple[int, ...], flat: list) -> list:
    """A tensor's elements given as a flat list of Python values (JSON data, gRPC's typed
    contents), checked against the shape and the datatype."""
    count = math.prod(shape)
    if len(flat) != count:
        raise InvalidRequest(f"{name}: shape {list(shape)} needs {count} elements, {len(flat)} sent")
    return _checked(name, datatype, flat)


def flatten(name: str, data: Any, depth: int) -> list:
    """``data`` as a flat list of scalars in row-major order, refusing objects and anything
    nested deeper than the tensor's ``depth`` dimensions (no recursion: a hostile nesting costs
    one pass)."""
    if not isinstance(data, list):
        raise InvalidRequest(f"{name}: 'data' must be a list")
    if not data or not isinstance(data[0], (list, dict)):  # the usual case: already flat
        if any(isinstance(v, (list, dict)) for v in data):
            raise InvalidRequest(f"{name}: 'data' mixes lists and values")
        return data
    return _walk(name, data, depth)


def _walk(name: str, data: list, depth: int) -> list:
    flat: list = []
    stack: list[tuple[list, int, int]] = [(data, 0, 1)]
    while stack:
        items, index, level = stack.pop()
        while index < len(items):
            value = items[index]
            index += 1
            if isinstance(value, list):
                if level >= max(depth, 1):
                    raise InvalidRequest(f"{name}: 'data' is nested deeper than its shape")
                stack.append((items, index, level))
                items, index, level = value, 0, level + 1
            elif isinstance(value, dict):
                raise InvalidRequest(f"{name}: 'data' holds an object")
            else:
                flat.append(value)
    return flat


_FLOAT_MAX = {"FP16": float(np.finfo(np.float16).max), "FP32": float(np.finfo(np.float32).max),
              "FP64": float(np.finfo(np.float64).max)}


# The Python types and bounds of one element of each datatype that JSON or typed contents carry.
_SCALARS: dict[str, tuple[tuple[type, ...], float, float]] = {
    **{f"FP{bits}": ((float, int), -_FLOAT_MAX[f"FP{bits}"], _FLOAT_MAX[f"FP{bits}"]) for bits in (16, 32, 64)},
    **{name: ((int,), int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
       for name, dtype in DTYPES.items() if dtype.kind in "iu"},
}


def is_scalar_of(datatype: Any, value: Any) -> bool:
    """Whether ``value`` is one plainly valid element of ``datatype`` (the one-value fast path;
    False sends the value through the full checks, which say what is wrong)."""
    if datatype == "BOOL":
        return type(value) is bool
    if datatype == "BYTES":
        return type(value) is str
    found = _SCALARS.get(datatype) if type(datatype) is str else None
    return found is not None and type(value) in found[0] and found[1] <= value <= found[2]


def _checked(name: str, datatype: str, flat: list) -> list:
    """``flat`` if every element is a value of ``datatype`` (plain Python checks: most calls carry
    one row, where building an array costs more than the check)."""
    kinds = set(map(type, flat))
    if datatype == "BYTES":
        if not kinds <= {str, bytes}:
            raise InvalidRequest(f"{name}: BYTES elements must be strings")
        return flat
    if datatype == "BOOL":
        if not kinds <= {bool}:
            raise InvalidRequest(f"{name}: BOOL elements must be true or false")
        return flat
    if datatype.startswith("FP"):
        if not kinds <= {int, float}:
            raise InvalidRequest(f"{name}: {datatype} elements must be numbers")
        limit = _FLOAT_MAX[datatype]
        if not all(-limit <= v <= limit for v in flat):  # NaN compares false too
            raise NonFiniteValue(f"{name}: a value is out of range for {datatype}")
        return flat
    if not kinds <= {int}:
        raise InvalidRequest(f"{name}: {datatype} elements must be integers")
    info = np.iinfo(DTYPES[datatype])
    if flat and (min(flat) < info.min or max(flat) > info.max):
        raise InvalidRequest(f"{name}: a value is out of range for {datatype}")
    return flat


def from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview) -> np.ndarray:
    """The flat array of a tensor sent as raw bytes (the binary extension, gRPC's raw contents):
    little-endian elements, or for BYTES each element as a 4-byte length and its bytes."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _raw_bytes(name, count, memoryview(raw))
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidRequest(f"{name}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} "
                             f"bytes, {len(raw)} sent")
    out = np.frombuffer(raw, dtype=dtype)
    if dtype.kind == "f" and not np.isfinite(out).all():
        raise NonFiniteValue(f"{name}: NaN and Infinity are not valid values")
    if datatype == "BOOL" and out.view(np.uint8).max(initial=0) > 1:
        raise InvalidRequest(f"{name}: BOOL bytes must be 0 or 1")
    return out


def _raw_bytes(name: str, count: int, raw: memoryview) -> np.ndarray:
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise InvalidRequest(f"{name}: the raw BYTES data holds fewer than {count} elements")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidRequest(f"{name}: element {i} of the raw BYTES data runs past its end")
        out[i] = bytes(raw[offset:offset + size])
        offset += size
    if offset != len(raw):
        raise InvalidRequest(f"{name}: the raw BYTES data has {len(raw) - offset} bytes past its elements")
    return out


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array (strings and objects: BYTES)."""
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return f"{'U' if kind == 'u' else ''}INT{size * 8}"
    if kind == "f":
        return f"FP{size * 8}"
    return "BYTES"


def to_raw(data: np.ndarray | list, datatype: str) -> bytes:
    """The elements as the raw bytes of ``datatype`` (the inverse of :func:`from_raw`)."""
    if datatype != "BYTES":
        return np.ascontiguousarray(data, dtype=DTYPES[datatype]).tobytes()
    parts = []
    for item in as_bytes(data):
        parts += [_LENGTH.pack(len(item)), item]
    return b"".join(parts)


def as_bytes(data: np.ndarray | list) -> list[bytes]:
    """BYTES elements as bytes (text encoded as UTF-8)."""
    flat = data.reshape(-1).tolist() if isinstance(data, np.ndarray) else data
    return [v if isinstance(v, bytes) else str(v).encode() for v in flat]


def flat_list(data: np.ndarray | list) -> list:
    """The elements as a flat list of Python values."""
    return data.reshape(-1).tolist() if isinstance(data, np.ndarray) else data


def to_json_data(data: np.ndarray | list, datatype: str) -> list:
    """The elements as a flat JSON list (BYTES as text)."""
    flat = flat_list(data)
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    return flat


def column_values(data: np.ndarray | list, datatype: str) -> list:
    """One input column as Python values for the pipeline (BYTES as text: entity ids, strings)."""
    flat = flat_list(data)
    if datatype == "BYTES":
        try:
            return [v.decode("utf-8") if isinstance(v, bytes) else v for v in flat]
        except UnicodeDecodeError:
            raise InvalidRequest("BYTES input elements must be UTF-8 text") from None
    if datatype in ("FP16", "FP32") and isinstance(data, np.ndarray):
        return data.astype(np.float64).tolist()
    return flat
