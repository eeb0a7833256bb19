"""The Spark -> Redis sync and the online reader, with real Spark (local) and a real redis-server.
The view is defined here: an int64-keyed entity, a feature of every dtype. String and composite
keys, and schema changes: test_sync_keys.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from features_online import layout
from features_online.definitions import Entity, EntityKey, Feature, FeatureView
from features_online.reader import ViewReader
from features_online.sync import FeatureSync, SyncError, SyncResult, key_ttl_s
from observability.metrics import GatewayMetrics
from features_online.settings import FeatureSettings, RedisSettings
from tests.integration.redis_cluster import LocalRedisCluster

pytestmark = pytest.mark.integration

N = 2_000
VIEW = FeatureView("activity", Entity("user", (EntityKey("user_id"),)), (
    Feature("count_7d", "long", 0), Feature("sum_1d", "double", 0.0), Feature("mean_30d", "double", 0.0),
    Feature("max_30d", "double", 0.0), Feature("ratio", "float", 0.0), Feature("visits", "int", 0),
    Feature("vip", "bool", False), Feature("seconds_since_last", "double", 30 * 86_400.0)),
    ttl=timedelta(days=2), buckets=64)
NUMPY = {"double": np.float64, "float": np.float32, "long": np.int64, "int": np.int32, "bool": np.bool_}
NOW = datetime.now(timezone.utc).replace(microsecond=0)  # for relative times only


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture
def redis_settings(redis_url) -> RedisSettings:
    return RedisSettings(url=redis_url, prefix=f"t{uuid.uuid4().hex[:8]}")  # a namespace per test


def frame(spark, as_of: datetime, scale: float = 1.0, ids=None):
    """N entities whose values are a known function of the id (times ``scale``)."""
    ids = np.arange(1, N + 1) if ids is None else np.asarray(ids)
    data = {"user_id": ids.astype(np.int64),
            "as_of_ms": np.full(len(ids), int(as_of.timestamp() * 1000), dtype=np.int64)}
    for f in VIEW.features:
        values = ids * scale
        data[f.name] = (ids % 2 == 0) if f.dtype == "bool" else values.astype(NUMPY[f.dtype])
    return spark.createDataFrame(pd.DataFrame(data)).repartition(2)


def syncer(redis_settings, **features) -> FeatureSync:
    return FeatureSync(redis_settings, FeatureSettings(**features), VIEW)


def read_values(redis_settings, ids, pointer_refresh_s: float = 1.0):
    async def run():
        store = ViewReader(redis_settings, FeatureSettings(pointer_refresh_s=pointer_refresh_s),
                            {VIEW.name: VIEW}, GatewayMetrics())
        await store.start()
        try:
            return (await store.read({VIEW.name: np.asarray(ids, dtype=np.int64)}, 1.0))[VIEW.name]
        finally:
            await store.close()
    return asyncio.run(run())


def test_full_sync_writes_verifies_flips_and_sets_ttls(spark, redis_settings):
    at = now()
    result = syncer(redis_settings).full(frame(spark, at), at, "test-source")
    assert (result.mode, result.version, result.rows) == ("full", 1, N)
    meta = syncer(redis_settings).meta()
    assert meta["version"] == "1" and meta["rows"] == str(N) and meta["source"] == "test-source"
    assert meta["fingerprint"] == VIEW.fingerprint and "writing" not in meta
    client = redis.Redis.from_url(redis_settings.url)
    ttls = [client.ttl(k) for k in layout.bucket_keys(redis_settings.prefix, VIEW, 1)]
    assert all(key_ttl_s(VIEW) - 60 < t <= key_ttl_s(VIEW) for t in ttls)
    got = read_values(redis_settings, [1, 777, N, N + 5])
    assert got.present.tolist() == [True, True, True, False]
    assert got.records["count_7d"][:3].tolist() == [1, 777, N]
    assert got.records["mean_30d"][1] == 777.0
    assert got.records["ratio"][1] == np.float32(777.0) and got.records["visits"][1] == 777
    assert got.records["vip"][:3].tolist() == [0, 0, 1]  # odd ids False, even True
    assert 0 <= got.age_s[0] < 60 and np.isnan(got.age_s[3])


def test_a_new_version_replaces_the_old_one_which_then_expires(spark, redis_settings):
    sync = syncer(redis_settings, retire_grace_s=30)
    sync.full(frame(spark, NOW), NOW, "a")
    result = sync.full(frame(spark, NOW, scale=2.0), NOW, "b")
    assert result.version == 2 and result.retired == (1,)
    assert read_values(redis_settings, [10]).records["count_7d"].tolist() == [20]
    client = redis.Redis.from_url(redis_settings.url)
    assert all(0 < client.ttl(k) <= 30 for k in layout.bucket_keys(redis_settings.prefix, VIEW, 1))


def test_readers_during_a_sync_see_the_old_or_the_new_version_never_a_mix(spark, redis_settings):
    old, new = NOW - timedelta(hours=1), NOW
    syncer(redis_settings).full(frame(spark, old), old, "old")
    ids = np.arange(1, N + 1, N // 100)  # 100 entities across every bucket
    seen: list[set[int]] = []
    done = threading.Event()

    async def read_loop():
        store = ViewReader(redis_settings, FeatureSettings(pointer_refresh_s=0.01),
                            {VIEW.name: VIEW}, GatewayMetrics())
        await store.start()
        while not done.is_set():
            read = (await store.read({VIEW.name: ids}, 1.0))[VIEW.name]
            stamps_read = set(read.records["as_of_ms"][read.present].tolist())
            seen.append(stamps_read if read.present.all() else stamps_read | {0})  # {0}: a gap
            await asyncio.sleep(0)
        for _ in range(20):  # after the flip: the pointer refresh brings the new version
            read = (await store.read({VIEW.name: ids}, 1.0))[VIEW.name]
            seen.append(set(read.records["as_of_ms"].tolist()))
            await asyncio.sleep(0.01)
        await store.close()

    reader = threading.Thread(target=lambda: asyncio.run(read_loop()))
    reader.start()
    try:
        syncer(redis_settings).full(frame(spark, new, scale=3.0), new, "new")
    finally:
        done.set()
        reader.join(30)
    stamps = {int(old.timestamp() * 1000)}, {int(new.timestamp() * 1000)}
    # Every read: all 100 entities present, all from one version, never a mix or a gap.
    assert len(seen) > 20 and all(s in stamps for s in seen)
    assert seen[0] == stamps[0] and seen[-1] == stamps[1]


def test_a_sync_that_dies_half_way_leaves_the_previous_version_serving(spark, redis_settings):
    from pyspark.sql import functions as F

    sync = syncer(redis_settings, retire_grace_s=30)
    sync.full(frame(spark, NOW), NOW, "good")
    broken = frame(spark, NOW, scale=5.0).withColumn(
        "sum_1d", F.when(F.col("user_id") == N // 2, F.raise_error(F.lit("bad row")))
        .otherwise(F.col("sum_1d")))
    with pytest.raises(SyncError, match="failed"):
        sync.full(broken, NOW, "broken")
    meta = sync.meta()
    assert meta["version"] == "1" and meta["writing"] == "2"  # no flip; the dead version is known
    assert read_values(redis_settings, [3]).records["count_7d"].tolist() == [3]  # old values
    result = sync.full(frame(spark, NOW, scale=4.0), NOW, "recovered")
    assert result.version == 3 and set(result.retired) == {1, 2}
    client = redis.Redis.from_url(redis_settings.url)
    assert all(client.ttl(k) <= 30 for k in layout.bucket_keys(redis_settings.prefix, VIEW, 2))


def test_duplicate_entities_or_a_running_sync_refuse_to_flip(spark, redis_settings):
    sync = syncer(redis_settings)
    with pytest.raises(SyncError, match="stored for"):
        sync.full(frame(spark, NOW, ids=[1, 2, 2, 3]), NOW, "dupes")
    assert "version" not in sync.meta()
    redis.Redis.from_url(redis_settings.url).set(layout.lock_key(redis_settings.prefix, VIEW), "other")
    with pytest.raises(SyncError, match="another sync"):
        sync.full(frame(spark, NOW), NOW, "x")


# A sync in a process of its own, taking the lease through the real code path, whose source never
# finishes: it holds the lease (renewing it) until it is killed.
ENDLESS_SYNC = """
import sys, time
from datetime import datetime, timezone
from features_online.sync import FeatureSync
from features_online.settings import FeatureSettings, RedisSettings
from tests.integration.test_sync import VIEW

