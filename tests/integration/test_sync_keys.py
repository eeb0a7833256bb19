"""Full syncs of string- and composite-keyed views from Spark DataFrames, read back by the gateway's
reader; two views of different key types in one round trip; a schema change whose old version
serves until the new one is synced. Real Spark (local), a private redis-server, views defined here."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import redis

from features_online import layout
from features_online.definitions import Entity, EntityKey, Feature, FeatureView
from features_online.reader import ViewReader
from features_online.settings import FeatureSettings, RedisSettings
from features_online.sync import FeatureSync, SyncError
from observability.metrics import GatewayMetrics

pytestmark = pytest.mark.integration

N = 500
USERS = FeatureView("users", Entity("user", (EntityKey("user_id"),)), (Feature("clicks", "long", -1),),
                    timedelta(days=1), buckets=16)
SHOP = Entity("shop", (EntityKey("shop_code", "string"),))
SHOPS = FeatureView("shops", SHOP, (Feature("rating", "float", 0.0), Feature("orders", "long", 0),
                                    Feature("open", "bool", False)), timedelta(days=1), buckets=16)
PAIRS = FeatureView("user_shop", Entity("user_shop", (EntityKey("user_id"), EntityKey("shop_code", "string"))),
                    (Feature("visits", "int", 0), Feature("spend", "double", -1.0)), timedelta(days=1), buckets=16)
# a hash tag, the composite separator, a RESP line break, non-ASCII, spaces
NASTY = ["{tag}", "a}b{c", "x:y", "7:abc", "line\r\n*1\r\n$4\r\nPING", "ünïcødé 日本", "with spaces", "$3"]
CODES = NASTY + [f"shop-{uuid.UUID(int=i)}" for i in range(N - len(NASTY))]


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture
def redis_settings(redis_url) -> RedisSettings:
    return RedisSettings(url=redis_url, prefix=f"k{uuid.uuid4().hex[:8]}")


def as_of_ms(at: datetime, n: int) -> np.ndarray:
    return np.full(n, int(at.timestamp() * 1000), dtype=np.int64)


def shops_frame(spark, at: datetime, codes=CODES, scale: int = 1):
    i = np.arange(len(codes))
    return spark.createDataFrame(pd.DataFrame({
        "shop_code": codes, "as_of_ms": as_of_ms(at, len(codes)), "rating": (i * scale / 2).astype(np.float32),
        "orders": i * scale, "open": i % 2 == 1, "unrelated": "x"})).repartition(2)


def pairs_frame(spark, at: datetime):
    i = np.arange(N)
    return spark.createDataFrame(pd.DataFrame({
        "user_id": i % 50, "shop_code": [CODES[k] for k in i // 50 * 7 % N],  # (user, shop) distinct
        "as_of_ms": as_of_ms(at, N), "visits": i.astype(np.int32), "spend": i * 1.25})).repartition(2)


def read(settings: RedisSettings, views, rows):
    """``rows`` {view: RowKeys} read by a fresh reader (views: {name: view or candidates})."""
    async def run():
        store = ViewReader(settings, FeatureSettings(), views, GatewayMetrics())
        await store.start()
        try:
            return await store.read(rows, 1.0)
        finally:
            await store.close()
    return asyncio.run(run())


def fields(codes) -> list[bytes]:
    return layout.encode_fields(SHOP, {"shop_code": codes})


def test_a_string_keyed_view_syncs_and_reads_back_every_key_exactly(spark, redis_settings):
    at = now()
    result = FeatureSync(redis_settings, FeatureSettings(), SHOPS).full(shops_frame(spark, at), at, "shops")
    assert (result.version, result.rows) == (1, N)
    wanted = [*NASTY, CODES[-1], "never seen", "{tag"]
    got = read(redis_settings, {"shops": SHOPS}, {"shops": fields(wanted)})["shops"]
    assert got.present.tolist() == [True] * (len(NASTY) + 1) + [False, False]
    assert got.records["orders"][:len(NASTY)].tolist() == list(range(len(NASTY)))
    assert got.records["rating"][3] == np.float32(1.5) and got.records["open"][:2].tolist() == [0, 1]
    # in Redis: each key is exactly its UTF-8 bytes, in its CRC-32 bucket, and nothing else was made
    client = redis.Redis.from_url(redis_settings.url)
    for code in NASTY:
        [field] = fields([code])
        bucket = layout.bucket_of(SHOPS, [field])[0]
        assert client.hexists(layout.bucket_key(redis_settings.prefix, SHOPS, 1, int(bucket)), field)
    assert sum(client.hlen(k) for k in layout.bucket_keys(redis_settings.prefix, SHOPS, 1)) == N
    assert len(client.keys(f"{redis_settings.prefix}:*")) == SHOPS.buckets + 1  # buckets + meta


def test_a_composite_keyed_view_syncs_and_reads_back(spark, redis_settings):
    at = now()
    assert FeatureSync(redis_settings, FeatureSettings(), PAIRS).full(pairs_frame(spark, at), at, "pairs").rows == N
    rows = layout.encode_fields(PAIRS.entity, {"user_id": [0, 7, 49, 7],
                                               "shop_code": [CODES[0], CODES[7], CODES[63], CODES[8]]})
    got = read(redis_settings, {"user_shop": PAIRS}, {"user_shop": rows})["user_shop"]
    # row i = (i % 50, CODES[i // 50 * 7]): (0, CODES[0]) is row 0, (7, CODES[7]) row 57, (49, CODES[63])
    # row 499; no row has CODES[8]
    assert got.present.tolist() == [True, True, True, False]
    assert got.records["visits"][:3].tolist() == [0, 57, 499] and got.records["spend"][1] == 57 * 1.25


def test_rows_without_a_key_fail_the_sync_and_nothing_flips(spark, redis_settings):
    at = now()
    sync = FeatureSync(redis_settings, FeatureSettings(), SHOPS)
    sync.full(shops_frame(spark, at), at, "good")
    with pytest.raises(SyncError, match="rows have no shop_code"):
        sync.full(shops_frame(spark, at, codes=[*CODES[:10], None], scale=2), at, "nulls")
    assert sync.meta()["version"] == "1"
    got = read(redis_settings, {"shops": SHOPS}, {"shops": fields([CODES[9]])})["shops"]
    assert got.records["orders"].tolist() == [9]


def test_an_int_view_and_a_string_view_in_one_round_trip(spark, redis_settings):
    at = now()
    FeatureSync(redis_settings, FeatureSettings(), SHOPS).full(shops_frame(spark, at), at, "shops")
    ids = np.arange(N, dtype=np.int64)
    users = spark.createDataFrame(pd.DataFrame({"user_id": ids, "as_of_ms": as_of_ms(at, N), "clicks": ids * 3}))
    FeatureSync(redis_settings, FeatureSettings(), USERS).full(users, at, "users")
    calls = []

    async def run():
        store = ViewReader(redis_settings, FeatureSettings(), {"users": USERS, "shops": SHOPS}, GatewayMetrics())
        await store.start()
        execute = store._execute

        async def counted(commands):
            calls.append([c[0] for c in commands])
            return await execute(commands)

        store._execute = counted
        try:
            await store.read({"users": ids[:2], "shops": fields(CODES[:2])}, 1.0)  # loads the script
            calls.clear()
            return await store.read({"users": ids[::5][:100], "shops": fields(CODES[::5][:100])}, 1.0)
        finally:
            await store.close()

    got = asyncio.run(run())
    assert calls == [["EVALSHA"]]  # one command, one round trip, for both views
    assert got["users"].records["clicks"].tolist() == (ids[::5][:100] * 3).tolist()
    assert got["shops"].records["orders"].tolist() == list(range(0, N, 5))[:100]


def test_a_new_schema_version_serves_only_once_synced(spark, redis_settings):
    from pyspark.sql import functions as F

    v2 = FeatureView("shops", SHOP, (*SHOPS.features, Feature("returns", "int", 0)), SHOPS.ttl, buckets=16)
    assert v2.version != SHOPS.version
    at = now()
    FeatureSync(redis_settings, FeatureSettings(), SHOPS).full(shops_frame(spark, at), at, "v1")
    rows = {"shops": fields(CODES[:3])}

    async def run():
        store = ViewReader(redis_settings, FeatureSettings(pointer_refresh_s=3600), {"shops": (v2, SHOPS)},
                           GatewayMetrics())
        await store.start()
        try:
            before = (await store.read(rows, 1.0))["shops"]
            frame = shops_frame(spark, at, scale=10).withColumn("returns", F.lit(4).cast("int"))
            await asyncio.to_thread(FeatureSync(redis_settings, FeatureSettings(), v2).full, frame, at, "v2")
            stale_pointer = (await store.read(rows, 1.0))["shops"]  # until the next refresh
            await store.refresh()
            after = (await store.read(rows, 1.0))["shops"]
            return before, stale_pointer, after
        finally:
            await store.close()

    before, stale_pointer, after = asyncio.run(run())
    assert before.view == SHOPS and before.present.all() and before.records["orders"].tolist() == [0, 1, 2]
    assert stale_pointer.view == SHOPS and stale_pointer.records["orders"].tolist() == [0, 1, 2]
    assert after.view == v2 and after.records["orders"].tolist() == [0, 10, 20]
    assert after.records["returns"].tolist() == [4, 4, 4]
    # the old version is not retired by the new schema's sync: a gateway without v2 still reads it
    old_only = read(redis_settings, {"shops": SHOPS}, rows)["shops"]
    assert old_only.view == SHOPS and old_only.records["orders"].tolist() == [0, 1, 2]
