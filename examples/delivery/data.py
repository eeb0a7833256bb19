"""A seeded generator of food deliveries whose duration a model can learn.

Couriers (string ids, UUID-like) ride bikes, scooters or cars and have their own pace in minutes
per km; restaurants (string ids) have their own preparation time. A delivery's duration is the
restaurant's preparation (longer at lunch and dinner rush) plus the ride (distance times the
courier's pace, slower in rush-hour traffic) plus a hand-off, with noise. Nothing in the label is
readable from one column: the model needs the courier's recent pace, the restaurant's recent
preparation times (both from the feature views), the distance and the hour (request-time).

Tables (Parquet under ``<folder>``):

- ``deliveries``: one row per delivery, ``ordered_at`` (when the order came in) and
  ``delivered_at`` (when it was handed over: the event time of the feature views, since a
  delivery's duration is known only then), the two keys, ``distance_km``, ``prep_minutes``,
  ``travel_minutes`` and the label ``eta_minutes``.
- ``couriers``: one profile row per courier (``vehicle``, ``joined_days_ago``) with the time it
  was recorded (``updated_at``): the source of a non-aggregated view.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

VEHICLES = ("bike", "scooter", "car")
PACE = {"bike": 3.6, "scooter": 2.6, "car": 2.9}
"""Typical minutes per km of each vehicle in free traffic (cars lose time parking)."""
LATE_MINUTES = 40.0
"""A delivery slower than this counts as late (the ``is_late`` column)."""


@dataclass(frozen=True)
class DeliveryData:
    couriers: pd.DataFrame
    restaurants: pd.DataFrame
    deliveries: pd.DataFrame


def _ids(rng: np.random.Generator, prefix: str, n: int) -> list[str]:
    """``n`` distinct UUID-like ids (seeded, so two runs agree): ``c-1f3a9e0c-...``."""
    return [f"{prefix}-{uuid.UUID(bytes=rng.bytes(16), version=4)}" for _ in range(n)]


def rush(hour: np.ndarray) -> np.ndarray:
    """1 at the lunch (12-13 h) and dinner (19-20 h) peaks, fading to 0 two hours away."""
    hour = np.asarray(hour, dtype=np.float64)
    return np.maximum(0.0, 1 - np.minimum(np.abs(hour - 12.5), np.abs(hour - 19.5)) / 2.0)


def generate(n_couriers: int = 300, n_restaurants: int = 200, days: int = 14,
             deliveries_per_day: int = 1_500, seed: int = 3, end: datetime | None = None) -> DeliveryData:
    """``days`` of deliveries ending at ``end`` (default: now, to the minute)."""
    rng = np.random.default_rng(seed)
    end = end or datetime.now(timezone.utc).replace(second=0, microsecond=0)
    vehicle = rng.choice(len(VEHICLES), n_couriers, p=[0.45, 0.35, 0.2])
    couriers = pd.DataFrame({
        "courier_id": _ids(rng, "c", n_couriers),
        "vehicle": np.array(VEHICLES)[vehicle],
        "pace": np.array([PACE[v] for v in np.array(VEHICLES)[vehicle]]) * rng.lognormal(0.0, 0.18, n_couriers),
        "joined_days_ago": rng.integers(1, 1_500, n_couriers),
    })
    restaurants = pd.DataFrame({
        "restaurant_id": _ids(rng, "r", n_restaurants),
        "base_prep": rng.uniform(6.0, 24.0, n_restaurants),
        "popularity": rng.gamma(1.5, 1.0, n_restaurants),
    })

    n = days * deliveries_per_day
    r_idx = rng.choice(n_restaurants, n, p=restaurants.popularity / restaurants.popularity.sum())
    c_idx = rng.integers(0, n_couriers, n)
    # Orders cluster around lunch and dinner; none after ``end``.
    hour = np.where(rng.random(n) < 0.5, rng.normal(12.5, 1.5, n), rng.normal(19.5, 1.8, n)) % 24
    day = rng.integers(0, days, n)
    start = pd.Timestamp(end).normalize() - pd.Timedelta(days=days - 1)
    ordered = start + pd.to_timedelta(day * 86_400 + hour * 3_600, unit="s")
    ordered = ordered.where(ordered < pd.Timestamp(end) - pd.Timedelta(hours=2), ordered - pd.Timedelta(days=1))

    hour_of_day = ordered.hour.to_numpy()
    peak = rush(hour_of_day + ordered.minute.to_numpy() / 60)
    distance = np.round(np.clip(rng.gamma(2.2, 1.4, n), 0.3, 15.0), 2)
    prep = restaurants.base_prep.to_numpy()[r_idx] * (1 + 0.45 * peak) * rng.lognormal(0.0, 0.15, n)
    travel = distance * couriers.pace.to_numpy()[c_idx] * (1 + 0.35 * peak) * rng.lognormal(0.0, 0.12, n)
    eta = np.round(prep + travel + rng.uniform(2.0, 5.0, n), 2)  # plus the hand-off at the door
    delivered = ordered + pd.to_timedelta(eta * 60, unit="s")

    deliveries = pd.DataFrame({
        "delivery_id": np.arange(1, n + 1, dtype=np.int64),
        "courier_id": couriers.courier_id.to_numpy()[c_idx],
        "restaurant_id": restaurants.restaurant_id.to_numpy()[r_idx],
        "ordered_at": ordered,
        "delivered_at": delivered,
        "distance_km": distance,
        "prep_minutes": np.round(prep, 2),
        "travel_minutes": np.round(travel, 2),
        "eta_minutes": eta,
        "is_late": eta > LATE_MINUTES,
    })
    deliveries = deliveries[deliveries.delivered_at < pd.Timestamp(end)]
    deliveries = deliveries.sort_values("ordered_at", kind="stable").reset_index(drop=True)
    # Profiles recorded before the first order: the non-aggregated view finds them for every order.
    profiles = couriers[["courier_id", "vehicle", "joined_days_ago"]].assign(
        updated_at=start - pd.Timedelta(days=1))
    return DeliveryData(profiles, restaurants, deliveries)


def write(data: DeliveryData, folder: Path) -> dict[str, Path]:
    """The couriers' profiles and the deliveries as Parquet (the feature jobs' input)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("couriers", "deliveries"):
        paths[name] = folder / f"{name}.parquet"
        # Microsecond timestamps: Spark cannot read Parquet's nanosecond ones.
        getattr(data, name).to_parquet(paths[name], index=False, coerce_timestamps="us",
                                       allow_truncated_timestamps=True)
    return paths


def read_deliveries(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "deliveries.parquet")
