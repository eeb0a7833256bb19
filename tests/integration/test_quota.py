"""Request quotas (serving/auth/quota.py) on a real redis-server: GCRA buckets per caller and per
model, shared by every replica's Limiter, leases that save round trips without exceeding a
limit, the store down (fail open or closed), and the 429 a caller sees through the HTTP app."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import httpx
import orjson
import pytest

from features_online.redis_client import connect_async
from features_online.settings import RedisSettings
from observability.metrics import GatewayMetrics
from serving.auth.keys import key_hash, new_key
from serving.auth.principal import Principal
from serving.auth.quota import STORE_RETRY_S, Limiter
from serving.auth.settings import QuotaRate, QuotaSettings
from serving.errors import QuotaExceeded, QuotaUnavailable
from serving.http.app import build_app
from serving.models import InProcessModel, ModelTable
from serving.pipeline import Pipeline
from serving.settings import Settings
from tests.integration.conftest import RedisServer
from tests.unit.conftest import ToyRuntime

pytestmark = pytest.mark.integration

ROW = {"amount": 250.0, "count": 3, "is_online": True, "score": 0.5}


def caller(name: str, quota: QuotaRate | None = None) -> Principal:
    return Principal(f"key:{name}", "key", frozenset({"predict:*"}), quota)


ANONYMOUS = Principal("anonymous", "anonymous", frozenset({"predict:*"}))


class Replica:
    """One replica's limiter on its own client (and metrics), as each gateway replica has."""

    def __init__(self, url: str, prefix: str, socket_timeout_ms: int = 500, **quotas) -> None:
        self.client = connect_async(RedisSettings(url=url, socket_timeout_ms=socket_timeout_ms,
                                                  connect_timeout_ms=socket_timeout_ms))
        self.metrics = GatewayMetrics()
        self.limiter = Limiter(QuotaSettings(**quotas), self.client, prefix, self.metrics, models={"toy", "other"})

    async def admitted(self, principal: Principal, model: str = "toy", host: str | None = "10.0.0.1") -> bool:
        try:
            await self.limiter.admit(principal, model, host)
        except QuotaExceeded:
            return False
        return True

    async def close(self) -> None:
        await self.client.aclose()


@pytest.fixture
def prefix() -> str:
    """Each test's own key namespace on the session's redis-server."""
    return f"q{uuid.uuid4().hex[:10]}"


def test_a_per_key_limit_admits_its_burst_then_429_until_it_refills(redis_server, prefix):
    async def main():
        replica = Replica(redis_server.url, prefix, per_key={"rate_per_s": 5, "burst": 5})
        try:
            alice = caller("alice")
            assert await asyncio.gather(*(replica.admitted(alice) for _ in range(5))) == [True] * 5
            with pytest.raises(QuotaExceeded) as caught:
                await replica.limiter.admit(alice, "toy", None)
            error = caught.value
            assert (error.status, error.code, error.limit, error.retryable) == (429, "quota_exceeded", "key", True)
            assert error.retry_after_s >= 1
            assert await replica.admitted(caller("bob"))  # another caller's bucket is full, not his
            await asyncio.sleep(1 / 5 + 0.05)  # one request's refill time
            assert await replica.admitted(alice)
            assert replica.metrics.registry.get_sample_value(
                "mlgate_quota_rejected_total", {"model": "toy", "limit": "key"}) == 1
        finally:
            await replica.close()

    asyncio.run(main())


async def flood(replica: Replica, principal: Principal, until: float, workers: int) -> int:
    """Admits from ``workers`` concurrent callers until ``until``; how many were admitted."""
    admitted = 0

    async def worker():
        nonlocal admitted
        while time.monotonic() < until:
            if await replica.admitted(principal):
                admitted += 1
            else:
                await asyncio.sleep(0.005)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return admitted


def test_two_replicas_share_one_bucket_and_leases_never_exceed_it(redis_server, prefix):
    rate, burst = 200, 20

    async def main():
        replicas = [Replica(redis_server.url, prefix, per_key={"rate_per_s": rate, "burst": burst})
                    for _ in range(2)]
        alice = caller("alice")
        try:
            started = time.monotonic()
            counts = await asyncio.gather(*(flood(r, alice, started + 1.5, workers=20) for r in replicas))
            return counts, time.monotonic() - started
        finally:
            for r in replicas:
                await r.close()

    counts, elapsed = asyncio.run(main())
    assert sum(counts) <= burst + rate * elapsed, (counts, elapsed)
    assert all(c > 0 for c in counts)  # the bucket is shared, not taken by one replica
    assert sum(counts) >= 0.5 * rate * 1.5  # leases that lapse waste some of the limit, not most


def evalsha_calls(client) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))


