"""Request-rate quotas that hold across every replica: GCRA buckets in Redis.

Each limit is one Redis key holding its theoretical arrival time (TAT, ms): a bucket of
``burst`` requests refilled at ``rate_per_s``. One script call checks the caller's bucket and the
model's together, atomically, on Redis's own clock (replicas' clocks never matter), and takes
requests only if every bucket has room: one round trip. Keys share one hash tag, so on a Redis
Cluster they live in one slot (the script's keys must).

Leases. A busy replica would pay a round trip per request. Instead it asks for as many requests
as its last lease used in time (doubling while it runs out, up to ``lease_max``, and never more
than ``lease_s`` of the limit), serves them locally for ``lease_s``, and lets unused ones lapse.
A limit is never exceeded; at worst a replica's quiet spell wastes ``lease_s`` of it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Container
from dataclasses import dataclass, field

from observability.metrics import UNKNOWN_MODEL, GatewayMetrics
from serving.auth.principal import Principal
from serving.auth.settings import QuotaRate, QuotaSettings
from serving.errors import QuotaExceeded, QuotaUnavailable

log = logging.getLogger(__name__)

# KEYS: buckets; ARGV[1]: requests wanted; ARGV[2i], ARGV[2i+1]: bucket i's interval and burst
# tolerance (ms). Returns {granted, retry_after_ms, index of the first full bucket (1-based)}.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local grant = tonumber(ARGV[1])
local retry, full = 0, 0
local tats = {}
for i, key in ipairs(KEYS) do
  local interval, tolerance = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  tats[i] = tat
  local room = math.floor((now + tolerance - tat) / interval)
  if room < grant then grant = room end
  if room < 1 then
    local wait = tat + interval - tolerance - now
    if wait > retry then retry = wait end
    if full == 0 then full = i end
  end
end
if grant < 1 then return {0, math.ceil(retry), full} end
for i, key in ipairs(KEYS) do
  local new = tats[i] + grant * tonumber(ARGV[2 * i])
  redis.call('SET', key, string.format('%.3f', new), 'PX', math.ceil(new - now) + 1)
end
return {grant, 0, 0}
"""

STORE_RETRY_S = 1.0
"""After a quota store failure, how long requests skip it (and get ``on_store_down``'s answer)."""
MAX_LEASES = 10_000


@dataclass(slots=True)
class _Buckets:
    keys: list[str]
    args: list[str]  # interval and tolerance per key
    limits: list[str]  # "key" or "model", per key
    cap: int  # most requests one lease may take
    tokens: int = 0
    expires: float = 0.0
    size: int = 1
    pending: asyncio.Future | None = field(default=None)
    refused_until: float = 0.0  # no room before then (monotonic): what a refused lease said
    refused_limit: str = "key"


class Limiter:
    def __init__(self, settings: QuotaSettings, client, prefix: str, metrics: GatewayMetrics,
                 models: Container[str] | None = None) -> None:
        """``client``: an asyncio Redis client; ``models``: names counted under their own label
        (others as ``_unknown``)."""
        self.settings = settings
        self.script = client.register_script(GCRA)
        self.tag = f"{{{prefix}:quota}}"
        self.metrics = metrics
        self.models = models
        # by caller, model and the caller's own limit: a key file re-read with a new limit for a
        # key makes new buckets (the same Redis keys, read with the new interval and burst)
        self._buckets: dict[tuple[str, str, QuotaRate | None], _Buckets | None] = {}
        self._down_until = 0.0

    async def admit(self, principal: Principal, model: str, client_host: str | None) -> None:
        """Take one request from the caller's and the model's buckets, or raise 429 (or 503 when
        the store is down and quotas fail closed)."""
        caller = principal.id if not principal.anonymous else f"addr:{client_host or '-'}"
        buckets = self._buckets.get((caller, model, principal.quota), False)
        if buckets is False:
            buckets = self._make(caller, model, principal.quota)
        if buckets is None:
            return
        while True:  # one lease per bucket in flight: each lease ends (granted, refused or failed)
            if buckets.tokens > 0 and time.monotonic() < buckets.expires:
                buckets.tokens -= 1
                return
            if buckets.pending is None:
                break
            await asyncio.shield(buckets.pending)  # another request of this replica is leasing
        wait_s = buckets.refused_until - time.monotonic()
        if wait_s > 0:  # a full bucket gains room only with time, whatever other replicas do
            raise self._refused(model, wait_s, buckets.refused_limit)
        await self._lease(buckets, model)

    def _make(self, caller: str, model: str, own: QuotaRate | None) -> _Buckets | None:
        limits: list[tuple[str, str, QuotaRate]] = []
        per_key = own or self.settings.per_key
        if per_key is not None:
            limits.append((f"{self.tag}:k:{caller}", "key", per_key))
        per_model = self.settings.per_model.get(model)
        if per_model is not None:
            limits.append((f"{self.tag}:m:{model}", "model", per_model))
        buckets = None
        if limits:
            args: list[str] = []
            for _, _, rate in limits:
                interval = 1000.0 / rate.rate_per_s
                args += [repr(interval), repr(interval * rate.capacity)]
            cap = min(self.settings.lease_max, *(max(1, min(rate.capacity, math.floor(rate.rate_per_s * self.settings.lease_s)))
                                                 for _, _, rate in limits))
            buckets = _Buckets([k for k, _, _ in limits], args, [kind for _, kind, _ in limits], cap)
        if len(self._buckets) >= MAX_LEASES:
            self._buckets.clear()
        self._buckets[(caller, model, own)] = buckets
        return buckets

    async def _lease(self, buckets: _Buckets, model: str) -> None:
        now = time.monotonic()
        if now < self._down_until:
            self._store_down()
            return
        if buckets.expires and now < buckets.expires:  # used up in time: take more next
            size = min(buckets.cap, buckets.size * 2)
        else:
            size = max(1, min(buckets.cap, buckets.size - buckets.tokens))
        # Each lease resolves the future it made, and clears the slot only if it is still its own.
        pending = buckets.pending = asyncio.get_running_loop().create_future()
        try:
            granted, retry_ms, full = await self.script(keys=buckets.keys, args=[str(size), *buckets.args])
        except Exception as exc:  # the store down or slow: its policy decides, not a 500
            self._down_until = time.monotonic() + STORE_RETRY_S
            log.warning("quota store unavailable (%s): requests %s for %.0f s", type(exc).__name__,
                        "admitted" if self.settings.on_store_down == "open" else "refused", STORE_RETRY_S)
            self._store_down()
            return
        finally:
            pending.set_result(None)
            if buckets.pending is pending:
                buckets.pending = None
        granted = int(granted)
        if granted < 1:
            limit = buckets.limits[int(full) - 1] if int(full) >= 1 else "key"
            buckets.tokens, buckets.expires, buckets.size = 0, 0.0, 1
            buckets.refused_until = time.monotonic() + int(retry_ms) / 1000.0
            buckets.refused_limit = limit
            raise self._refused(model, int(retry_ms) / 1000.0, limit)
        buckets.size = granted
        buckets.tokens = granted - 1
        buckets.expires = time.monotonic() + self.settings.lease_s

    def _refused(self, model: str, retry_after_s: float, limit: str) -> QuotaExceeded:
        label = model if self.models is None or model in self.models else UNKNOWN_MODEL
        self.metrics.child(self.metrics.quota_rejected, label, limit).inc()
        return QuotaExceeded(retry_after_s, limit)

    def _store_down(self) -> None:
        self.metrics.quota_store_unavailable.inc()
        if self.settings.on_store_down == "closed":
            raise QuotaUnavailable()