class Endless:
    def select(self, *columns):
        time.sleep(3600)

url, prefix, lease_s = sys.argv[1:]
FeatureSync(RedisSettings(url=url, prefix=prefix), FeatureSettings(sync_lease_s=float(lease_s)),
            VIEW).full(Endless(), datetime.now(timezone.utc), "endless")
"""


def test_a_killed_sync_blocks_the_next_one_only_until_its_lease_runs_out(spark, redis_settings):
    lease_s = 2.0
    sync = syncer(redis_settings, sync_lease_s=lease_s, retire_grace_s=30)
    sync.full(frame(spark, NOW), NOW, "good")
    later = frame(spark, NOW, scale=2.0)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", ENDLESS_SYNC, redis_settings.url, redis_settings.prefix,
                             str(lease_s)], env=env, cwd=root)
    try:
        deadline = time.monotonic() + 60
        while sync.meta().get("writing") != "2":  # it holds the lease and writes v2
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.5 * lease_s)  # renewed by the running sync: still held
        with pytest.raises(SyncError, match=r"another sync .* is a lease .* expires in \d"):
            sync.full(later, NOW, "while it runs")
    finally:
        proc.kill()  # SIGKILL: no finally, no release
        proc.wait(10)
    killed_at = time.monotonic()
    with pytest.raises(SyncError, match="expires in"):  # its last renewal still holds
        sync.full(later, NOW, "too soon")
    assert sync.meta()["version"] == "1"
    assert read_values(redis_settings, [3]).records["count_7d"].tolist() == [3]  # v1 serves
    client = redis.Redis.from_url(redis_settings.url)
    while client.exists(layout.lock_key(redis_settings.prefix, VIEW)):
        assert time.monotonic() - killed_at < lease_s + 1
        time.sleep(0.05)
    result = sync.full(later, NOW, "after")
    assert result.version == 3 and set(result.retired) == {1, 2}  # v2: the dead sync's
    assert read_values(redis_settings, [3]).records["count_7d"].tolist() == [6]


def test_a_long_sync_renews_its_lease_and_keeps_other_syncs_out(spark, redis_settings):
    lease_s = 1.5  # renewals every 0.5 s, each given 0.25 s: room for a busy 2-core machine
    sync = syncer(redis_settings, sync_lease_s=lease_s)
    write, writing, outcome = sync._write, threading.Event(), []

    def slow_write(source, version):  # writers that take four leases
        writing.set()
        time.sleep(4 * lease_s)
        return write(source, version)

    def run():
        try:
            outcome.append(sync.full(source, NOW, "long"))
        except Exception as exc:
            outcome.append(exc)

    sync._write = slow_write
    source, other = frame(spark, NOW), frame(spark, NOW, scale=2.0)
    runner = threading.Thread(target=run)
    runner.start()
    try:
        assert writing.wait(30)
        time.sleep(2 * lease_s)
        pttl = redis.Redis.from_url(redis_settings.url).pttl(layout.lock_key(redis_settings.prefix, VIEW))
        assert 0 < pttl <= lease_s * 1000
        with pytest.raises(SyncError, match="another sync .* expires in"):
            syncer(redis_settings, sync_lease_s=lease_s).full(other, NOW, "second")
    finally:
        runner.join(60)
    [result] = outcome
    assert isinstance(result, SyncResult) and result.version == 1  # it still held the lease to flip
    assert sync.meta()["source"] == "long"
    assert not redis.Redis.from_url(redis_settings.url).exists(layout.lock_key(redis_settings.prefix, VIEW))


@pytest.mark.parametrize("loss", ["taken over", "ran out"])
def test_a_sync_that_lost_its_lease_does_not_flip(spark, redis_settings, loss):
    sync = syncer(redis_settings, retire_grace_s=30)
    sync.full(frame(spark, NOW), NOW, "good")
    client, key = redis.Redis.from_url(redis_settings.url), layout.lock_key(redis_settings.prefix, VIEW)
    write = sync._write

    def write_then_lose(source, version):  # as if no renewal reached Redis for a whole lease
        rows = write(source, version)
        if loss == "taken over":
            client.set(key, "another sync", px=60_000)
        else:
            client.delete(key)
        return rows

    sync._write = write_then_lose
    with pytest.raises(SyncError, match="lease .* ran out or was taken over.*v2 was not made live"):
        sync.full(frame(spark, NOW, scale=2.0), NOW, "lost")
    meta = sync.meta()
    assert meta["version"] == "1" and meta["source"] == "good"
    assert read_values(redis_settings, [3]).records["count_7d"].tolist() == [3]
    assert all(0 < client.ttl(k) <= 30 for k in layout.bucket_keys(redis_settings.prefix, VIEW, 2))  # retired
    assert client.get(key) == (b"another sync" if loss == "taken over" else None)  # not freed by the loser


def test_an_incremental_sync_that_lost_its_lease_leaves_the_watermark(spark, redis_settings):
    sync, at = syncer(redis_settings), now()
    sync.full(frame(spark, at - timedelta(hours=2)), at - timedelta(hours=2), "full")
    watermark = sync.meta()["watermark_ms"]
    client = redis.Redis.from_url(redis_settings.url)
    write = sync._write

    def write_then_lose(source, version):
        rows = write(source, version)
        client.set(layout.lock_key(redis_settings.prefix, VIEW), "another sync", px=60_000)
        return rows

    sync._write = write_then_lose
    with pytest.raises(SyncError, match="the watermark stays"):
        sync.incremental(frame(spark, at, scale=10.0, ids=[5]), at, "delta")
    assert sync.meta()["watermark_ms"] == watermark and "incremental_source" not in sync.meta()


def test_the_renewal_notices_a_lost_lease_and_leaves_the_new_holder_alone(redis_settings):
    client, key = redis.Redis.from_url(redis_settings.url), layout.lock_key(redis_settings.prefix, VIEW)
    sync = syncer(redis_settings, sync_lease_s=0.3)
    with sync._lease() as lease:
        assert 0 < client.pttl(key) <= 300
        client.set(key, "another sync", px=60_000)
        deadline = time.monotonic() + 2
        while not lease.lost:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.pttl(key) > 50_000  # never renewed to our lease length
    assert client.get(key) == b"another sync"  # and not freed by our release


def test_incremental_sync_rewrites_only_changed_entities_in_place(spark, redis_settings):
    sync, at = syncer(redis_settings), now()
    sync.full(frame(spark, at - timedelta(hours=2)), at - timedelta(hours=2), "full")
    changed = frame(spark, at, scale=10.0, ids=[5, 6])
    result = sync.incremental(changed, at, "delta")
    assert (result.mode, result.version, result.rows) == ("incremental", 1, 2)
    got = read_values(redis_settings, [4, 5, 6])
    assert got.records["count_7d"].tolist() == [4, 50, 60]
    assert got.age_s[0] > 7000 and got.age_s[1] < 60  # each entity carries its own as-of time
    assert sync.meta()["watermark_ms"] == str(int(at.timestamp() * 1000))


def test_values_older_than_the_view_ttl_read_as_stale(spark, redis_settings):
    long_ago = NOW - VIEW.ttl - timedelta(hours=1)
    syncer(redis_settings).full(frame(spark, long_ago), long_ago, "old")
    got = read_values(redis_settings, [1, 2])
    assert got.present.all() and got.stale.all()



def test_the_freshness_gauge_is_the_age_of_the_live_versions_data(spark, redis_settings):
    """``mlgate_feature_view_age_seconds``: set at each pointer refresh to the time since the
    live version's as-of time (an incremental sync moves it), not since the sync finished."""
    metrics = GatewayMetrics()

    def gauge(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"view": VIEW.name})

    async def start_and_read():
        store = ViewReader(redis_settings, FeatureSettings(), {VIEW.name: VIEW}, metrics)
        await store.start()  # the first refresh
        try:
            assert (await store.read({VIEW.name: np.array([5])}, 1.0))[VIEW.name].present.all()
        finally:
            await store.close()

    sync, started = syncer(redis_settings), time.time()
    hour_old = now() - timedelta(hours=1)
    sync.full(frame(spark, hour_old), hour_old, "hour-old")
    finished = int(sync.meta()["finished_at_ms"]) / 1000
    before = time.time()
    asyncio.run(start_and_read())
    after = time.time()
    age = gauge("mlgate_feature_view_age_seconds")
    assert started <= finished <= before  # the sync finished seconds ago; its data is an hour old
    assert before - hour_old.timestamp() <= age <= after - hour_old.timestamp()
    assert gauge("mlgate_feature_view_version") == 1

    started = time.time()
    at = now()  # the incremental sync brings the as-of (watermark) to the present
    sync.incremental(frame(spark, at, ids=[5, 6]), at, "delta")
    asyncio.run(start_and_read())
    after = time.time()
    age = gauge("mlgate_feature_view_age_seconds")
    assert 0 <= age <= after - started + 1  # ``at`` is ``started`` to the whole second


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """A private three-node Redis Cluster (no replicas) on free ports."""
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("cluster"), primaries=3)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


