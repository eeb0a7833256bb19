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
from features_online.definitions import Entity, EntityKey, Feature, FeatureView
from features_online.redis_client import ClientSpec

TINY = FeatureView(name="tiny", entity=Entity("user", (EntityKey("user_id"),)), ttl=timedelta(hours=1),
                   features=(Feature("clicks", "long", 0), Feature("spend", "double", 1.5)), buckets=8)
NAMED = FeatureView(name="named", entity=Entity("shop", (EntityKey("shop_code", "string"),)), ttl=timedelta(hours=1),
                    features=TINY.features, buckets=8)
# keys that would break a hand-made command or hash tag if they were not length-prefixed
NASTY = ["plain", "{tag}", "a b", "x\r\n*3\r\n$3\r\nDEL", "}{", "", "ümlaut-ß-日本", "$5", ":", "9" * 200]


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


def frame_fields(names, batch_rows=1000):
    fields = layout.encode_fields(NAMED.entity, {"shop_code": names})
    columns = {"clicks": np.arange(len(names)), "spend": np.arange(len(names)) * 0.5}
    records = layout.encode_records(NAMED, 1_700_000_000_000 + np.arange(len(names)), columns)
    values = layout.encode(NAMED, 1_700_000_000_000 + np.arange(len(names)), columns)
    keys = [k.encode() for k in layout.bucket_keys("p", NAMED, 3)]
    buckets = layout.bucket_of(NAMED, fields)
    return list(wire.hset_field_commands(keys, buckets, fields, records, batch_rows)), fields, values, keys, buckets


def test_byte_fields_land_as_exactly_that_field_in_the_right_bucket():
    commands, fields, values, keys, buckets = frame_fields(NASTY)
    written = {}
    for bucket, chunks, rows in commands:
        [args] = parse_commands(b"".join(bytes(c) for c in chunks))  # one command, nothing injected
        assert args[:2] == [b"HSET", keys[bucket]] and len(args) == 2 + 2 * rows
        for field, value in zip(args[2::2], args[3::2]):
            assert field not in written
            written[field] = (args[1], value)
    assert written == {f: (keys[b], v) for f, b, v in zip(fields, buckets.tolist(), values)}
    assert b"x\r\n*3\r\n$3\r\nDEL" in written and "ümlaut-ß-日本".encode() in written


def test_byte_field_framing_is_byte_identical_to_redis_py_packing():
    commands, fields, values, keys, buckets = frame_fields(NASTY, batch_rows=3)
    ours = [b"".join(bytes(c) for c in chunks) for _, chunks, _ in commands]
    order = np.argsort(buckets, kind="stable").tolist()  # bucket order, input order within a bucket
    theirs = []
    for bucket in sorted(set(buckets.tolist())):
        rows = [i for i in order if buckets[i] == bucket]
        for lo in range(0, len(rows), 3):
            pairs = [part for i in rows[lo:lo + 3] for part in (fields[i], values[i])]
            theirs.append(b"".join(Connection().pack_command("HSET", keys[bucket], *pairs)))
    assert ours == theirs
    assert list(wire.hset_field_commands(keys, np.array([], dtype=np.int64), [], values[:0], 3)) == []


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
