"""What the online store holds, as the code sees it: entities, feature views, the score view.

Nothing here names a user's data: a feature repository (:mod:`features_online.repository`, YAML
the user owns) is compiled into these objects. The same objects drive the Spark jobs (which
columns to compute and their defaults), the Redis layout and value encoding
(:mod:`features_online.layout`), the online reader, and the model signature check: a model
input named ``<view>__<feature>`` must be a feature of that view, and any other input is a
request-time value the caller sends.

A view's schema ``version`` is derived from what its stored bytes depend on (entity keys and
their types, feature names and dtypes in order, buckets, the value format): a change to any of
them makes a new version, stored under new keys beside the old one, which keeps serving until the
new one has been synced. Changes that alter only values (a window, a default, the source) keep
the version and show in ``definition_digest``: the next sync replaces the values.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, Mapping

SEPARATOR = "__"  # model input "<view>__<feature>" = feature of a view
FORMAT = 2
"""The value format (see layout.py); part of every view's schema version."""

KeyType = Literal["int64", "string"]
Dtype = Literal["double", "float", "long", "int", "bool"]
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class EntityKey:
    name: str
    """Request field and table column holding this part of the entity's key."""
    type: KeyType = "int64"
    max_length: int = 128
    """Longest ``string`` key accepted, in UTF-8 bytes (longer ones get 400)."""


@dataclass(frozen=True)
class Entity:
    name: str
    keys: tuple[EntityKey, ...]
    """One key column, or several (a composite key: every one of them in every request row)."""
    description: str = ""

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    @property
    def is_int(self) -> bool:
        """A single int64 key: the fast path of the layout (decimal fields, bucket = id mod n)."""
        return len(self.keys) == 1 and self.keys[0].type == "int64"


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: Dtype
    default: float | int | bool
    """Served when the entity has no value (never seen, or stale under the ``default`` policy)."""
    description: str = ""


OnMissing = Literal["default", "fallback", "error"]


@dataclass(frozen=True)
class FeatureView:
    name: str
    entity: Entity
    features: tuple[Feature, ...]
    ttl: timedelta
    """Maximum age of a served value; older values count as stale."""
    description: str = ""
    buckets: int = 64
    """Redis hashes one data version is spread over (see features_online/layout.py)."""
    online: bool = True
    """Synced to Redis and served; off: offline (training sets) only."""
    on_missing: OnMissing | None = None
    """What a never-seen entity gets: the defaults (marked ``missing``), the model's batch score,
    or a 422. None: the gateway's ``features.on_missing``."""
    on_stale: OnMissing | None = None
    """Same for a value older than ``ttl``. None: the gateway's ``features.on_stale``."""
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    """How the offline jobs compute it (source, aggregations or transformation), as the
    repository wrote it; the online path never reads it."""

    def qualified(self, feature: str) -> str:
        return f"{self.name}{SEPARATOR}{feature}"

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)

    @property
    def version(self) -> str:
        """The schema version: changes whenever the stored bytes or keys would change."""
        return _version(self)

    @property
    def fingerprint(self) -> str:
        """Written into the meta hash by a sync; a reader serves only data whose fingerprint is
        its own. The schema version is already a digest of the layout: they are one value."""
        return self.version

    @property
    def definition_digest(self) -> str:
        """Changes when anything of the definition changes, values-only changes included."""
        text = json.dumps({"version": self.version, "ttl": self.ttl.total_seconds(), "online": self.online,
                           "defaults": [f.default for f in self.features], "spec": self.spec,
                           "policy": [self.on_missing, self.on_stale]}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@functools.cache  # views are immutable and long-lived: one digest each
def _version(view: FeatureView) -> str:
    layout = {"format": FORMAT, "view": view.name, "buckets": view.buckets,
              "keys": [[k.name, k.type] for k in view.entity.keys],
              "features": [[f.name, f.dtype] for f in view.features]}
    return hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()[:8]


# -- the score view: where a model's precomputed batch scores live (a Redis contract too) --------
#
# Batch scores are written and read with the feature machinery (versioned data, verified atomic
# flip, retirement; see layout.py): the view is named ``score.<model>``, keyed by the model's
# entities (all their key columns), and its features are the score's fields. The meta hash of
# each version carries the model version that produced the scores (``x_model_version``) and the
# names the model gives its outputs (``x_outputs``: ``label,probability`` for a classifier,
# ``prediction`` for a regressor). The gateway can look scores up before the model itself has
# loaded: it needs only the model's entities, which the repository declares.

SCORE_FIELDS = (Feature("label", "long", 0), Feature("score", "double", float("nan")))
"""What a batch score stores per entity: a classifier's label and positive-class probability, or
a regressor's prediction in ``score`` (label 0)."""


CLASSIFIER_OUTPUTS = "label,probability"
"""The ``outputs`` fact of a classifier's scores: ``label`` is its label, ``score`` the
positive-class probability, served as ``label`` and ``probability``."""
REGRESSOR_OUTPUTS = "prediction"
"""The ``outputs`` fact of a regressor's scores: ``score`` is the prediction, served as
``prediction``."""


def scored_entity(model: str, entities: tuple[Entity, ...]) -> Entity:
    """The entity a model's batch scores are keyed by: every key column of its entities."""
    keys: list[EntityKey] = []
    for entity in entities:
        keys += [k for k in entity.keys if k.name not in {have.name for have in keys}]
    return Entity(name=f"scored.{model}", keys=tuple(keys))


def score_view(model: str, entities: tuple[Entity, ...], max_age: timedelta) -> FeatureView:
    """The batch-score view of ``model``. ``max_age`` (its TTL) is the oldest score served."""
    return FeatureView(name=f"score.{model}", entity=scored_entity(model, entities), features=SCORE_FIELDS,
                       ttl=max_age, description=f"precomputed scores of {model}", buckets=64)


def split_inputs(names: tuple[str, ...] | list[str], views: Mapping[str, FeatureView]
                 ) -> tuple[dict[str, list[str]], list[str]]:
    """A model's inputs as {view: [feature, ...]} (in input order) and request-time names.

    Raises ValueError naming the inputs that look like view features but no online view provides.
    """
    by_view: dict[str, list[str]] = {}
    request: list[str] = []
    unknown: list[str] = []
    for name in names:
        if SEPARATOR not in name:
            request.append(name)
            continue
        view_name, feature = name.split(SEPARATOR, 1)
        view = views.get(view_name)
        if view is None or not view.online or feature not in view.feature_names:
            unknown.append(name)
        else:
            by_view.setdefault(view_name, []).append(feature)
    if unknown:
        raise ValueError(f"no online feature view provides {', '.join(sorted(unknown)[:5])}"
                         + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""))
    return by_view, request