def test_sync_and_read_on_a_redis_cluster(spark, redis_cluster):
    settings = RedisSettings(url=redis_cluster, cluster=True, prefix="cl")
    sync = syncer(settings)
    sync.full(frame(spark, NOW), NOW, "first")
    result = sync.full(frame(spark, NOW, scale=2.0), NOW, "second")  # the flip script: lease and meta in one slot
    assert (result.version, result.retired) == (2, (1,))
    got = read_values(settings, [1, 33, 1_500, N + 1])  # entities in buckets on different nodes
    assert got.present.tolist() == [True, True, True, False]
    assert got.records["count_7d"][:3].tolist() == [2, 66, 3_000]


def test_null_feature_values_take_the_default_and_extra_columns_are_ignored(spark, redis_settings):
    from pyspark.sql import functions as F

    at = now()
    nulls = (frame(spark, at).withColumn("seconds_since_last", F.when(F.col("user_id") % 2 == 0, None)
                                         .otherwise(F.col("seconds_since_last")))
             .withColumn("unrelated", F.lit("x")))
    syncer(redis_settings).full(nulls, at, "nulls")
    got = read_values(redis_settings, [6, 7])
    default = next(f.default for f in VIEW.features if f.name == "seconds_since_last")
    assert got.records["seconds_since_last"].tolist() == [default, 7.0]
    assert got.records["count_7d"].tolist() == [6, 7]


