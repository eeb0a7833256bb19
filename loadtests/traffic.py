"""What the load test sends and how it reads the answers, in plain Python (no Locust import, so
unit tests can use it without gevent's monkey patching).

- :class:`Population`: customer ids 1..N with a skewed, Zipf-like popularity.
- :func:`transaction`: plausible request-time features of one card transaction.
- :func:`invalid_request`: a deliberately wrong body and the 4xx answer the gateway owes it.
- :func:`classify`: where a prediction row's stored features came from (store, default, fallback).
- :func:`shape_users`: how many users a ramp/steady/spike load shape wants at a given second.
"""

from __future__ import annotations

import bisect
import itertools
import random
from typing import Any

# The request-time inputs of the demo model; must equal REQUEST_NAMES in examples/fraud/train.py
# (a unit test checks it). The load test talks HTTP only and imports nothing from the gateway.
REQUEST_FEATURES = ("amount", "hour_of_day", "day_of_week", "merchant_category", "merchant_risk",
                    "is_online", "is_foreign", "distance_from_home_km", "card_age_days")

INVALID_PREFIX = "invalid: "
"""Request-name prefix of invalid-by-design requests; kept out of valid-traffic latency and errors."""

SHAPES = ("steady", "ramp", "spike")

# Purchases are daytime-heavy: relative weight of each hour 0..23.
_HOUR_WEIGHTS = (1, 1, 1, 1, 1, 2, 3, 5, 7, 8, 8, 8, 9, 8, 8, 8, 8, 8, 8, 7, 6, 4, 3, 2)
_HOUR_CUMULATIVE = tuple(itertools.accumulate(_HOUR_WEIGHTS))


class Population:
    """Customer ids 1..``size``; the k-th most popular one is drawn with weight 1/k**s.

    With s=1 (classic Zipf) over 100,000 customers the top 1% get about 60% of the requests. Ranks are
    shuffled over the ids (seeded) so hot customers are spread across the key space, as real ones
    are, rather than being ids 1, 2, 3, ...
    """

    def __init__(self, size: int, s: float = 1.0, seed: int = 7) -> None:
        if size < 1:
            raise ValueError("the population needs at least one customer")
        self.size = size
        self._cdf = list(itertools.accumulate(1.0 / k ** s for k in range(1, size + 1)))
        self._ids = list(range(1, size + 1))
        random.Random(seed).shuffle(self._ids)

    def draw(self, rng: random.Random) -> int:
        rank = bisect.bisect_left(self._cdf, rng.random() * self._cdf[-1])
        return self._ids[min(rank, self.size - 1)]  # min(): guards float rounding at the top end

    def top_share(self, fraction: float) -> float:
        """Share of draws that land on the most popular ``fraction`` of customers."""
        k = max(1, int(self.size * fraction))
        return self._cdf[k - 1] / self._cdf[-1]


def transaction(rng: random.Random) -> dict[str, Any]:
    """Request-time features of one plausible card transaction (ints where the model takes longs)."""
    online = rng.random() < 0.3
    return {
        "amount": round(rng.lognormvariate(3.3, 0.9), 2),  # median ~27, long right tail
        "hour_of_day": rng.choices(range(24), cum_weights=_HOUR_CUMULATIVE)[0],
        "day_of_week": rng.randrange(7),
        "merchant_category": rng.randrange(12),
        "merchant_risk": round(rng.betavariate(1.2, 8.0), 4),
        "is_online": int(online),
        "is_foreign": int(rng.random() < 0.05),
        # Online purchases have no distance; in person mostly near home, sometimes far away.
        "distance_from_home_km": 0.0 if online else round(min(rng.lognormvariate(1.5, 1.2), 5000.0), 3),
        "card_age_days": rng.randint(1, 3650),
    }


def predict_body(rng: random.Random, population: Population, n: int) -> dict[str, Any]:
    """An entity-keyed predict body for ``n`` customers: one feature object, or one per entity."""
    entities = [{"customer_id": population.draw(rng)} for _ in range(n)]
    if n == 1:
        return {"entities": entities, "features": transaction(rng)}
    return {"entities": entities, "features": [transaction(rng) for _ in range(n)]}


def _set(key: str, value: Any):
    def change(body: dict) -> None:
        body["features"][key] = value
    return change


def _drop_amount(body: dict) -> None:
    del body["features"]["amount"]


def _text_id(body: dict) -> None:
    body["entities"][0]["customer_id"] = "seven"  # the view's key is int64


# (expected status, expected error code, how a valid one-entity body is spoiled)
INVALID_KINDS: tuple[tuple[int, str, Any], ...] = (
    (400, "unknown_feature", _set("favourite_colour", 3)),
    (400, "invalid_feature_type", _set("hour_of_day", "noon")),
    (400, "non_finite_value", _set("amount", 1e39)),  # beyond float32 range
    (400, "invalid_request", _text_id),
    (422, "missing_features", _drop_amount),
    (400, "malformed_json", None),  # the body is cut short instead
)


def invalid_request(rng: random.Random, body: dict[str, Any],
                    dumps=None) -> tuple[int, str, bytes]:
    """Spoil a valid one-entity ``body`` in a random way: (expected status, expected code, bytes)."""
    import json

    dumps = dumps or (lambda obj: json.dumps(obj).encode())
    status, code, spoil = rng.choice(INVALID_KINDS)
    if spoil is None:
        raw = dumps(body)
        return status, code, raw[: len(raw) // 2]
    spoil(body)
    return status, code, dumps(body)


def classify(prediction: dict[str, Any]) -> str:
    """``fallback`` if the row was answered from batch fallback scores (``"source":
    "batch_fallback"``, on the row or a feature view), ``default`` if any view served default
    values (entity missing, or stale under the default policy), else ``store``."""
    origins = prediction.get("features")
    views = [o for o in origins.values() if isinstance(o, dict)] if isinstance(origins, dict) else []
    sources = {prediction.get("source")} | {v.get("source") for v in views}
    if "batch_fallback" in sources:
        return "fallback"
    if any(v.get("source") == "default" or v.get("status") == "missing" for v in views):
        return "default"
    return "store"


def shape_users(shape: str, t: float, total: float, users: int) -> int:
    """Users wanted ``t`` seconds into a run of ``total`` seconds peaking at ``users``.

    steady: all of them throughout. ramp: from 1 up to all over the first 80%, then hold.
    spike: a quarter of them, all of them for the middle fifth of the run, then a quarter again.
    """
    if shape == "steady":
        return users
    if shape == "ramp":
        return max(1, min(users, round(users * t / (0.8 * total)))) if total > 0 else users
    if shape == "spike":
        base = max(1, users // 4)
        return users if 0.4 * total <= t < 0.6 * total else base
    raise ValueError(f"unknown load shape {shape!r}; choose one of {', '.join(SHAPES)}")