def test_a_busy_replica_pays_one_round_trip_per_lease_not_per_request(redis_server, prefix):
    sync = redis_server.client()

    async def main():
        replica = Replica(redis_server.url, prefix, per_key={"rate_per_s": 20_000, "burst": 1000})
        try:
            alice = caller("alice")
            await replica.admitted(alice)  # the script is loaded
            before = evalsha_calls(sync)
            admitted = 0
            for _ in range(10):  # bursts of concurrent requests, as a busy replica sees
                admitted += sum(await asyncio.gather(*(replica.admitted(alice) for _ in range(100))))
            return admitted, evalsha_calls(sync) - before
        finally:
            await replica.close()

    admitted, calls = asyncio.run(main())
    sync.close()
    assert admitted == 1000
    assert 1 <= calls <= admitted / 5, calls


def test_a_per_model_limit_holds_across_callers_and_a_keys_own_quota_wins(redis_server, prefix):
    async def main():
        replica = Replica(redis_server.url, prefix, per_key={"rate_per_s": 1, "burst": 2},
                          per_model={"toy": {"rate_per_s": 1, "burst": 3}})
        try:
            results = [await replica.admitted(caller(name)) for name in ("a", "b", "c", "d")]
            assert results == [True, True, True, False]  # 3 for the model, whoever asks
            with pytest.raises(QuotaExceeded) as caught:
                await replica.limiter.admit(caller("e"), "toy", None)
            assert caught.value.limit == "model"
            assert await replica.admitted(caller("d"), model="other")  # no model limit there

            vip = caller("vip", QuotaRate(rate_per_s=1, burst=6))
            assert [await replica.admitted(vip, model="other") for _ in range(7)] == [True] * 6 + [False]
            plain = caller("plain")
            assert [await replica.admitted(plain, model="other") for _ in range(3)] == [True, True, False]
            samples = {(s.labels["model"], s.labels["limit"]): s.value
                       for m in replica.metrics.registry.collect() if m.name == "mlgate_quota_rejected"
                       for s in m.samples if s.name.endswith("_total")}
            assert samples == {("toy", "model"): 2, ("other", "key"): 2}
        finally:
            await replica.close()

    asyncio.run(main())


def test_a_keys_quota_changed_in_the_key_file_applies_without_a_restart(redis_server, prefix):
    """The key file re-read with a new limit for a key (the same id): the next request of that
    caller is held to the new limit, not the one this replica saw first."""
    async def main():
        replica = Replica(redis_server.url, prefix)  # no default limit: only the key's own
        try:
            before = caller("partner", QuotaRate(rate_per_s=1, burst=2))
            assert [await replica.admitted(before) for _ in range(3)] == [True, True, False]
            raised = caller("partner", QuotaRate(rate_per_s=1, burst=10))
            assert [await replica.admitted(raised) for _ in range(9)] == [True] * 8 + [False]
            lowered = caller("partner", QuotaRate(rate_per_s=1, burst=1))
            assert not await replica.admitted(lowered)
        finally:
            await replica.close()

    asyncio.run(main())


def test_one_callers_concurrent_requests_get_200_or_429_never_an_error(redis_server, prefix):
    """A burst of one caller's requests on one replica: each is admitted or refused with 429,
    none fails (it took this replica's whole Redis pool, and the pool's error failed quotas
    open for everyone), and the refusals cost a few round trips, not one each."""
    sync = redis_server.client()

    async def main():
        replica = Replica(redis_server.url, prefix, per_key={"rate_per_s": 50, "burst": 10})
        try:
            alice = caller("alice")
            before, started = evalsha_calls(sync), time.monotonic()
            results = await asyncio.wait_for(asyncio.gather(
                *(replica.limiter.admit(alice, "toy", None) for _ in range(200)), return_exceptions=True), 5)
            elapsed = time.monotonic() - started
            return results, evalsha_calls(sync) - before, replica.metrics, elapsed
        finally:
            await replica.close()

    results, calls, metrics, elapsed = asyncio.run(main())
    sync.close()
    assert all(r is None or isinstance(r, QuotaExceeded) for r in results), {type(r).__name__ for r in results}
    assert 10 <= results.count(None) <= 10 + 50 * elapsed  # the burst, and what refilled meanwhile
    assert metrics.registry.get_sample_value("mlgate_quota_store_unavailable_total") == 0
    assert metrics.registry.get_sample_value("mlgate_quota_rejected_total",
                                             {"model": "toy", "limit": "key"}) == 200 - results.count(None)
    assert calls <= 15 + 100 * elapsed, (calls, elapsed)  # ~190 when each refusal asks Redis


def test_anonymous_callers_are_bucketed_by_client_address(redis_server, prefix):
    async def main():
        replica = Replica(redis_server.url, prefix, per_key={"rate_per_s": 1, "burst": 2})
        try:
            first = [await replica.admitted(ANONYMOUS, host="203.0.113.1") for _ in range(3)]
            second = [await replica.admitted(ANONYMOUS, host="203.0.113.2") for _ in range(3)]
            assert first == second == [True, True, False]
        finally:
            await replica.close()

    asyncio.run(main())


