"""The gateway's view reader against an in-memory stand-in for redis-py's asyncio client: every
view of a request in one round trip (int64 and string keys side by side), rows aligned with the
request, and older schema versions served until the newest is synced."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import numpy as np
import pytest

from features_online import layout
from features_online.definitions import Entity, EntityKey, Feature, FeatureView
from features_online.errors import StoreUnavailable
from features_online.reader import GET_MANY_SHA, ViewReader
from features_online.settings import FeatureSettings, RedisSettings
from observability.metrics import GatewayMetrics

USERS = FeatureView("users", Entity("user", (EntityKey("user_id"),)), (Feature("clicks", "long", -1),),
                    timedelta(hours=1), buckets=8)
SHOPS = FeatureView("shops", Entity("shop", (EntityKey("shop_code", "string"),)),
                    (Feature("rating", "float", 0.0), Feature("open", "bool", False)), timedelta(hours=1), buckets=8)
SHOPS_V2 = FeatureView("shops", SHOPS.entity, (*SHOPS.features, Feature("reviews", "int", 0)), SHOPS.ttl, buckets=8)
PREFIX = "u"


class FakeRedis:
    """Hashes in a dict; counts round trips (an awaited command or pipeline execute)."""

    def __init__(self) -> None:
        self.hashes: dict[bytes, dict[bytes, bytes]] = {}
        self.round_trips = 0
        self.commands: list[tuple] = []
        self.scripts: set[str] = set()

    def run(self, command: tuple):
        self.commands.append(command)
        name, *args = command
        if name == "HGETALL":
            return dict(self.hashes.get(args[0], {}))
        if name == "HMGET":
            return [self.hashes.get(args[0], {}).get(f) for f in args[1:]]
        assert name == "EVALSHA" and args[0] == GET_MANY_SHA
        if GET_MANY_SHA not in self.scripts:
            from redis.exceptions import NoScriptError
            raise NoScriptError("NOSCRIPT")
        n = args[1]
        keys, fields = args[2:2 + n], args[2 + n:]
        assert len(fields) == n
        return [self.hashes.get(k, {}).get(f) for k, f in zip(keys, fields)]

    async def execute_command(self, *command):
        self.round_trips += 1
        return self.run(command)

    async def script_load(self, script):
        self.scripts.add(GET_MANY_SHA)

    def pipeline(self, transaction=False):
        return FakePipeline(self)

    async def aclose(self):
        pass


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis, self.queued = redis, []

    def hgetall(self, key):
        self.queued.append(("HGETALL", key.encode()))

    def execute_command(self, *command):
        self.queued.append(command)

    async def execute(self):
        self.redis.round_trips += 1
        replies = [self.redis.run(c) for c in self.queued]
        if any(isinstance(r, Exception) for r in replies):
            raise next(r for r in replies if isinstance(r, Exception))
        return replies


def store(redis: FakeRedis, view: FeatureView, version: int, keys, columns, as_of_ms: int) -> None:
    """What a full sync leaves: the rows in their buckets and the meta hash pointing at them."""
    fields = layout.fields(keys)
    values = layout.encode(view, as_of_ms, columns)
    for field, bucket, value in zip(fields, layout.bucket_of(view, keys).tolist(), values):
        redis.hashes.setdefault(layout.bucket_key(PREFIX, view, version, bucket).encode(), {})[field] = value
    redis.hashes[layout.meta_key(PREFIX, view).encode()] = {
        b"version": b"%d" % version, b"as_of_ms": b"%d" % as_of_ms, b"rows": b"%d" % len(fields),
        b"fingerprint": view.fingerprint.encode()}


def reader(redis: FakeRedis, views, cluster: bool = False) -> ViewReader:
    r = ViewReader(RedisSettings(prefix=PREFIX, cluster=cluster), FeatureSettings(), views, GatewayMetrics())
    r._client = redis
    return r


def names(n: int) -> list[bytes]:
    return layout.encode_fields(SHOPS.entity, {"shop_code": [f"shop {{{i}}}\r\n-é" for i in range(n)]})


def seeded() -> FakeRedis:
    redis = FakeRedis()
    ids = np.arange(1, 301, dtype=np.int64)
    store(redis, USERS, 4, ids, {"clicks": ids * 10}, 1_000)
    shops = names(300)
    store(redis, SHOPS, 2, shops, {"rating": np.arange(300, dtype=np.float32) / 2, "open": np.arange(300) % 2 == 1},
          2_000)
    return redis


def test_an_int_view_and_a_string_view_are_read_in_one_round_trip():
    redis = seeded()

    async def run():
        r = reader(redis, {"users": USERS, "shops": SHOPS})
        await r.refresh()
        await r.read({"users": np.array([1, 2]), "shops": names(2)}, 1.0)  # loads the script (NOSCRIPT)
        redis.round_trips, redis.commands = 0, []
        ids = np.array([300, 7, 999, 7, *range(8, 104)], dtype=np.int64)  # 100 rows, a repeat, an unknown
        shops = [*names(99), b"never seen"]
        got = await r.read({"users": ids, "shops": shops}, 1.0)
        return got, redis.round_trips, redis.commands

    got, round_trips, commands = asyncio.run(run())
    assert round_trips == 1 and [c[0] for c in commands] == ["EVALSHA"]  # one script call for both views
    users, shops = got["users"], got["shops"]
    assert users.view == USERS and shops.view == SHOPS
    assert users.present.tolist() == [True, True, False, True] + [True] * 96
    assert users.records["clicks"][:4].tolist() == [3000, 70, 0, 70]
    assert shops.present.tolist() == [True] * 99 + [False]
    assert shops.records["rating"][:3].tolist() == [0.0, 0.5, 1.0]
    assert shops.records["open"][:3].tolist() == [0, 1, 0]
    assert (users.records["as_of_ms"][0], shops.records["as_of_ms"][0]) == (1_000, 2_000)


def test_one_entity_and_a_cluster_read_with_hmget_still_in_one_round_trip():
    redis = seeded()
    redis.scripts.add(GET_MANY_SHA)  # loaded by an earlier request

    async def run(cluster):
        r = reader(redis, {"users": USERS, "shops": SHOPS}, cluster=cluster)
        await r.refresh()
        redis.round_trips, redis.commands = 0, []
        got = await r.read({"users": np.array([5]) if not cluster else np.array([5, 6, 13]), "shops": names(3)}, 1.0)
        return got, redis.round_trips, [c[0] for c in redis.commands]

    got, round_trips, commands = asyncio.run(run(False))  # two views: one script call
    assert round_trips == 1 and commands == ["EVALSHA"] and got["users"].records["clicks"].tolist() == [50]

    async def one_entity():
        r = reader(redis, {"users": USERS, "shops": SHOPS})
        await r.refresh()
        redis.round_trips, redis.commands = 0, []
        got = await r.read({"users": np.array([5])}, 1.0)
        return got, redis.round_trips, redis.commands

    got, round_trips, commands = asyncio.run(one_entity())  # one view, one bucket: a plain HMGET
    assert round_trips == 1 and commands == [("HMGET", layout.bucket_key(PREFIX, USERS, 4, 5).encode(), b"5")]
    assert got["users"].records["clicks"].tolist() == [50]
    got, round_trips, commands = asyncio.run(run(True))  # one HMGET per bucket, none spans two slots
    assert round_trips == 1 and set(commands) == {"HMGET"}
    assert got["users"].records["clicks"].tolist() == [50, 60, 130] and got["shops"].present.all()
    assert got["shops"].records["rating"].tolist() == [0.0, 0.5, 1.0]


def test_the_old_schema_serves_until_the_new_one_is_synced():
    redis = seeded()
    assert SHOPS_V2.version != SHOPS.version

    async def run():
        r = reader(redis, {"shops": (SHOPS_V2, SHOPS)})
        await r.refresh()
        before = (await r.read({"shops": names(2)}, 1.0))["shops"]
        shops = names(300)
        store(redis, SHOPS_V2, 1, shops, {"rating": np.full(300, 9.0), "reviews": np.arange(300)}, 3_000)
        await r.refresh()
        after = (await r.read({"shops": names(2)}, 1.0))["shops"]
        return before, after, r.live("shops")

    before, after, live = asyncio.run(run())
    assert before.view == SHOPS and before.present.all() and before.records["rating"].tolist() == [0.0, 0.5]
    assert "reviews" not in before.records.dtype.names
    assert after.view == SHOPS_V2 and live.view == SHOPS_V2 and live.version == 1
    assert after.records["reviews"].tolist() == [0, 1] and after.records["rating"].tolist() == [9.0, 9.0]


def test_a_view_without_a_live_version_reads_as_absent_without_a_command():
    redis = FakeRedis()

    async def run():
        r = reader(redis, {"shops": SHOPS})
        await r.refresh()
        redis.round_trips = 0
        return await r.read({"shops": names(2)}, 1.0), redis.round_trips

    got, round_trips = asyncio.run(run())
    assert round_trips == 0 and not got["shops"].present.any() and got["shops"].view == SHOPS


class SlowToCancel(FakeRedis):
    """A cluster client that, cancelled, finishes a pause of its own and raises its own error (as
    redis-py's cluster client was seen to while a failover was under way)."""

    async def execute_command(self, *command):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)
            raise ConnectionError("cluster is down") from None


def test_on_a_cluster_a_read_ends_at_its_timeout_even_if_the_client_is_slow_to_cancel():
    redis = SlowToCancel()
    ids = np.arange(1, 4, dtype=np.int64)
    store(redis, USERS, 4, ids, {"clicks": ids}, 1_000)
    users = reader(redis, {"users": USERS}, cluster=True)

    async def run():
        await users.refresh()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreUnavailable) as err:
            await users.read({"users": np.array([1], dtype=np.int64)}, 0.05)
        took = loop.time() - started
        await asyncio.sleep(0.4)  # the abandoned command ends by itself, its error dropped
        return err.value.reason, took

    reason, took = asyncio.run(run())
    assert reason == "timeout" and took < 0.2


def test_on_a_cluster_a_read_within_its_timeout_answers():
    redis = FakeRedis()
    ids = np.arange(1, 4, dtype=np.int64)
    store(redis, USERS, 4, ids, {"clicks": ids * 10}, 1_000)
    users = reader(redis, {"users": USERS}, cluster=True)

    async def run():
        await users.refresh()
        return (await users.read({"users": ids}, 1.0))["users"]

    assert asyncio.run(run()).records["clicks"].tolist() == [10, 20, 30]
