"""Real traffic for the fraud example's model, through HTTP to a running gateway: recent
transactions replayed by customer id, as they are or drifted (amounts x3, more foreign and
online purchases, night hours), so the inference log has something for ``mlgate monitor`` to
judge against the training baseline. ``mlgate demo --traffic N [--drift]`` sends it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from examples import project
from serving.launcher import url
from serving.settings import Settings

BATCH_ROWS = 50
"""Rows per request: a few thousand rows in well under a minute, each logged as one row."""


def fraud_rows(settings: Settings, n: int, drift: bool = False, seed: int = 0) -> pd.DataFrame:
    """``n`` recent transactions (customer id + request-time features), drifted if asked."""
    from examples.fraud import data
    from examples.fraud.train import request_table

    demo = data.read(project.data_dir(settings, "fraud"))
    recent = request_table(data.DemoData(demo.customers, demo.merchants, demo.transactions.tail(20_000)))
    rng = np.random.default_rng(seed)
    rows = recent.sample(n, replace=len(recent) < n, random_state=seed).reset_index(drop=True)
    if drift:
        rows["amount"] = rows["amount"] * 3
        rows["is_foreign"] = np.maximum(rows["is_foreign"], (rng.random(n) < 0.4).astype("int64"))
        rows["is_online"] = np.maximum(rows["is_online"], (rng.random(n) < 0.7).astype("int64"))
        rows.loc[rows["is_online"] == 1, "distance_from_home_km"] = 0.0
        rows["hour_of_day"] = rng.integers(0, 5, n)
    return rows


def send(settings: Settings, model: str, rows: pd.DataFrame, batch_rows: int = BATCH_ROWS) -> dict[str, int]:
    """POST ``rows`` to the gateway in batches; answered and refused row counts."""
    import httpx

    from examples.fraud.train import REQUEST_NAMES

    endpoint = url(settings, f"/v1/models/{model}/predict")
    counts = {"answered": 0, "refused": 0}
    with httpx.Client(timeout=10) as client:
        for start in range(0, len(rows), batch_rows):
            chunk = rows.iloc[start:start + batch_rows]
            body = {"entities": [{"customer_id": int(c)} for c in chunk["customer_id"]],
                    "features": [{k: _plain(r[k]) for k in REQUEST_NAMES} for r in chunk.to_dict("records")]}
            response = client.post(endpoint, json=body)
            counts["answered" if response.status_code == 200 else "refused"] += len(chunk)
    return counts


def _plain(value):
    return value.item() if hasattr(value, "item") else value
