"""What every protocol codec shares: the shape of a codec, the model's inputs it maps onto, and
the translation of named columns into the pipeline's one payload (``instances``, or ``entities``
with ``features`` when the caller sends a model's entity keys).

A codec turns its protocol's request into that payload and the pipeline's answer back into its
protocol's response; routing, features, fallbacks, auth and metrics stay in the pipeline and the
route, so no protocol has a pipeline of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

from features_online.definitions import EntityKey
from serving.errors import InvalidRequest, MlgateError, TooManyInstances, VersionNotServed
from serving.models import ModelTable
from serving.routing import CHAMPION
from serving.runtime.base import FeatureSpec
from serving.schemas import MAX_TIMEOUT_MS

Headers = list[tuple[bytes, bytes]]
# Answer fields that describe a row rather than carry a model output.
ROW_FACTS = frozenset({"source", "model_version", "fallback_reason", "score_age_s", "features"})


@dataclass(frozen=True)
class ModelInputs:
    """What a caller may send a model: its entities' key columns and its request-time inputs
    (None while no version is loaded: then only named columns can be mapped)."""

    keys: tuple[EntityKey, ...]
    request: tuple[FeatureSpec, ...] | None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys) + tuple(f.name for f in self.request or ())


@dataclass
class Decoded:
    """A protocol request as the pipeline takes it, and what its answer must remember."""

    payload: dict[str, Any]
    context: Any = None
    version: str | None = None
    """A version the caller's path names (``/v2/models/m/versions/v``), else None."""


class ProtocolCodec(Protocol):
    name: str
    """The ``protocol`` label of its metrics."""

    def accepts(self, headers: Mapping[bytes, bytes]) -> bool:
        """Whether the body's media type is one this protocol reads."""

    def decode(self, raw: bytes, headers: Mapping[bytes, bytes], inputs: ModelInputs,
               max_rows: int) -> Decoded: ...

    def encode(self, result: dict[str, Any], decoded: Decoded, disclose: bool) -> tuple[bytes, Headers]:
        """The response body and its headers (content type included)."""

    def error(self, exc: MlgateError, rid: str) -> bytes:
        """The JSON error body in the protocol's shape (status and headers are the error's own)."""


def payload_of(columns: Mapping[str, Sequence[Any]], rows: int, inputs: ModelInputs,
               timeout_ms: int | None = None) -> dict[str, Any]:
    """Named columns of ``rows`` values as the pipeline's payload: entity-keyed when every key
    column of the model's entities is among them (the rest are request-time features), else
    plain instances (the pipeline then checks every name against the model's signature)."""
    if rows == 0:
        raise InvalidRequest("the request holds no rows")
    names = list(columns)
    key_names = [k.name for k in inputs.keys]
    if key_names and all(k in columns for k in key_names):
        keys = [dict(zip(key_names, values)) for values in zip(*(columns[k] for k in key_names))]
        rest = [n for n in names if n not in key_names]
        payload: dict[str, Any] = {"entities": keys}
        if rest:
            payload["features"] = [dict(zip(rest, values)) for values in zip(*(columns[n] for n in rest))]
    else:
        payload = {"instances": [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))]}
    if timeout_ms is not None:
        payload["timeout_ms"] = timeout_ms
    return payload


def check_rows(rows: int, max_rows: int) -> None:
    if rows > max_rows:
        raise TooManyInstances(f"{rows} rows sent, at most {max_rows} allowed")


def timeout_ms_of(value: Any, scale: float, what: str) -> int | None:
    """A protocol's own timeout parameter (``value`` in units of ``scale`` ms) as the pipeline's
    ``timeout_ms`` (at least 1, at most the pipeline's limit)."""
    if value is None:
        return None
    if type(value) not in (int, float) or not value > 0:
        raise InvalidRequest(f"{what}: expected a positive number")
    return int(min(max(value * scale, 1), MAX_TIMEOUT_MS))


def answer_columns(predictions: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """The model's outputs of every answered row, one list per output name (row facts such as
    ``source`` left out), in the first row's order."""
    if not predictions:
        return {}
    names = [k for k in predictions[0] if k not in ROW_FACTS]
    return {name: [p.get(name) for p in predictions] for name in names}


def pinned_variant(models: ModelTable, name: str, version: str, trusted: bool) -> str:
    """The variant serving ``version`` that a caller may pin by path: any for trusted (``route``)
    callers, else only the champion's (pinning is no way to reach the canary or learn of it)."""
    for variant, state in models.variants(name).items():
        if state.version == version and (variant == CHAMPION or trusted):
            return variant
    raise VersionNotServed(f"model {name!r} has no version {version[:32]!r} serving")