def test_a_command_redis_refuses_fails_the_sync_and_nothing_flips(spark, redis_settings):
    sync = syncer(redis_settings)
    sync.full(frame(spark, NOW), NOW, "good")
    # The next version's bucket 5 already exists as a string: its HSET gets a WRONGTYPE error.
    client = redis.Redis.from_url(redis_settings.url)
    client.set(layout.bucket_key(redis_settings.prefix, VIEW, 2, 5), "in the way")
    with pytest.raises(SyncError, match="failed"):
        sync.full(frame(spark, NOW, scale=2.0), NOW, "refused")
    assert sync.meta()["version"] == "1"
    assert read_values(redis_settings, [5]).records["count_7d"].tolist() == [5]


def test_writer_partitions_merge_without_a_shuffle_and_spread_only_when_needed(spark):
    from features_online.spark_job import writer_partitions

    def exchanges(frame) -> int:
        return frame._jdf.queryExecution().executedPlan().toString().count("Exchange")

    many = spark.range(100).repartition(4)
    merged = writer_partitions(many, 2)
    assert merged.rdd.getNumPartitions() == 2 and exchanges(merged) == exchanges(many)  # no new shuffle
    assert sorted(r.id for r in merged.collect()) == list(range(100))
    assert writer_partitions(spark.range(100).coalesce(1), 2).rdd.getNumPartitions() == 2


