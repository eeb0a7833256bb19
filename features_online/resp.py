"""A bare blocking Redis connection for the sync's writers: framed commands out, one-line replies in.

A cold Spark worker that imports redis-py pays about 0.12 s before its first row (redis-py pulls
in asyncio and, where it is installed, OpenTelemetry), some 8% of a session's first full sync of
1M rows on 2 cores. The writers send only commands they frame themselves (HSET, EXPIRE) whose
replies are single lines (``:<n>``, ``+OK``, ``-ERR ...``), so a socket and a line reader do.

Used for plain ``redis://host:port/db`` and ``rediss://`` URLs (TLS with the system's CAs and a
host name check, as redis-py by default), password from the URL or the settings. A URL with
query options, a Unix socket or a cluster goes through redis-py instead (:func:`supports`).
"""

from __future__ import annotations

import socket
from typing import Any, Iterable
from urllib.parse import unquote, urlsplit

from features_online.redis_client import ClientSpec


class ReplyError(RuntimeError):
    """Redis answered a command with an error (or with something the writer never asked for)."""


def supports(spec: ClientSpec) -> bool:
    """Whether :class:`Connection` speaks for ``spec`` exactly as redis-py would."""
    url = urlsplit(spec.url)
    return not spec.cluster and url.scheme in ("redis", "rediss") and not url.query


class Connection:
    def __init__(self, spec: ClientSpec) -> None:
        url = urlsplit(spec.url)
        host = url.hostname or "localhost"
        sock = socket.create_connection((host, url.port or 6379), timeout=spec.options.get("socket_connect_timeout"))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if url.scheme == "rediss":
                import ssl

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            sock.settimeout(spec.options.get("socket_timeout"))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.buffer = bytearray()
        password = unquote(url.password) if url.password else spec.options.get("password")
        db = int(unquote(url.path).replace("/", "") or 0)
        try:
            if password:
                user = [unquote(url.username).encode()] if url.username else []
                self.call(b"AUTH", *user, password.encode())
            if db:
                self.call(b"SELECT", b"%d" % db)
        except BaseException:
            self.close()
            raise

    def send(self, chunks: Iterable[Any]) -> None:
        """Send the chunks (bytes or memoryviews) of one or more framed commands."""
        for chunk in chunks:
            self.sock.sendall(chunk)

    def read_reply(self) -> bytes:
        """The next reply: an integer or status line (without its type byte); errors raise."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.buffer += data
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 2]
        if line[:1] == b"-":
            raise ReplyError(line[1:].decode(errors="replace"))
        if line[:1] not in (b":", b"+"):
            raise ReplyError(f"unexpected reply from Redis: {line[:32]!r}")
        return line[1:]

    def call(self, *args: bytes) -> bytes:
        self.send([b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)])
        return self.read_reply()

    def close(self) -> None:
        self.sock.close()
