"""Which inputs of a model come from feature views, and how a row's inputs are assembled.

Plain Python and numpy: the pipeline reads the online store, these functions decide what each row
gets (stored values, defaults, or an error) and record where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from features_online.definitions import VIEWS, FeatureView, split_inputs
from features_online.reader import ViewRead
from observability.metrics import GatewayMetrics
from serving.codec import body_rows
from serving.errors import FeaturesMissing, FeaturesStale, InvalidRequest, ModelValidationError
from serving.runtime.base import ModelSpec
from serving.settings import FeatureSettings

_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class FeatureBinding:
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


def _entities(payload: Mapping[str, Any], max_instances: int) -> list:
    return body_rows(payload, "entities", ENTITY_BODY_FIELDS, max_instances)


def entity_ids(payload: Mapping[str, Any], max_instances: int) -> np.ndarray:
    """The entity ids of a body whose model is not known yet (for batch-score fallbacks): each
    row must carry exactly one id, under the same key."""
    entities = _entities(payload, max_instances)
    first = entities[0]
    if not isinstance(first, dict) or len(first) != 1:
        raise InvalidRequest("entities[0] must be an object with exactly one entity id")
    return _ids(entities, list(first))[next(iter(first))]


def entity_rows(payload: Mapping[str, Any], binding: FeatureBinding, max_instances: int
                ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Entity ids per view, and request-time feature rows, from an entity-keyed predict body."""
    entities = _entities(payload, max_instances)
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
        return features
    raise InvalidRequest("'features' must be an object, or a list with one object per entity")


def assemble(binding: FeatureBinding, reads: Mapping[str, ViewRead], settings: FeatureSettings,
             metrics: GatewayMetrics) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], dict[int, str]]:
    """Model input columns from stored values (or defaults, by policy), per-row provenance, and
    the rows the policy sends to the batch-score fallback (row -> reason)."""
    columns: dict[str, np.ndarray] = {}
    n = len(next(iter(reads.values())).present)
    provenance: list[dict[str, Any]] = [{} for _ in range(n)]
    fallback: dict[int, str] = {}
    for name, features in binding.by_view.items():
        read = reads[name]
        view = read.view
        missing, stale = ~read.present, read.stale
        _enforce(view, missing, stale, settings)
        for reason, mask, policy in (("features_missing", missing, settings.on_missing),
                                     ("features_stale", stale, settings.on_stale)):
            if policy == "fallback":
                for row in np.flatnonzero(mask).tolist():
                    fallback.setdefault(row, reason)
        use_default = missing | (stale if settings.on_stale == "default" else np.zeros(n, bool))
        any_default = bool(use_default.any())
        for feature in view.features:
            if feature.name in features:
                values = read.records[feature.name]
                if any_default:
                    values = np.where(use_default, feature.default, values)
                # In the view's dtype, which is the signature's: schema-enforcing runtimes check it.
                columns[view.qualified(feature.name)] = values.astype(
                    np.int64 if feature.dtype == "long" else np.float64, copy=False)
        for i in range(n):
            provenance[i][name] = _origin(bool(missing[i]), bool(stale[i]), bool(use_default[i]),
                                          float(read.age_s[i]))
        fresh = int(n - missing.sum() - stale.sum())
        for status, count in (("fresh", fresh), ("stale", int(stale.sum())), ("missing", int(missing.sum()))):
            if count:
                metrics.child(metrics.feature_rows, name, status).inc(count)
    return columns, provenance, fallback


def _enforce(view: FeatureView, missing: np.ndarray, stale: np.ndarray, settings: FeatureSettings) -> None:
    if settings.on_missing == "error" and missing.any():
        raise FeaturesMissing(f"entities[{int(np.argmax(missing))}]: no {view.name} features stored")
    if settings.on_stale == "error" and stale.any():
        raise FeaturesStale(f"entities[{int(np.argmax(stale))}]: {view.name} features older than "
                            f"{int(view.ttl.total_seconds())}s")


def _origin(missing: bool, stale: bool, default: bool, age_s: float) -> dict[str, Any]:
    if missing:
        return {"source": "default", "status": "missing"}
    origin = {"source": "default" if default else "online_store",
              "status": "stale" if stale else "fresh", "age_s": round(age_s, 3)}
    return origin


def merge(stored: Mapping[str, np.ndarray], request: Mapping[str, np.ndarray],
          order: Sequence[str]) -> dict[str, np.ndarray]:
    """All model inputs, in signature order."""
    both = {**stored, **request}
    return {name: both[name] for name in order}
