"""Redis Cluster end to end, on three primaries with a replica each (real redis-server processes):
the feature sync and the batch-score sync through Spark, the gateway's reads through the real
reader and pipeline (in process: no Ray, CI's time is short), and a primary killed under load.

The model here echoes its stored inputs, and every entity's features and batch score are a known
function of its id, so every answer, online or fallen back, is checked against the source data:
a read of the wrong version, of another entity, or of half-written data would show.

The failover is the cluster's own: the primary is SIGKILLed, its replica promotes itself after
``cluster-node-timeout``, and nothing (no test code, no operator) tells the gateway's client.
Run with ``-s`` to see the figures (loadtests/RESULTS.md, "Redis Cluster failover").
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from features_online import layout
from features_online.definitions import CLASSIFIER_OUTPUTS, Entity, EntityKey, Feature, FeatureView, score_view
from features_online.errors import StoreUnavailable
from features_online.reader import ViewReader
from features_online.settings import FeatureSettings
from features_online.sync import FeatureSync
from observability.metrics import GatewayMetrics
from serving.catalog import Catalog
from serving.errors import MlgateError
from serving.models import InProcessModel, ModelTable
from serving.pipeline import Pipeline
from serving.runtime.base import FeatureSpec
from serving.settings import Settings
from tests.integration.redis_cluster import LocalRedisCluster
from tests.unit.conftest import make_spec

pytestmark = pytest.mark.integration

N = 3_000  # entities with features and a batch score
UNSYNCED = 200  # ids N+1..N+UNSYNCED: a batch score, no features (on_missing=fallback serves the score)
MODEL = "echo"
VIEW = FeatureView("activity", Entity("user", (EntityKey("user_id"),)), (
    Feature("count_7d", "long", 0), Feature("spend", "double", 0.0), Feature("ratio", "float", 0.0),
    Feature("vip", "bool", False)), ttl=timedelta(days=1), buckets=64)
SCORES = score_view(MODEL, (VIEW.entity,), timedelta(days=1))
DEADLINE_MS = 300
NODE_TIMEOUT_MS = 1000
SPEC = make_spec(MODEL, inputs=(FeatureSpec("activity__count_7d", "long"), FeatureSpec("activity__spend", "double"),
                                FeatureSpec("activity__ratio", "float"), FeatureSpec("activity__vip", "boolean")),
                 outputs=("activity__count_7d", "activity__spend", "activity__ratio", "activity__vip"),
                 input_example=())


def features_of(ids) -> dict[str, np.ndarray]:
    ids = np.asarray(ids, dtype=np.int64)
    return {"count_7d": ids * 3, "spend": ids * 0.25 + 1.0, "ratio": (ids / 7).astype(np.float32),
            "vip": ids % 3 == 0}


def score_of(ids) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids, dtype=np.int64)
    return ids % 2, ids / (N + UNSYNCED + 1)


class EchoRuntime:
    """A model answering its stored inputs as they came: an answer shows exactly what was read."""

    spec = SPEC

    def predict(self, inputs):
        return {name: np.asarray(inputs[name]) for name in SPEC.outputs}

    def close(self) -> None:
        pass


def expected(entity: int, answer: dict) -> bool:
    """Whether ``answer`` is exactly what the source data says for ``entity``, online or fallen back."""
    if answer.get("source") == "online":
        want = features_of([entity])
        return all(answer[f"activity__{name}"] == values.tolist()[0] for name, values in want.items())
    if answer.get("source") == "batch_fallback":
        label, score = score_of([entity])
        return (answer["label"], answer["probability"]) == (int(label[0]), float(score[0]))
    return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("cluster6"), primaries=3, replicas=1,
                                node_timeout_ms=NODE_TIMEOUT_MS)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def settings(cluster) -> Settings:
    return Settings(models=[{"name": MODEL}], redis={"url": cluster.url, "cluster": True, "prefix": "rc"},
                    features={"on_missing": "fallback"}, limits={"deadline_ms": DEADLINE_MS},
                    fallback={"max_age_s": 86_400}, mlflow_tracking_uri=None)


@pytest.fixture(scope="module")
def synced(spark, settings, cluster):
    """Features of ids 1..N and batch scores of ids 1..N+UNSYNCED, each through the real sync, as
    `mlgate features sync` and `mlgate batch score` write them; then every replica caught up."""
    at = datetime.now(timezone.utc)
    as_of_ms = int(at.timestamp() * 1000)
    ids = np.arange(1, N + 1, dtype=np.int64)
    features = pd.DataFrame({"user_id": ids, "as_of_ms": as_of_ms, **features_of(ids)})
    FeatureSync(settings.redis, settings.features, VIEW).full(
        spark.createDataFrame(features).repartition(2), at, "cluster-test")
    scored = np.arange(1, N + UNSYNCED + 1, dtype=np.int64)
    label, score = score_of(scored)
    scores = pd.DataFrame({"user_id": scored, "as_of_ms": as_of_ms, "label": label, "score": score})
    FeatureSync(settings.redis, settings.features, SCORES).full(
        spark.createDataFrame(scores).repartition(2), at, "cluster-test",
        extra={"model_version": "1", "outputs": CLASSIFIER_OUTPUTS})
    cluster.wait_replicas_caught_up()
    return settings


class Gateway:
    """The gateway's request path in this process: one reader for features and scores (no
    separate fallback Redis, as configured), the echo model, the real pipeline."""

    def __init__(self, settings: Settings) -> None:
        self.metrics = GatewayMetrics()
        self.store = ViewReader(settings.redis, settings.features, {VIEW.name: VIEW}, self.metrics)
        self.table = ModelTable(settings, self.metrics, lambda _: InProcessModel(EchoRuntime(), self.metrics))
        catalog = Catalog(views={VIEW.name: (VIEW,)}, models=settings.models, entities={MODEL: (VIEW.entity,)})
        self.pipeline = Pipeline(settings, self.table, self.metrics, self.store, catalog=catalog)

    async def __aenter__(self) -> Gateway:
        # This process also holds Spark's driver: a full collection here walks its objects and
        # runs py4j finalizers that each call the JVM, freezing the event loop for 0.1-0.7 s
        # (measured) and making requests late for reasons a gateway replica does not have.
        # Collected once and frozen out of later collections, they stay out of the figures.
        gc.collect()
        gc.freeze()
        self.table.start()
        await asyncio.wait_for(self.table.wait_ready(), 10)
        self.pipeline.binding(SPEC)  # the score view is read from the first refresh on
        await self.store.start()
        return self

    async def __aexit__(self, *exc) -> None:
        self.table.close()
        await self.store.close()
        gc.unfreeze()

    async def predict(self, entities: list[int]) -> list[dict]:
        body = {"entities": [{"user_id": e} for e in entities]}
        return (await self.pipeline.predict(MODEL, b"", "rid", payload=body))["predictions"]

    async def read_exact(self, ids: np.ndarray) -> bool:
        """Whether the reader gives every one of ``ids`` exactly its source features."""
        read = (await self.store.read({VIEW.name: ids}, DEADLINE_MS / 1000))[VIEW.name]
        want = features_of(ids)
        return bool(read.present.all()) and all(np.array_equal(read.records[f], want[f].astype(read.records[f].dtype))
                                                for f in want)


def test_sync_reads_and_fallback_scores_on_a_cluster_with_replicas(synced, cluster):
    keys = layout.bucket_keys(synced.redis.prefix, VIEW, 1) + layout.bucket_keys(synced.redis.prefix, SCORES, 1)
    assert {cluster.owner(k) for k in keys} == set(cluster.topology())  # both views on every primary

    async def run():
        async with Gateway(synced) as gateway:
            assert await gateway.read_exact(np.arange(1, N + 1, dtype=np.int64))
            beyond = (await gateway.store.read({VIEW.name: np.arange(N + 1, N + 11)}, 1.0))[VIEW.name]
            assert not beyond.present.any()
            entities = [1, 2, 777, N, N + 1, N + UNSYNCED, 1_500]  # online, then scores only, in one request
            answers = await gateway.predict(entities)
            assert [a["source"] for a in answers] == ["online"] * 4 + ["batch_fallback"] * 2 + ["online"]
            assert all(expected(e, a) for e, a in zip(entities, answers))
            assert answers[4]["fallback_reason"] == "features_missing" and answers[4]["model_version"] == "1"

    asyncio.run(run())


@dataclass
class Sample:
    started: float
    seconds: float
    entities: list[int]
    outcome: str  # "online", "fallback" (any row fell back), "503", "wrong", or another error code


@dataclass
class FailoverRun:
    killed_at: float
    promoted_at: float | None = None
    recovered_at: float | None = None  # first exact read of every entity, after the kill
    samples: list[Sample] = field(default_factory=list)
    loop_lag_s: float = 0.0  # the longest the event loop was late waking a 5 ms sleep

    def during(self) -> list[Sample]:
        end = self.recovered_at or float("inf")
        return [s for s in self.samples if self.killed_at <= s.started + s.seconds and s.started <= end]

    def timeline(self, step_s: float = 0.5) -> list[str]:
        """Outcomes and the slowest request of each ``step_s`` since the kill, by start time."""
        lines, start = [], 0.0
        while start < max(s.started for s in self.samples) - self.killed_at:
            window = [s for s in self.samples if start <= s.started - self.killed_at < start + step_s]
            if window:
                counts = {o: sum(1 for s in window if s.outcome == o) for o in ("online", "fallback", "503")}
                lines.append(f"+{start:.1f}s " + " ".join(f"{o} {n}" for o, n in counts.items())
                             + f" max {max(s.seconds for s in window) * 1000:.0f} ms")
            start += step_s
        return lines

    def figures(self) -> dict[str, float | int]:
        during, before = self.during(), [s for s in self.samples if s.started + s.seconds < self.killed_at]
        count = {o: sum(1 for s in during if s.outcome == o) for o in ("online", "fallback", "503")}
        p99 = lambda samples: float(np.percentile([s.seconds for s in samples], 99) * 1000)  # noqa: E731
        return {"requests": len(self.samples), "during": len(during), **count,
                "promoted_s": (self.promoted_at or np.nan) - self.killed_at,
                "recovered_s": (self.recovered_at or np.nan) - self.killed_at,
                "p99_before_ms": p99(before), "p99_during_ms": p99(during),
                "max_ms": max(s.seconds for s in self.samples) * 1000, "loop_lag_ms": self.loop_lag_s * 1000}


async def load_with_failover(gateway: Gateway, cluster: LocalRedisCluster, victim: int,
                             concurrency: int = 16, warm_s: float = 1.0, after_s: float = 1.0,
                             give_up_s: float = 20.0) -> FailoverRun:
    """``concurrency`` callers predicting random entities (one, or eight at a time) while the
    primary on ``victim`` is killed; a probe reads every entity until one read is exact (the
    killed shard's slots served again, and every other node past the cluster's own ``fail``
    state). Ends ``after_s`` after that read, or ``give_up_s`` after the kill."""
    everyone = np.arange(1, N + 1, dtype=np.int64)
    replica = cluster.topology()[victim]
    rng = np.random.default_rng(16)
    run = FailoverRun(killed_at=float("inf"))
    stop = asyncio.Event()

    async def caller(seed: int) -> None:
        own = np.random.default_rng(seed)
        while not stop.is_set():
            entities = own.integers(1, N + 1, size=8 if own.random() < 0.25 else 1).tolist()
            t0 = time.monotonic()
            try:
                answers = await gateway.predict(entities)
                outcome = ("wrong" if not all(expected(e, a) for e, a in zip(entities, answers))
                           else "online" if all(a["source"] == "online" for a in answers) else "fallback")
            except MlgateError as exc:
                outcome = "503" if exc.status == 503 else exc.code
            run.samples.append(Sample(t0, time.monotonic() - t0, entities, outcome))

    async def probe() -> None:
        while run.recovered_at is None:
            try:
                if await gateway.read_exact(everyone):
                    run.recovered_at = time.monotonic()
            except StoreUnavailable:
                pass
            await asyncio.sleep(0.05)

    async def lag() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            await asyncio.sleep(0.005)
            run.loop_lag_s = max(run.loop_lag_s, time.monotonic() - t0 - 0.005)

    callers = [asyncio.create_task(caller(int(s))) for s in rng.integers(0, 2**31, concurrency)]
    callers.append(asyncio.create_task(lag()))
    await asyncio.sleep(warm_s)
    run.killed_at = time.monotonic()
    await asyncio.to_thread(cluster.kill, victim)
    watching = asyncio.create_task(asyncio.to_thread(cluster.wait_primary, replica, give_up_s))
    try:
        await asyncio.wait_for(probe(), give_up_s)
    except TimeoutError:
        pass
    run.promoted_at = await watching
    if run.recovered_at is not None:
        await asyncio.sleep(after_s)
    stop.set()
    await asyncio.gather(*callers)
    return run


def test_a_primary_killed_under_load_fails_over_without_a_wrong_answer(synced, cluster):
    prefix = synced.redis.prefix
    victim = cluster.owner(layout.bucket_key(prefix, VIEW, 1, 0))
    ids = np.arange(1, N + 1, dtype=np.int64)
    on_victim = [b for b in range(VIEW.buckets) if cluster.owner(layout.bucket_key(prefix, VIEW, 1, b)) == victim]
    affected = ids[np.isin(ids % VIEW.buckets, on_victim)]

    async def run() -> FailoverRun:
        async with Gateway(synced) as gateway:
            result = await load_with_failover(gateway, cluster, victim)
            assert await gateway.read_exact(ids)  # every entity, after the failover, unaided
            return result

    result = asyncio.run(run())
    figures = result.figures()
    print(f"\nRedis Cluster failover: killed primary {victim} ({len(on_victim)}/{VIEW.buckets} feature "
          f"buckets, {len(affected)} entities), node timeout {NODE_TIMEOUT_MS} ms, deadline {DEADLINE_MS} ms")
    print("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    print("\n".join("  " + line for line in result.timeline()))
    outcomes = {s.outcome for s in result.samples}
    assert "wrong" not in outcomes
    assert outcomes <= {"online", "fallback", "503"}  # a dead shard never gives a 500 or a hang
    assert figures["fallback"] + figures["503"] > 0  # the kill was felt
    assert result.recovered_at is not None, "reads of the killed shard's slots never recovered"
    # Never past the deadline, but for the time the event loop was frozen (2 shared cores: the
    # timer that ends a request cannot fire on time then) and a margin for the answer itself.
    assert figures["max_ms"] < DEADLINE_MS + figures["loop_lag_ms"] + 100
    # Before the cluster agrees the primary failed (node timeout, then a vote), its rows fail fast:
    # not after retrying to the deadline, which would leave their fallback no time.
    first = [s.seconds for s in result.samples if s.outcome != "online"
             and 0 <= s.started - result.killed_at < NODE_TIMEOUT_MS / 1000]
    assert first and np.median(first) < DEADLINE_MS / 3000
    after = [s for s in result.samples if s.started > result.recovered_at]
    assert after and all(s.outcome == "online" for s in after)
