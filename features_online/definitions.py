"""Feature definitions: the one declarative place.

The same objects drive the Spark feature job (which columns to compute and their defaults), the
Redis layout and value encoding (:mod:`features_online.layout`), the online reader, and the model
signature check: a model input named ``<view>__<feature>`` must be a feature of that view, and
any other input is a request-time value the caller sends.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

SEPARATOR = "__"  # model input "customer_activity__txn_count_7d" = view feature


@dataclass(frozen=True)
class Entity:
    name: str
    key: str
    """Request field and table column that identifies the entity (an integer id)."""


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: Literal["double", "long"]
    default: float
    """Served when the entity has no value (never seen, or stale under the default policy)."""
    description: str = ""


@dataclass(frozen=True)
class FeatureView:
    name: str
    version: int
    """Schema version: bump it when features change; it is part of every Redis key."""
    entity: Entity
    features: tuple[Feature, ...]
    ttl: timedelta
    """Maximum age of a served value; older values count as stale."""
    description: str = ""
    buckets: int = 64
    """Redis hashes one data version is spread over (see features_online/layout.py)."""

    def qualified(self, feature: str) -> str:
        return f"{self.name}{SEPARATOR}{feature}"

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def fingerprint(self) -> str:
        """Changes whenever anything the byte layout depends on changes."""
        text = f"{self.name}:{self.version}:{self.buckets}:" + ",".join(f"{f.name}:{f.dtype}" for f in self.features)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- the score view: where a model's precomputed batch scores live (a Redis contract too) --------
#
# Batch scores are written and read with the feature machinery (versioned data, verified atomic
# flip, retirement; see layout.py): the view is named ``score.<model>``, keyed by the id of the
# entity the scores are for, and its features are the score's fields. The meta hash of each
# version carries the model version that produced the scores (``x_model_version``). The gateway
# can look scores up before the model itself has loaded: it needs only the model name and the
# entity id of the request.

SCORE_FIELDS = (Feature("label", "long", 0), Feature("probability", "double", float("nan")))
"""What a batch score stores per entity."""
SCORED_ENTITY = Entity(name="scored_entity", key="entity_id")


def score_view(model: str, max_age: timedelta) -> FeatureView:
    """The batch-score view of ``model``. ``max_age`` (its TTL) is the oldest score served."""
    return FeatureView(name=f"score.{model}", version=1, entity=SCORED_ENTITY, features=SCORE_FIELDS,
                       ttl=max_age, description=f"precomputed scores of {model}")


CUSTOMER = Entity(name="customer", key="customer_id")

_WINDOWS = (1, 7, 30)

CUSTOMER_ACTIVITY = FeatureView(
    name="customer_activity",
    version=1,
    entity=CUSTOMER,
    ttl=timedelta(days=2),
    description="Card activity of a customer over the last 1, 7 and 30 days, as of the build time.",
    features=(
        *(Feature(f"txn_count_{d}d", "long", 0, f"transactions in the last {d} days") for d in _WINDOWS),
        *(Feature(f"amount_sum_{d}d", "double", 0.0, f"amount spent in the last {d} days") for d in _WINDOWS),
        Feature("amount_mean_30d", "double", 0.0, "mean transaction amount, 30 days"),
        Feature("amount_max_30d", "double", 0.0, "largest transaction amount, 30 days"),
        Feature("distinct_merchants_30d", "long", 0, "distinct merchants, 30 days"),
        Feature("foreign_share_30d", "double", 0.0, "share of foreign transactions, 30 days"),
        Feature("online_share_30d", "double", 0.0, "share of online transactions, 30 days"),
        Feature("seconds_since_last_txn", "double", 30 * 86_400.0,
                "seconds from the last transaction to the build time (30 days if none)"),
    ),
)

VIEWS: dict[str, FeatureView] = {v.name: v for v in (CUSTOMER_ACTIVITY,)}


def split_inputs(names: tuple[str, ...] | list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """A model's inputs as {view: [feature, ...]} (in input order) and request-time names.

    Raises ValueError naming the inputs that look like view features but no view provides.
    """
    by_view: dict[str, list[str]] = {}
    request: list[str] = []
    unknown: list[str] = []
    for name in names:
        if SEPARATOR not in name:
            request.append(name)
            continue
        view_name, feature = name.split(SEPARATOR, 1)
        view = VIEWS.get(view_name)
        if view is None or feature not in view.feature_names:
            unknown.append(name)
        else:
            by_view.setdefault(view_name, []).append(feature)
    if unknown:
        raise ValueError(f"no feature view provides {', '.join(unknown)}")
    return by_view, request
