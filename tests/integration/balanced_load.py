"""Closed-loop load over several gateway endpoints, balanced as a Kubernetes Service balances over
the gateway's pods, with every request recorded.

An endpoint is in rotation while its readiness probe (``/readyz``) passes, as the chart's worker
pods are; one that fails a request (no connection, reset, a 5xx) leaves the rotation at once, as a
proxy with passive health checks takes it out, and comes back when its probe passes again. What
the gateway costs callers when a node is lost can then be read from the record: which requests
failed, when, and whether any answer differed from the one given before.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx
import numpy as np


@dataclass(frozen=True)
class Outcome:
    start: float  # time.monotonic()
    end: float
    port: int
    body: int  # index into the bodies sent
    status: int | None  # None: no HTTP answer (refused, reset, timed out)
    predictions: Any = None


class Balancer:
    """The endpoints in rotation, taken in turn. ``discover`` lists the endpoints' ports as the
    platform knows them (a Service's endpoints; here Ray Serve's own list for load balancers);
    it runs in a thread, before every round of probes."""

    def __init__(self, discover: Callable[[], list[int]]) -> None:
        self.discover = discover
        self.ports: list[int] = []
        self.ready: set[int] = set()
        self.seen: set[int] = set()  # every port ever discovered, for the report
        self._turn = itertools.count()

    def pick(self) -> int | None:
        ready = [p for p in self.ports if p in self.ready]
        return ready[next(self._turn) % len(ready)] if ready else None

    async def probe(self, client: httpx.AsyncClient, period_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self.ports = sorted(await asyncio.to_thread(self.discover))
            except Exception:  # the platform cannot say: keep the last list
                pass
            self.seen.update(self.ports)
            for port in self.ports:
                try:
                    ok = (await client.get(f"http://127.0.0.1:{port}/readyz", timeout=2.0)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                (self.ready.add if ok else self.ready.discard)(port)
            self.ready &= set(self.ports)
            await asyncio.sleep(period_s)


async def run(balancer: Balancer, path: str, bodies: list[dict], concurrency: int,
              stop: asyncio.Event, probe_s: float = 0.5, timeout_s: float = 10) -> list[Outcome]:
    """POST ``bodies`` in turn to ``path`` from ``concurrency`` workers until ``stop`` is set."""
    outcomes: list[Outcome] = []
    turn = itertools.count()
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        async def worker() -> None:
            while not stop.is_set():
                port = balancer.pick()
                if port is None:  # a Service without endpoints: nothing to call
                    await asyncio.sleep(0.05)
                    continue
                index = next(turn) % len(bodies)
                start = time.monotonic()
                try:
                    response = await client.post(f"http://127.0.0.1:{port}{path}", json=bodies[index])
                    status = response.status_code
                    predictions = response.json().get("predictions") if status == 200 else None
                except httpx.HTTPError:
                    status, predictions = None, None
                outcomes.append(Outcome(start, time.monotonic(), port, index, status, predictions))
                if status is None or status >= 500:
                    balancer.ready.discard(port)

        prober = asyncio.create_task(balancer.probe(client, probe_s, stop))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await prober
    return outcomes


def p99_ms(outcomes: list[Outcome], since: float, until: float) -> float:
    """p99 latency of the requests that started in [since, until)."""
    took = [o.end - o.start for o in outcomes if since <= o.start < until]
    return float(np.percentile(took, 99)) * 1000 if took else float("nan")


def window(outcomes: list[Outcome], failed: Callable[[Outcome], bool]) -> tuple[float, float] | None:
    """First start and last end of the outcomes ``failed`` picks, or None."""
    picked = [o for o in outcomes if failed(o)]
    return (min(o.start for o in picked), max(o.end for o in picked)) if picked else None
