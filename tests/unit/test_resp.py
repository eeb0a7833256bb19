"""Which Redis URLs the sync's writers reach with a bare socket, and how they read replies."""

from __future__ import annotations

import socket

import pytest

from features_online import resp
from features_online.redis_client import ClientSpec


def test_plain_urls_use_the_bare_connection_and_anything_else_redis_py():
    assert resp.supports(ClientSpec("redis://127.0.0.1:6379/0", False))
    assert resp.supports(ClientSpec("rediss://user:pw@cache.internal:6380/2", False))
    assert not resp.supports(ClientSpec("redis://127.0.0.1:6379/0", True))  # a cluster
    assert not resp.supports(ClientSpec("redis://127.0.0.1:6379?db=2&ssl_cert_reqs=none", False))
    assert not resp.supports(ClientSpec("unix:///run/redis.sock", False))


def test_replies_are_read_in_order_across_reads_and_errors_raise():
    ours, server = socket.socketpair()
    conn = resp.Connection.__new__(resp.Connection)
    conn.sock, conn.buffer = ours, bytearray()
    server.sendall(b":1000\r\n+OK\r\n:")
    assert conn.read_reply() == b"1000" and conn.read_reply() == b"OK"
    server.sendall(b"7\r\n-WRONGTYPE Operation against a key\r\n*1\r\n")
    assert conn.read_reply() == b"7"
    with pytest.raises(resp.ReplyError, match="WRONGTYPE"):
        conn.read_reply()
    with pytest.raises(resp.ReplyError, match="unexpected"):
        conn.read_reply()
    server.close()
    with pytest.raises(ConnectionError):
        conn.read_reply()
    conn.close()
