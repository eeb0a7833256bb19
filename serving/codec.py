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
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import orjson

from features_online import layout
from features_online.definitions import Entity, EntityKey, FeatureView, split_inputs
from serving.errors import (
    InvalidFeatureType,
    InvalidRequest,
    MalformedJson,
    ModelValidationError,
    NestingTooDeep,
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


def is_json_media(content_type: bytes | None) -> bool:
    """Whether a Content-Type names JSON (``application/json`` or ``*+json``); no header counts."""
    if content_type is None:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def parse_json(body: bytes) -> Any:
    """Parse a request body; NaN/Infinity literals and too deep nesting get their own errors,
    not 'malformed'.

    Depth: orjson refuses bodies nested deeper than its fixed limit (1024) in C, without
    recursing in Python; below it, the codec type-checks every item and value, so nothing nested
    deeper than the envelope (object > list > row object > value) is ever accepted or walked.
    A depth walk of every body would repeat those checks on the hot path for no gain.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise NestingTooDeep() from None
    if b"NaN" not in body and b"Infinity" not in body:
        raise MalformedJson()
    try:  # the stdlib parser accepts NaN/Infinity: if it succeeds, those literals were the cause
        json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # it recurses: deep bodies end here
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
    views: tuple[FeatureView, ...] = ()
    """The views named in ``by_view``, as defined when the binding was made."""
    stored_dtypes: Mapping[str, Any] = field(default_factory=dict)
    """The numpy dtype the model's signature gives each stored input (``<view>__<feature>``)."""

    @property
    def entities(self) -> tuple[Entity, ...]:
        """The entities whose keys a request row carries, in view order, each once."""
        seen: dict[str, Entity] = {}
        for view in self.views:
            seen.setdefault(view.entity.name, view.entity)
        return tuple(seen.values())

    @property
    def key_columns(self) -> tuple[EntityKey, ...]:
        return tuple(key for entity in self.entities for key in entity.keys)


def bind(spec: ModelSpec, views: Mapping[str, FeatureView]) -> FeatureBinding:
    """The model's inputs against the online ``views`` (newest definitions by name).

    Raises ModelValidationError when the signature asks for features no view provides."""
    try:
        by_view, request = split_inputs(spec.feature_names, views)
    except ValueError as exc:
        raise ModelValidationError(str(exc)) from None
    request_inputs = tuple(f for f in spec.inputs if f.name in set(request))
    stored = {f.name: NUMPY_DTYPES[f.dtype] for f in spec.inputs if f.name not in set(request)}
    return FeatureBinding({k: tuple(v) for k, v in by_view.items()},
                          replace(spec, inputs=request_inputs, input_example=()),
                          tuple(views[name] for name in by_view), stored)


ENTITY_BODY_FIELDS = frozenset({"entities", "features", "timeout_ms"})


class EntityRows:
    """The entity keys of a request's rows, validated: each entity's row keys on demand."""

    def __init__(self, columns: Mapping[str, list], n: int) -> None:
        self.columns = columns
        self.n = n
        self._keys: dict[str, layout.RowKeys] = {}

    def keys(self, entity: Entity) -> layout.RowKeys:
        """The rows' keys of ``entity``: int64 ids for a single ``int64`` key, else encoded fields."""
        found = self._keys.get(entity.name)
        if found is None:
            if entity.is_int:
                found = np.array(self.columns[entity.keys[0].name], dtype=np.int64)
            else:
                found = layout.encode_fields(entity, self.columns)
            self._keys[entity.name] = found
        return found


def entity_keys(payload: Any, keys: Sequence[EntityKey], max_instances: int) -> EntityRows:
    """The entity keys of a body whose model is not loaded yet (for batch-score fallbacks)."""
    entities = body_rows(payload, "entities", ENTITY_BODY_FIELDS, max_instances)
    return EntityRows(_key_columns(entities, keys), len(entities))


def entity_rows(payload: Any, binding: FeatureBinding, max_instances: int
                ) -> tuple[EntityRows, list[dict[str, Any]]]:
    """Entity keys and request-time feature rows from an entity-keyed predict body."""
    entities = body_rows(payload, "entities", ENTITY_BODY_FIELDS, max_instances)
    if not binding.by_view:
        raise InvalidRequest("this model takes no stored features: send 'instances'")
    rows = EntityRows(_key_columns(entities, binding.key_columns), len(entities))
    return rows, _request_rows(payload.get("features"), len(entities), binding)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _key_columns(entities: list, keys: Sequence[EntityKey]) -> dict[str, list]:
    """Each key column's values; every row must carry exactly ``keys``, each of its type.

    A string key is any printable text of 1 to ``max_length`` UTF-8 bytes: it becomes a Redis
    hash field as bulk bytes (never part of a key name or a command), so no value can change
    which key or slot is read."""
    names = [k.name for k in keys]
    wanted = set(names)
    columns: dict[str, list] = {name: [] for name in names}
    for i, row in enumerate(entities):
        if not isinstance(row, dict) or row.keys() != wanted:
            raise InvalidRequest(f"entities[{i}] must be an object with exactly: {', '.join(names)}")
        for key in keys:
            value = row[key.name]
            if key.type == "int64":
                if type(value) is not int or not _INT64_MIN <= value <= _INT64_MAX:
                    raise InvalidRequest(f"entities[{i}].{key.name}: expected an integer id (int64)")
            elif type(value) is not str or not _valid_text(value, key.max_length):
                raise InvalidRequest(f"entities[{i}].{key.name}: expected a string id of 1 to "
                                     f"{key.max_length} bytes of printable UTF-8 text")
            columns[key.name].append(value)
    return columns


def _valid_text(value: str, max_length: int) -> bool:
    if not value or len(value) > max_length or not value.isprintable():
        return False
    try:
        return len(value.encode()) <= max_length
    except UnicodeEncodeError:  # a lone surrogate (JSON's \ud800)
        return False


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
        # float(2**63 - 1) rounds up to 2**63: compare against the first value past the range
        outside = (column < limits.min) | (column >= float(limits.max) + 1)
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