def test_full_sync_of_a_parquet_table_read_by_the_writers(spark, redis_settings, tmp_path):
    """What `mlgate features sync` runs: the writers read the table's row groups themselves."""
    from pyspark.sql import functions as F

    from features_online.parquet_pieces import ParquetTable

    at = now()
    table = (frame(spark, at).withColumn("seconds_since_last", F.when(F.col("user_id") % 2 == 0, None)
                                         .otherwise(F.col("seconds_since_last")))
             .withColumn("unrelated", F.lit("x")))
    table.repartition(3).write.option("parquet.block.size", 4096).parquet(str(tmp_path / "t"))
    sync = syncer(redis_settings)
    result = sync.full(ParquetTable(spark, str(tmp_path / "t"), 2), at, "table")
    assert (result.version, result.rows) == (1, N)
    got = read_values(redis_settings, [6, 7, N, N + 1])
    default = next(f.default for f in VIEW.features if f.name == "seconds_since_last")
    assert got.present.tolist() == [True, True, True, False]
    assert got.records["seconds_since_last"][:2].tolist() == [default, 7.0]
    assert got.records["count_7d"][:3].tolist() == [6, 7, N]
    assert sync.meta()["rows"] == str(N)


def test_a_parquet_table_a_writer_cannot_read_fails_the_sync_and_nothing_flips(spark, redis_settings, tmp_path):
    from features_online.parquet_pieces import ParquetTable

    sync = syncer(redis_settings)
    sync.full(frame(spark, NOW), NOW, "good")
    frame(spark, NOW, scale=2.0).coalesce(1).write.parquet(str(tmp_path / "t"))
    # a second part file without one of the view's features: its writer's task fails
    frame(spark, NOW, ids=[N + 1, N + 2]).drop("max_30d").coalesce(1).write.mode("append").parquet(
        str(tmp_path / "t"))
    with pytest.raises(SyncError, match="failed"):
        sync.full(ParquetTable(spark, str(tmp_path / "t"), 2), NOW, "broken")
    assert sync.meta()["version"] == "1"
    assert read_values(redis_settings, [5]).records["count_7d"].tolist() == [5]