def test_the_store_down_fails_open_or_closed_within_the_socket_timeout_then_limits_return(tmp_path, prefix):
    """A private redis-server, stopped (connections refused) and then hung (SIGSTOP: nobody
    answers), then back: no admit waits longer than the socket timeout."""
    server = RedisServer(tmp_path)
    server.start()
    timeout_s = 0.3
    limit = {"per_key": {"rate_per_s": 1, "burst": 2}, "socket_timeout_ms": int(timeout_s * 1000)}

    async def timed(replica: Replica, principal: Principal) -> tuple[str, float]:
        started = time.monotonic()
        try:
            await replica.limiter.admit(principal, "toy", None)
            outcome = "admitted"
        except QuotaUnavailable as exc:
            assert (exc.status, exc.code, exc.retry_after_s) == (503, "quota_unavailable", 1)
            outcome = "unavailable"
        except QuotaExceeded:
            outcome = "exceeded"
        return outcome, time.monotonic() - started

    async def main():
        opened = Replica(server.url, prefix, on_store_down="open", **limit)
        closed = Replica(server.url, prefix, on_store_down="closed", **limit)
        alice = caller("alice")
        try:
            assert [(await timed(opened, alice))[0] for _ in range(3)] == ["admitted", "admitted", "exceeded"]
            for stop in ("refused", "hung"):
                if stop == "refused":
                    server.stop()
                else:
                    server.start()
                    await asyncio.sleep(STORE_RETRY_S)  # both replicas try the store again
                    os.kill(server.proc.pid, signal.SIGSTOP)
                fresh, other = caller(f"open-{stop}"), caller(f"closed-{stop}")  # no refusal remembered
                answers = await asyncio.gather(*(timed(opened, fresh) for _ in range(10)),
                                               *(timed(closed, other) for _ in range(10)))
                assert [o for o, _ in answers] == ["admitted"] * 10 + ["unavailable"] * 10, stop
                # one socket timeout at most, never a queue of them
                assert max(s for _, s in answers) < timeout_s + 0.25, (stop, answers)
                if stop == "hung":
                    os.kill(server.proc.pid, signal.SIGCONT)
            for replica in (opened, closed):
                assert replica.metrics.registry.get_sample_value(
                    "mlgate_quota_store_unavailable_total") == 20
            await asyncio.sleep(STORE_RETRY_S)
            carol = caller("carol")  # the buckets hold again, on either replica
            assert [(await timed(r, carol))[0] for r in (opened, closed, opened)] == \
                ["admitted", "admitted", "exceeded"]
        finally:
            await opened.close()
            await closed.close()

    try:
        asyncio.run(main())
    finally:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def test_over_quota_predictions_get_429_with_retry_after_through_http(redis_server, prefix):
    key = new_key()
    settings = Settings(models=[{"name": "toy"}],
                        auth={"api_keys": [{"id": "svc", "sha256": key_hash(key), "scopes": ["predict:toy"]}],
                              "quotas": {"per_key": {"rate_per_s": 1, "burst": 3}}})
    metrics = GatewayMetrics()

    async def main():
        table = ModelTable(settings, metrics, lambda m: InProcessModel(ToyRuntime(), metrics))
        table.start()
        await asyncio.wait_for(table.wait_ready(), 5)
        client = connect_async(RedisSettings(url=redis_server.url))
        limiter = Limiter(settings.auth.quotas, client, prefix, metrics, table)
        app = build_app(Pipeline(settings, table, metrics), limiter=limiter)
        try:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
                body = orjson.dumps({"instances": [ROW]})
                answers = [await http.post("/v1/models/toy/predict", content=body, headers=headers)
                           for _ in range(4)]
                anonymous = await http.post("/v1/models/toy/predict", content=body,
                                            headers={"content-type": "application/json"})
            return answers, anonymous
        finally:
            await client.aclose()
            table.close()

    answers, anonymous = asyncio.run(main())
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    error = refused.json()["error"]
    assert (error["code"], error["retryable"]) == ("quota_exceeded", True)
    assert int(refused.headers["retry-after"]) >= 1
    assert anonymous.status_code == 401  # authentication comes before the quota: no bucket for it

    def sample(name, **labels):
        return metrics.registry.get_sample_value(name, labels) or 0.0

    assert sample("mlgate_quota_rejected_total", model="toy", limit="key") == 1
    assert sample("mlgate_requests_total", model="toy", version="", outcome="quota_exceeded") == 1
    assert sample("mlgate_requests_total", model="toy", version="3", outcome="ok") == 3
