"""The Redis protocol mlgate writes itself (features_online/wire.py): every byte is redis-py's.
The partition writer's HSET commands carry the layout's fields and values; the commands it and
the gateway's connections pack are framed as redis-py frames them. Which Redis URLs the writers
reach with a bare socket, and how it reads replies."""

import socket
from datetime import timedelta

import numpy as np
import pytest
from redis.connection import Connection

from features_online import layout, wire
from features_online.definitions import Entity, Feature, FeatureView
from features_online.redis_client import ClientSpec

TINY = FeatureView(name="tiny", version=2, entity=Entity("user", "user_id"), ttl=timedelta(hours=1),
                   features=(Feature("clicks", "long", 0), Feature("spend", "double", 1.5)), buckets=8)


def parse_commands(blob: bytes) -> list[list[bytes]]:
    """A strict RESP array-of-bulk-strings parser (what Redis accepts from a client)."""
    commands, i = [], 0
    while i < len(blob):
        assert blob[i:i + 1] == b"*"
        end = blob.index(b"\r\n", i)
        count, i = int(blob[i + 1:end]), end + 2
        args = []
        for _ in range(count):
            assert blob[i:i + 1] == b"$"
            end = blob.index(b"\r\n", i)
            size, i = int(blob[i + 1:end]), end + 2
            args.append(blob[i:i + size])
            assert blob[i + size:i + size + 2] == b"\r\n"
            i += size + 2
        commands.append(args)
    return commands


def frame(ids, batch_rows=1000):
    ids = np.asarray(ids, dtype=np.int64)
    columns = {"clicks": np.arange(len(ids)), "spend": np.arange(len(ids)) * 0.5}
    records = layout.encode_records(TINY, 1_700_000_000_000 + np.arange(len(ids)), columns)
    values = layout.encode(TINY, 1_700_000_000_000 + np.arange(len(ids)), columns)
    keys = [k.encode() for k in layout.bucket_keys("p", TINY, 3)]
    commands = list(wire.hset_commands(keys, layout.bucket_of(TINY, ids), ids, records, batch_rows))
    return commands, values, keys


def test_hset_commands_carry_every_row_once_as_the_layout_field_and_value():
    ids = [0, 7, 8, 15, 9, 123_456, -3, 99, 100, 10**15 + 1, 42, 1_000_000]
    commands, values, keys = frame(ids)
    written = {}
    for bucket, chunks, rows in commands:
        [args] = parse_commands(b"".join(bytes(c) for c in chunks))
        assert args[0] == b"HSET" and args[1] == keys[bucket] and len(args) == 2 + 2 * rows
        for field, value in zip(args[2::2], args[3::2]):
            assert field not in written
            written[field] = (args[1], value)
    expected_bucket = layout.bucket_of(TINY, np.array(ids))
    assert written == {layout.field(i): (keys[b], v) for i, b, v in zip(ids, expected_bucket.tolist(), values)}


def test_framing_is_byte_identical_to_redis_py_packing():
    ids = np.arange(1, 40) * 8  # one bucket, ids of 1 to 3 digits
    commands, values, keys = frame(ids)
    ours = b"".join(b"".join(bytes(c) for c in chunks) for _, chunks, _ in commands)
    by_digits = {}  # rows are framed in groups of equal id length, ascending within each
    for i, v in zip(ids.tolist(), values):
        by_digits.setdefault(len(str(i)), []).extend([layout.field(i), v])
    theirs = b"".join(b"".join(Connection().pack_command("HSET", keys[0], *pairs))
                      for _, pairs in sorted(by_digits.items()))
    assert ours == theirs


def test_no_command_has_more_than_batch_rows_fields():
    commands, _, _ = frame(np.arange(1, 200), batch_rows=7)
    assert max(rows for _, _, rows in commands) == 7
    assert sum(rows for _, _, rows in commands) == 199


def test_pack_is_redis_pys_packing_of_the_writers_commands():
    for command in ((b"EXPIRE", b"p:fv:{tiny:2:3:b007}", b"172800"), (b"AUTH", b"user", b"pw \r\n"),
                    (b"SELECT", b"3"), (b"CONFIG GET", b"maxmemory"), ("PING",)):
        assert wire.pack(command) == b"".join(Connection().pack_command(*command))


def test_pack_takes_only_bytes_unless_given_an_encoder():
    with pytest.raises(TypeError, match="must be bytes, not int"):
        wire.pack((b"EXPIRE", b"k", 600))
    assert wire.pack((b"EXPIRE", b"k", 600), encode=lambda v: str(v).encode()) == wire.pack((b"EXPIRE", b"k", b"600"))


def test_plain_urls_use_the_bare_connection_and_anything_else_redis_py():
    assert wire.supports(ClientSpec("redis://127.0.0.1:6379/0", False))
    assert wire.supports(ClientSpec("rediss://user:pw@cache.internal:6380/2", False))
    assert not wire.supports(ClientSpec("redis://127.0.0.1:6379/0", True))  # a cluster
    assert not wire.supports(ClientSpec("redis://127.0.0.1:6379?db=2&ssl_cert_reqs=none", False))
    assert not wire.supports(ClientSpec("unix:///run/redis.sock", False))


def test_replies_are_read_in_order_across_reads_and_errors_raise():
    ours, server = socket.socketpair()
    conn = wire.Connection.__new__(wire.Connection)
    conn.sock, conn.buffer = ours, bytearray()
    server.sendall(b":1000\r\n+OK\r\n:")
    assert conn.read_reply() == b"1000" and conn.read_reply() == b"OK"
    server.sendall(b"7\r\n-WRONGTYPE Operation against a key\r\n*1\r\n")
    assert conn.read_reply() == b"7"
    with pytest.raises(wire.ReplyError, match="WRONGTYPE"):
        conn.read_reply()
    with pytest.raises(wire.ReplyError, match="unexpected"):
        conn.read_reply()
    server.close()
    with pytest.raises(ConnectionError):
        conn.read_reply()
    conn.close()


def test_a_call_sends_redis_pys_bytes_and_returns_its_reply():
    ours, server = socket.socketpair()
    conn = wire.Connection.__new__(wire.Connection)
    conn.sock, conn.buffer = ours, bytearray()
    server.sendall(b"+OK\r\n")
    assert conn.call(b"SELECT", b"3") == b"OK"
    assert server.recv(100) == b"".join(Connection().pack_command(b"SELECT", b"3"))
    conn.close()
    server.close()
