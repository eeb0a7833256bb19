"""Keeps a replica's drift gauges on the latest ``mlgate monitor`` verdicts: every ``poll_s`` it
reads each served model's status document from Redis (serving/drift_status.py) and sets the
gauges (observability/metrics.py) when the document changed. Never on the request path; with
Redis away the gauges keep their last values (logged at debug: the feature reads already say
Redis is down)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable

from observability.metrics import GatewayMetrics
from serving import drift_status

log = logging.getLogger(__name__)

POLL_S = 30.0


class DriftWatcher:
    def __init__(self, client: Any, prefix: str, models: Callable[[], Iterable[str]], metrics: GatewayMetrics,
                 poll_s: float = POLL_S) -> None:
        self._client = client  # asyncio redis-py client
        self._prefix = prefix
        self._models = models
        self._metrics = metrics
        self._poll_s = poll_s
        self._seen: dict[str, float] = {}  # model -> computed_at of the status last applied
        self._task: asyncio.Task | None = None

    async def check(self) -> int:
        """Read every model's status; set the gauges of those that changed. Returns how many."""
        changed = 0
        for model in list(self._models()):
            try:
                status = await drift_status.read_async(self._client, self._prefix, model)
            except Exception as exc:  # Redis away or a document this version cannot read: keep the gauges
                log.debug("drift status of %s unreadable: %s", model, type(exc).__name__)
                continue
            if status is None or self._seen.get(model) == status.get("computed_at"):
                continue
            try:
                self._metrics.drift_changed(status)
            except (KeyError, TypeError, ValueError) as exc:
                log.debug("drift status of %s malformed: %s", model, type(exc).__name__)
                continue
            self._seen[model] = status.get("computed_at")
            changed += 1
        return changed

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="drift-status")

    async def _watch(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._poll_s)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
