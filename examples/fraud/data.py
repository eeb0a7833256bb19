"""A seeded generator of realistic card transactions with a learnable fraud label.

Customers have a home location, a typical spend and a card age; merchants have a category and a
risk level. Fraud is rare (about 1-2 %) and more likely for risky merchants, foreign and online
purchases, night hours, new cards, far from home, and amounts far above the customer's usual
spend — so a model has real signal to learn, and nothing is hard-coded in the label.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

N_CATEGORIES = 12  # grocery, fuel, travel, electronics, ...


@dataclass(frozen=True)
class DemoData:
    customers: pd.DataFrame
    merchants: pd.DataFrame
    transactions: pd.DataFrame


def generate(n_customers: int = 100_000, n_merchants: int = 5_000, days: int = 30,
             txns_per_customer: float = 10.0, seed: int = 7, end: datetime | None = None) -> DemoData:
    """``days`` of history ending at ``end`` (default: now, to the minute), so that features
    built from it are fresh when the demo serves them."""
    rng = np.random.default_rng(seed)
    end = end or datetime.now(timezone.utc).replace(second=0, microsecond=0)
    customers = pd.DataFrame({
        "customer_id": np.arange(1, n_customers + 1, dtype=np.int64),
        "home_lat": rng.uniform(36.0, 60.0, n_customers),
        "home_lon": rng.uniform(-10.0, 30.0, n_customers),
        "typical_amount": np.round(rng.lognormal(3.3, 0.6, n_customers), 2),
        "card_age_days": rng.integers(1, 3_650, n_customers),
    })
    category = rng.integers(0, N_CATEGORIES, n_merchants)
    merchants = pd.DataFrame({
        "merchant_id": np.arange(1, n_merchants + 1, dtype=np.int64),
        "merchant_category": category,
        "merchant_risk": np.round(rng.beta(1.2, 8.0, n_merchants) + 0.15 * (category >= 9), 4).clip(0, 1),
        "merchant_lat": rng.uniform(36.0, 60.0, n_merchants),
        "merchant_lon": rng.uniform(-10.0, 30.0, n_merchants),
    })
    # Heavy-tailed activity: a few customers transact a lot, most a little.
    counts = rng.poisson(txns_per_customer * rng.gamma(2.0, 0.5, n_customers)) + 1
    cust_idx = np.repeat(np.arange(n_customers), counts)
    n = len(cust_idx)
    merch_idx = rng.zipf(1.3, n) % n_merchants
    c = customers.iloc[cust_idx].reset_index(drop=True)
    m = merchants.iloc[merch_idx].reset_index(drop=True)

    # Daytime-heavy hour profile (fewer purchases at night), days uniform, nothing after ``end``.
    day = rng.integers(0, days, n)
    hour = rng.normal(14, 4.5, n) % 24
    first_midnight = pd.Timestamp(end).normalize() - pd.Timedelta(days=days - 1)
    offset = day * 86_400 + hour * 3_600
    ts = first_midnight + pd.to_timedelta(offset, unit="s")
    ts = ts.where(ts < pd.Timestamp(end), ts - pd.Timedelta(days=1))  # later today: a day earlier
    is_online = rng.random(n) < 0.3
    is_foreign = rng.random(n) < 0.05
    distance = np.where(is_online, 0.0, _km(c.home_lat, c.home_lon, m.merchant_lat, m.merchant_lon)
                        * rng.uniform(0.0, 0.05, n) + rng.exponential(5.0, n))
    amount = np.round(c.typical_amount.to_numpy() * rng.lognormal(0.0, 0.7, n), 2)

    hour = ts.hour.to_numpy()
    ratio = amount / c.typical_amount.to_numpy()
    logit = (-4.6 + 4.0 * m.merchant_risk.to_numpy() + 1.6 * is_foreign + 0.7 * is_online
             + 1.1 * (hour < 5) + 1.3 * np.log1p(ratio) - 0.9 * np.log1p(c.card_age_days.to_numpy() / 90)
             + 0.004 * np.minimum(distance, 500))
    is_fraud = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    # Fraudsters spend big: make the signal visible in the amount too.
    amount = np.where(is_fraud, np.round(amount * rng.uniform(1.5, 4.0, n), 2), amount)

    transactions = pd.DataFrame({
        "transaction_id": np.arange(1, n + 1, dtype=np.int64),
        "customer_id": c.customer_id.to_numpy(),
        "merchant_id": m.merchant_id.to_numpy(),
        "ts": ts,
        "amount": amount,
        "is_online": is_online,
        "is_foreign": is_foreign,
        "distance_from_home_km": np.round(distance, 3),
        "is_fraud": is_fraud,
    }).sort_values("ts", kind="stable").reset_index(drop=True)
    return DemoData(customers, merchants, transactions)


def _km(lat1, lon1, lat2, lon2) -> np.ndarray:
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(x, dtype=np.float64)) for x in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 6371.0 * 2 * np.arcsin(np.sqrt(a))


def write(data: DemoData, folder: Path) -> dict[str, Path]:
    """Raw tables as Parquet (the lakehouse input of the feature and training jobs)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("customers", "merchants", "transactions"):
        paths[name] = folder / f"{name}.parquet"
        # Microsecond timestamps: Spark cannot read Parquet's nanosecond ones.
        getattr(data, name).to_parquet(paths[name], index=False, coerce_timestamps="us",
                                       allow_truncated_timestamps=True)
    return paths


def read(folder: Path) -> DemoData:
    return DemoData(*(pd.read_parquet(folder / f"{n}.parquet")
                      for n in ("customers", "merchants", "transactions")))
