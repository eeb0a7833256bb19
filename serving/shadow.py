"""Shadow traffic: mirror a share of requests to shadow variants, off the hot path.

The pipeline hands over a request after its primary answer is ready; a bounded queue holds it
until one of ``rollout.shadow_concurrency`` workers replays it on the shadow. A slow or failing
shadow therefore never adds latency or errors to the primary response: when the queue is full the
mirror is dropped and counted. Each replay is compared row by row with what the primary answered
(rows the primary answered online only): label agreement, absolute score difference, latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from observability.metrics import GatewayMetrics
from serving.codec import score_of

log = logging.getLogger(__name__)

Replay = Callable[[str, str, Any, str | None], Awaitable[list[dict[str, Any] | None]]]
"""(model, shadow, request payload, request id) -> the shadow's predictions, None for rows it
skipped."""


@dataclass(frozen=True)
class Mirror:
    model: str
    shadow: str
    payload: Any
    primary: list[dict[str, Any]]
    request_id: str | None = None


class ShadowMirror:
    def __init__(self, replay: Replay, metrics: GatewayMetrics, queue_size: int, concurrency: int) -> None:
        self._replay = replay
        self._metrics = metrics
        self._queue: asyncio.Queue[Mirror] = asyncio.Queue(maxsize=queue_size)
        self._concurrency = concurrency
        self._workers: list[asyncio.Task] = []

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work(), name=f"shadow-{i}")
                         for i in range(self._concurrency)]

    def submit(self, mirror: Mirror) -> None:
        """Queue a replay; never blocks, never raises."""
        try:
            self._queue.put_nowait(mirror)
        except asyncio.QueueFull:
            self._metrics.shadow_requests.labels(mirror.model, mirror.shadow, "dropped").inc()

    async def _work(self) -> None:
        while True:
            mirror = await self._queue.get()
            try:
                await self._run(mirror)
            finally:
                self._queue.task_done()

    async def _run(self, mirror: Mirror) -> None:
        m = self._metrics
        started = time.perf_counter()
        try:
            shadow = await self._replay(mirror.model, mirror.shadow, mirror.payload, mirror.request_id)
        except Exception as exc:  # a shadow's failure is a finding, not an incident
            log.debug("shadow %s/%s failed: %s", mirror.model, mirror.shadow, type(exc).__name__)
            m.shadow_requests.labels(mirror.model, mirror.shadow, "error").inc()
            return
        m.shadow_latency.labels(mirror.model, mirror.shadow).observe(time.perf_counter() - started)
        m.shadow_requests.labels(mirror.model, mirror.shadow, "ok").inc()
        for agree, diff in compare(mirror.primary, shadow):
            m.shadow_agreement.labels(mirror.model, mirror.shadow, "true" if agree else "false").inc()
            if diff is not None:
                m.shadow_score_diff.labels(mirror.model, mirror.shadow).observe(diff)

    async def drain(self) -> None:
        """Wait until every queued replay is done (tests, shutdown)."""
        await self._queue.join()

    def close(self) -> None:
        for task in self._workers:
            task.cancel()


def compare(primary: list[dict[str, Any]], shadow: list[dict[str, Any] | None]
            ) -> list[tuple[bool, float | None]]:
    """(labels agree, |score difference|) for every row both answered from a model online."""
    out = []
    for p, s in zip(primary, shadow):
        if s is None or p.get("source", "online") != "online":
            continue
        agree = p.get("label") == s.get("label") if "label" in p else True
        ps, ss = score_of(p), score_of(s)
        diff = abs(ps - ss) if ps is not None and ss is not None else None
        if "label" not in p and diff is not None:
            agree = diff < 1e-6
        out.append((agree, diff))
    return out
