"""Every body shape in, every answer out: request rows and entity keys in, model columns out;
model outputs in, response rows out.

Pure functions over plain Python and numpy, so they are unit-tested without a server. Validation
messages name the row and the feature and say what was expected; they never echo the value.

A model's inputs split in two (:func:`bind`): those named ``<view>__<feature>`` come from the
online store, keyed by the entities of the request; the rest are request-time values the caller
sends, under ``instances`` (every input spelled out) or ``features`` (beside ``entities``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import orjson

from features_online.definitions import VIEWS, FeatureView, split_inputs
from serving.errors import (
    InvalidFeatureType,
    InvalidRequest,
    MalformedJson,
    ModelValidationError,
    NonFiniteValue,
    RequestFeaturesMissing,
    TooManyInstances,
    UnknownFeature,
)
from serving.runtime.base import NUMPY_DTYPES, ModelSpec
from serving.schemas import MAX_TIMEOUT_MS

_F32_MAX = float(np.finfo(np.float32).max)
_NUMBER = (int, float)
_MAX_NAMES_SHOWN = 5


def parse_json(body: bytes) -> Any:
    """Parse a request body; NaN/Infinity literals get their own error, not 'malformed'."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:  # the stdlib parser accepts NaN/Infinity: if it succeeds, those literals were the cause
        json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedJson() from None
    raise NonFiniteValue("NaN and Infinity are not valid feature values")


def body_rows(payload: Any, field: str, allowed: frozenset[str], max_instances: int) -> list:
    """``payload[field]``: a non-empty list of at most ``max_instances`` items, in a body object
    with no fields but ``allowed``."""
    if not isinstance(payload, dict):
        raise InvalidRequest(f"the body must be a JSON object with an '{field}' list")
    extra = payload.keys() - allowed
    if extra:
        raise InvalidRequest(f"unknown top-level fields: {_names(extra)}")
    rows = payload.get(field)
    if not isinstance(rows, list) or not rows:
        raise InvalidRequest(f"'{field}' must be a non-empty list of objects")
    if len(rows) > max_instances:
        raise TooManyInstances(f"{len(rows)} {field} sent, at most {max_instances} allowed")
    return rows


INSTANCE_BODY_FIELDS = frozenset({"instances", "timeout_ms"})


def instances_of(payload: Any, max_instances: int) -> list[dict[str, Any]]:
    """The ``instances`` list of a predict body, after checking the envelope."""
    instances = body_rows(payload, "instances", INSTANCE_BODY_FIELDS, max_instances)
    for i, row in enumerate(instances):
        if not isinstance(row, dict):
            raise InvalidRequest(f"instances[{i}] must be an object of feature names to values")
    return instances


def timeout_s(payload: Any, default_s: float) -> float:
    """The request's own ``timeout_ms`` if it sent one, else ``default_s``."""
    given = payload.get("timeout_ms") if isinstance(payload, dict) else None
    if given is None:
        return default_s
    if type(given) is not int or not 1 <= given <= MAX_TIMEOUT_MS:
        raise InvalidRequest(f"timeout_ms: expected an integer from 1 to {MAX_TIMEOUT_MS}")
    return given / 1000


def is_entity_keyed(payload: Any) -> bool:
    return isinstance(payload, dict) and "entities" in payload


@dataclass(frozen=True)
class FeatureBinding:
    """Which inputs of a model come from feature views, and which the caller sends."""

    by_view: Mapping[str, tuple[str, ...]]
    """Features each view supplies, as the model names them minus the view prefix."""
    request_spec: ModelSpec
    """The model's spec restricted to the inputs the caller sends with the request."""

    @property
    def views(self) -> list[FeatureView]:
        return [VIEWS[name] for name in self.by_view]

    @property
    def entity_keys(self) -> list[str]:
        return sorted({v.entity.key for v in self.views})


def bind(spec: ModelSpec) -> FeatureBinding:
    """Raises ModelValidationError when the signature asks for features no view provides."""
    try:
        by_view, request = split_inputs(spec.feature_names)
    except ValueError as exc:
        raise ModelValidationError(str(exc)) from None
    request_inputs = tuple(f for f in spec.inputs if f.name in set(request))
    return FeatureBinding({k: tuple(v) for k, v in by_view.items()},
                          replace(spec, inputs=request_inputs, input_example=()))


ENTITY_BODY_FIELDS = frozenset({"entities", "features", "timeout_ms"})
_INT64_MAX = 2**63 - 1


