"""The gateway's asyncio Redis client: same bytes on the wire as redis-py, packed in one join."""

from __future__ import annotations

import redis.asyncio.connection as aioconn

from features_online.redis_client import connect_async
from features_online.settings import RedisSettings

COMMANDS = [
    ("EVALSHA", "a" * 40, 3, b"k:{v:1:1:b001}", b"k:{v:1:1:b002}", b"k:{v:1:1:b001}", b"7", b"-12", b"1000"),
    ("HMGET", b"key", b"42"),
    ("CONFIG GET", "maxmemory"),
    (b"HSET", "k\u00e9y", 1.5, 7, memoryview(b"raw\x00bytes"), bytearray(b"x" * 10_000)),
]


def test_packed_bytes_are_redis_pys_for_every_kind_of_argument():
    ours = connect_async(RedisSettings(url="redis://127.0.0.1:1/0")).connection_pool
    fast, reference = ours.make_connection(), aioconn.Connection()
    for command in COMMANDS:
        assert b"".join(fast.pack_command(*command)) == b"".join(bytes(c) for c in reference.pack_command(*command))


def test_tls_and_unix_urls_keep_their_connection_kind():
    for url, kind in (("redis://h:1/0", aioconn.Connection), ("rediss://h:1/0", aioconn.SSLConnection),
                      ("unix:///tmp/r.sock", aioconn.UnixDomainSocketConnection)):
        cls = connect_async(RedisSettings(url=url)).connection_pool.connection_class
        assert issubclass(cls, kind) and cls.__name__ == f"Linear{kind.__name__}"


def test_the_cluster_client_resends_a_failed_command_once_without_backoff():
    """A dead shard must fail within the deadline with time left for the batch-score fallback."""
    from redis.backoff import NoBackoff

    from features_online.redis_client import CLUSTER_RETRIES

    client = connect_async(RedisSettings(url="redis://127.0.0.1:1/0", cluster=True))
    assert client.retry.get_retries() == CLUSTER_RETRIES == 1
    assert isinstance(client.retry._backoff, NoBackoff)
