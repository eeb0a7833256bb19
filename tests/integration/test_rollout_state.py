"""Rollout state shared by gateway replicas through a real Redis: changes, rollbacks and
restarts as several replicas see them (toy in-memory models: what is tested is the state)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from observability.metrics import GatewayMetrics
from serving.canary import Breach
from serving.models import InProcessModel, ModelTable
from serving.rollout import Rollouts
from serving.settings import RoutingSettings, Settings
from tests.unit.conftest import ToyRuntime, make_spec

pytestmark = pytest.mark.integration


def replica(settings: Settings, url: str, recorded: list | None = None) -> Rollouts:
    metrics = GatewayMetrics()
    spec = {"champion": make_spec(version="3"), "challenger": make_spec(version="4")}
    models = ModelTable(settings, metrics, lambda m: InProcessModel(ToyRuntime(spec[m.alias]), metrics))
    hook = (lambda model, version, breach: recorded.append((model, version, breach.check))) if recorded is not None else None
    return Rollouts(settings, models, metrics, aioredis.Redis.from_url(url), on_rollback=hook)


def test_replicas_share_changes_rollbacks_and_keep_them_across_restarts(redis_url):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    routing = {"canary": {"alias": "challenger", "weight": 5}}
    settings = Settings(models=[{"name": "toy", "routing": routing}], redis={"url": redis_url, "prefix": prefix})
    config = RoutingSettings(**routing)

    async def main():
        recorded: list = []
        a, b = replica(settings, redis_url, recorded), replica(settings, redis_url)
        for r in (a, b):
            await r.configure("toy", config)
        assert a.state("toy").canary_weight == b.state("toy").canary_weight == 5

        await a.set("toy", canary_weight=30)
        await b.refresh()
        assert b.state("toy").canary_weight == 30 and b.state("toy").updated_by == "admin"

        await b.rollback("toy", Breach("latency", "canary p99 90 ms against 2 ms"))
        await a.refresh()
        assert a.state("toy").halted and a.state("toy").canary_weight == 0
        assert a.state("toy").reason.startswith("latency")

        c = replica(settings, redis_url)  # a replica restarting under the same configuration
        await c.configure("toy", config)
        assert c.state("toy").halted and c.state("toy").canary_weight == 0

        await asyncio.gather(a.set("toy", canary_weight=40), b.set("toy", shadow_shares={}))
        await c.refresh()  # concurrent changes: compare-and-set keeps both, loses neither
        assert c.state("toy").canary_weight == 40 and not c.state("toy").halted

        new = RoutingSettings(**{**routing, "canary": {"alias": "challenger", "weight": 10}})
        await c.configure("toy", new)  # a new configuration (helm upgrade) is someone acting
        await a.refresh()  # still on the old configuration: waits for its own reconfigure
        assert a.state("toy").canary_weight == 40
        for r in (a, b):
            await r.configure("toy", new)
        assert [r.state("toy").canary_weight for r in (a, b, c)] == [10, 10, 10]
        assert not any(r.state("toy").halted for r in (a, b, c))

    asyncio.run(main())


def test_two_replicas_seeing_one_breach_make_one_rollback(redis_url):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    routing = {"canary": {"alias": "challenger", "weight": 50}}
    settings = Settings(models=[{"name": "toy", "routing": routing}], redis={"url": redis_url, "prefix": prefix})

    def rollbacks(r: Rollouts) -> float:
        return sum(s.value for m in r._metrics.canary_rollbacks.collect() for s in m.samples
                   if s.name.endswith("_total"))

    async def main():
        recorded: list = []
        a, b = replica(settings, redis_url, recorded), replica(settings, redis_url, recorded)
        for r in (a, b):
            await r.configure("toy", RoutingSettings(**routing))
        breach = Breach("error_rate", "canary 40 % errors against 0 %")
        await a.rollback("toy", breach)
        await b.rollback("toy", breach)  # its own analysis saw it before its next refresh
        assert a.state("toy").halted and b.state("toy").halted
        assert b.state("toy").reason == a.state("toy").reason  # b adopted a's rollback
        assert (rollbacks(a), rollbacks(b)) == (1, 0)
        assert [(model, check) for model, _, check in recorded] == [("toy", "error_rate")]  # one registry note

    asyncio.run(main())