def entity_ids(payload: Any, max_instances: int) -> np.ndarray:
    """The entity ids of a body whose model is not known yet (for batch-score fallbacks): each
    row must carry exactly one id, under the same key."""
    entities = body_rows(payload, "entities", ENTITY_BODY_FIELDS, max_instances)
    first = entities[0]
    if not isinstance(first, dict) or len(first) != 1:
        raise InvalidRequest("entities[0] must be an object with exactly one entity id")
    return _ids(entities, list(first))[next(iter(first))]


def entity_rows(payload: Any, binding: FeatureBinding, max_instances: int
                ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Entity ids per view, and request-time feature rows, from an entity-keyed predict body."""
    entities = body_rows(payload, "entities", ENTITY_BODY_FIELDS, max_instances)
    if not binding.by_view:
        raise InvalidRequest("this model takes no stored features: send 'instances'")
    ids = _ids(entities, binding.entity_keys)
    return ({v.name: ids[v.entity.key] for v in binding.views},
            _request_rows(payload.get("features"), len(entities), binding))


def _ids(entities: list, keys: list[str]) -> dict[str, np.ndarray]:
    ids = {key: np.empty(len(entities), dtype=np.int64) for key in keys}
    for i, row in enumerate(entities):
        if not isinstance(row, dict) or row.keys() != set(keys):
            raise InvalidRequest(f"entities[{i}] must be an object with exactly: {', '.join(keys)}")
        for key in keys:
            value = row[key]
            if type(value) is not int or not 0 <= value <= _INT64_MAX:
                raise InvalidRequest(f"entities[{i}].{key}: expected a non-negative integer id")
            ids[key][i] = value
    return ids


def _request_rows(features: Any, n: int, binding: FeatureBinding) -> list[dict[str, Any]]:
    if not binding.request_spec.inputs and features is None:
        return [{} for _ in range(n)]
    if isinstance(features, dict):  # one set of request-time values for every entity
        return [features] * n
    if isinstance(features, list) and len(features) == n:
        for i, row in enumerate(features):
            if not isinstance(row, dict):
                raise InvalidRequest(f"features[{i}] must be an object of feature names to values")
        return features
    raise InvalidRequest("'features' must be an object, or a list with one object per entity")


def merge(stored: Mapping[str, np.ndarray], request: Mapping[str, np.ndarray],
          order: Sequence[str]) -> dict[str, np.ndarray]:
    """All model inputs, in signature order."""
    both = {**stored, **request}
    return {name: both[name] for name in order}


def decode(instances: Sequence[Mapping[str, Any]], spec: ModelSpec) -> dict[str, np.ndarray]:
    """Validate rows against the model's signature and turn them into one array per feature."""
    names = spec.feature_names
    expected = frozenset(names)
    optional = frozenset(f.name for f in spec.inputs if not f.required)
    for i, row in enumerate(instances):
        if row.keys() != expected:
            _raise_key_mismatch(i, row, expected, optional)
    columns: dict[str, np.ndarray] = {}
    for feature in spec.inputs:
        values = [row.get(feature.name) for row in instances]
        columns[feature.name] = _column(values, feature.name, feature.dtype, feature.required)
    return columns


def _raise_key_mismatch(i: int, row: Mapping[str, Any], expected: frozenset[str],
                        optional: frozenset[str]) -> None:
    extra = row.keys() - expected
    if extra:
        raise UnknownFeature(f"instances[{i}]: unknown features: {_names(extra)}")
    missing = expected - row.keys() - optional
    if missing:
        raise RequestFeaturesMissing(f"instances[{i}]: missing features: {_names(missing)}")


def _column(values: list[Any], name: str, dtype: str, required: bool) -> np.ndarray:
    if len(values) == 1:  # most requests score one row: plain Python checks, one small array
        column = _one_value(values[0], dtype)
        if column is not None:
            return column
    kinds = set(map(type, values))
    if dtype == "boolean":
        if kinds <= {bool}:
            return np.array(values, dtype=np.bool_)
        raise InvalidFeatureType(_where(values, lambda v: type(v) is not bool, name, "a boolean"))
    if not kinds <= {int, float}:  # bool is not a number here, though it subclasses int
        if None in values and not required and kinds - {type(None)} <= {int, float}:
            values = [np.nan if v is None else v for v in values]
        else:
            what = "a number" if required else "a number or null"
            raise InvalidFeatureType(_where(values, lambda v: type(v) not in _NUMBER, name, what))
    try:
        column = np.array(values, dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        raise NonFiniteValue(f"{name}: a value is out of range") from None
    # JSON cannot carry NaN (parse_json refuses it), so the only NaN here is an allowed null.
    bad = np.abs(column) > _F32_MAX
    if bad.any():
        row = int(np.argmax(bad))
        raise NonFiniteValue(f"instances[{row}].{name}: must be a finite number within ±3.4e38")
    if dtype in ("long", "integer"):
        with np.errstate(invalid="ignore"):
            fractional = np.isfinite(column) & (column != np.round(column))
        if fractional.any():
            raise InvalidFeatureType(f"instances[{int(np.argmax(fractional))}].{name}: expected an integer")
        limits = np.iinfo(NUMPY_DTYPES[dtype])
        outside = (column < limits.min) | (column > limits.max)
        if outside.any():
            raise NonFiniteValue(f"instances[{int(np.argmax(outside))}].{name}: out of range for a {dtype} input")
        if np.isnan(column).any():  # an allowed null: integers cannot hold it
            return column
    # The signature's own dtype: schema-enforcing runtimes (mlflow.pyfunc) refuse anything else.
    return column.astype(NUMPY_DTYPES[dtype], copy=False)


_EXACT_INT = 2**53  # integers a float64 holds exactly: beyond, the general path decides


def _one_value(value: Any, dtype: str) -> np.ndarray | None:
    """A one-row column for a value that is plainly valid, else None (the general path then
    validates it and says exactly what is wrong)."""
    kind = type(value)
    if dtype == "boolean":
        return np.array([value], dtype=np.bool_) if kind is bool else None
    if kind is float:
        if not -_F32_MAX <= value <= _F32_MAX:
            return None
        if dtype in ("long", "integer") and not value.is_integer():
            return None
    elif kind is not int or not -_EXACT_INT < value < _EXACT_INT:
        return None
    try:
        return np.array([value], dtype=NUMPY_DTYPES[dtype])
    except OverflowError:  # beyond a 32-bit input's range
        return None


def _where(values: list[Any], is_bad: Any, name: str, what: str) -> str:
    row = next(i for i, v in enumerate(values) if is_bad(v))
    got = "null" if values[row] is None else _json_kind(values[row])
    return f"instances[{row}].{name}: expected {what}, got {got}"


def _json_kind(value: Any) -> str:
    return {bool: "boolean", str: "string", list: "array", dict: "object",
            int: "number", float: "number"}.get(type(value), "a value")


def _names(names: Any) -> str:
    ordered = sorted(str(n)[:64] for n in names)
    shown = ", ".join(ordered[:_MAX_NAMES_SHOWN])
    more = len(ordered) - _MAX_NAMES_SHOWN
    return shown + (f" (and {more} more)" if more > 0 else "")


def concat(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Several decoded requests as one batch (for ``@serve.batch``)."""
    if len(batches) == 1:
        return dict(batches[0])
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def split(outputs: Mapping[str, np.ndarray], sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """The inverse of :func:`concat` on the model's outputs."""
    if len(sizes) == 1:
        return [dict(outputs)]
    bounds = np.cumsum(sizes)[:-1]
    parts = {name: np.split(np.asarray(arr), bounds) for name, arr in outputs.items()}
    return [{name: parts[name][i] for name in outputs} for i in range(len(sizes))]


def encode(outputs: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Model outputs as one JSON-ready dict per row.

    A classifier (outputs ``label`` and ``probabilities``) gives ``label`` plus, when binary,
    ``probability`` of the positive class, else the list of class ``probabilities``. Any other
    model gives each output under its own name.
    """
    if "label" in outputs and "probabilities" in outputs:
        labels = np.asarray(outputs["label"]).tolist()
        probs = np.asarray(outputs["probabilities"], dtype=np.float64)
        if probs.ndim == 2 and probs.shape[1] == 2:
            return [{"label": lab, "probability": p} for lab, p in zip(labels, probs[:, 1].tolist())]
        return [{"label": lab, "probabilities": p} for lab, p in zip(labels, probs.tolist())]
    columns = {name: np.asarray(arr).tolist() for name, arr in outputs.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    return [{name: col[i] for name, col in columns.items()} for i in range(n)]


SCALAR_SCORE_NAMES = ("probability", "score", "prediction")


def score_of(prediction: Mapping[str, Any]) -> float | None:
    """The row's scalar score (``probability``, else ``score``, else ``prediction``, else the
    first real-valued output): what canary analysis and shadow comparison look at."""
    for name in SCALAR_SCORE_NAMES:
        value = prediction.get(name)
        if isinstance(value, _NUMBER) and not isinstance(value, bool):
            return float(value)
    for value in prediction.values():
        if isinstance(value, float):
            return value
    return None