def test_a_source_without_rows_is_refused_and_the_live_version_stays(spark, redis_settings):
    sync = syncer(redis_settings)
    sync.full(frame(spark, NOW), NOW, "good")
    with pytest.raises(SyncError, match="no rows"):
        sync.full(frame(spark, NOW).limit(0), NOW, "empty")
    assert sync.meta()["version"] == "1"
    assert read_values(redis_settings, [5]).records["count_7d"].tolist() == [5]


@pytest.mark.parametrize("in_url", [True, False])
def test_writers_authenticate_and_select_the_db_of_the_url(tmp_path, in_url):
    """The writers' bare connection: password from the URL or the settings, database from the URL."""
    import pyarrow as pa

    from features_online.redis_client import client_spec
    from features_online.writer import PartitionWriter
    from tests.integration.conftest import RedisServer

    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    port = server.port
    try:
        client = redis.Redis(port=port, password="s3cret", db=3)
        settings = (RedisSettings(url=f"redis://:s3cret@127.0.0.1:{port}/3", prefix="auth") if in_url else
                    RedisSettings(url=f"redis://127.0.0.1:{port}/3", password="s3cret", prefix="auth"))
        writer = PartitionWriter(client_spec(settings), VIEW, "auth", 1, 1000, 600)
        ids = np.arange(1, 101, dtype=np.int64)
        batch = pa.RecordBatch.from_pydict({"user_id": ids, "as_of_ms": np.full(100, 5, dtype=np.int64),
                                            **{f.name: ids.astype(NUMPY[f.dtype]) for f in VIEW.features}})
        assert writer.write(iter([batch])) == (100, 100)
        key = layout.bucket_key("auth", VIEW, 1, 7)
        [value] = client.hmget(key, b"7")
        records, present = layout.decode(VIEW, [value])
        assert present.all() and records["count_7d"].tolist() == [7] and 0 < client.ttl(key) <= 600
        wrong = RedisSettings(url=f"redis://:nope@127.0.0.1:{port}/3", prefix="auth")
        with pytest.raises(Exception, match="WRONGPASS|invalid"):
            PartitionWriter(client_spec(wrong), VIEW, "auth", 1, 1000, 600).write(iter([batch]))
    finally:
        server.stop()


@pytest.mark.parametrize("password_in", ["url", "settings"])
def test_sync_and_read_over_tls_with_a_password(spark, tmp_path, password_in):
    """``rediss://`` end to end: the writers and the reader verify the server's certificate
    against the CA given in the URL and authenticate with the password (URL or settings)."""
    from tests.integration.conftest import RedisServer

    server = RedisServer(tmp_path, password="tls-s3cret", tls=True)
    server.start()
    try:
        url = server.url.replace("rediss://", "rediss://:tls-s3cret@") if password_in == "url" else server.url
        settings = RedisSettings(url=url, password=None if password_in == "url" else "tls-s3cret", prefix="tls")
        at = now()
        assert syncer(settings).full(frame(spark, at), at, "tls").rows == N
        read = read_values(settings, [5, N + 1])
        assert read.present.tolist() == [True, False] and read.records["count_7d"][0] == 5
        plain = RedisSettings(url=f"redis://127.0.0.1:{server.port}/0", password="tls-s3cret", prefix="tls")
        with pytest.raises(Exception):  # no TLS: the server does not answer in clear
            syncer(plain).meta()
    finally:
        server.stop()
