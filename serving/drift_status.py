"""The latest drift and quality verdict of a model, where the gateway and the retrain command
find it: one JSON document per model in Redis (``<prefix>:drift:{<model>}``), written by
``mlgate monitor`` (batch/monitor.py), read by the gateway (gauges, ``GET /v1/models/{name}``)
and by ``mlgate retrain --if-drift``.

Document::

    {"model": str, "version": str, "computed_at": epoch s, "window": {"start": epoch s, "end": epoch s},
     "rows": int, "labelled_rows": int, "drifted": bool, "threshold": float,
     "features": {column: {"psi": float, "kind": "numeric"|"categorical", "n": int}},
     "quality": {metric: float}}    # auc, precision (classifiers) or mae, rmse (regressors)
"""

from __future__ import annotations

from typing import Any

import orjson

PSI_WATCH = 0.1
PSI_DRIFT = 0.2
"""The usual PSI reading: under 0.1 stable, 0.1-0.2 worth a look, over 0.2 drifted."""


def status_key(prefix: str, model: str) -> str:
    return f"{prefix}:drift:{{{model}}}"


def write(client, prefix: str, status: dict[str, Any]) -> None:
    """Record ``status`` as the model's latest (a blocking client: jobs)."""
    client.set(status_key(prefix, status["model"]), orjson.dumps(status))


def read(client, prefix: str, model: str) -> dict[str, Any] | None:
    """The model's latest status, or None (a blocking client)."""
    raw = client.get(status_key(prefix, model))
    return orjson.loads(raw) if raw else None


async def read_async(client, prefix: str, model: str) -> dict[str, Any] | None:
    """The same, with an asyncio client (the gateway)."""
    raw = await client.get(status_key(prefix, model))
    return orjson.loads(raw) if raw else None
