"""The Redis protocol that mlgate frames itself: every hand-written byte of it is in this module.

redis-py with hiredis does everything else: it parses the gateway's replies, runs clusters, pools,
scripts and the lease, and sends the sync's other commands. Three things stay here because
``loadtests/bench_wire.py`` measures redis-py slower on a hot path (figures in
loadtests/RESULTS.md, "one Redis wire"):

- :func:`pack`: one command as RESP, in one join. The gateway's asyncio connections pack with it
  (:class:`LinearPacking`): redis-py's packer encodes every argument in Python first, which
  slows the 100-entity read.
- :func:`hset_commands`: the sync writer's HSET commands, framed by numpy with no Python object
  per row, several times the rows/s of redis-py's pipelined ``hset``; :func:`hset_field_commands`
  frames rows whose fields are bytes (string and composite keys) in one join per command.
- :class:`Connection`: a bare blocking socket that the writers use for a single plain Redis, so a
  cold Spark worker never imports redis-py (a noticeable share of a first sync). It sends only
  what this module frames and reads one-line replies.

Every byte is redis-py's: unit tests compare them with redis-py's own packing.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import numpy as np

if TYPE_CHECKING:
    from features_online.redis_client import ClientSpec


def pack(args: Sequence[Any], encode: Callable[[Any], Any] | None = None) -> bytes:
    """One command (its arguments: bytes, or anything ``encode`` turns into bytes) as RESP.

    As redis-py: a first argument with spaces (``"CONFIG GET"``) is split into several."""
    if isinstance(args[0], str):
        args = (*args[0].encode().split(), *args[1:])
    elif b" " in args[0]:
        args = (*args[0].split(), *args[1:])
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is not bytes:
            if encode is None:
                raise TypeError(f"a Redis argument here must be bytes, not {type(arg).__name__}")
            arg = encode(arg)
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


class LinearPacking:
    """``pack_command`` by :func:`pack`, for redis-py's asyncio connection classes (mixed in first).

    Arguments other than bytes go through the connection's own encoder, as in redis-py."""

    def pack_command(self, *args):
        return [pack(args, self.encoder.encode)]


_POW10 = 10 ** np.arange(1, 19, dtype=np.int64)  # ids below 10**k have at most k digits


def frame_hset_rows(ids: np.ndarray, records: np.ndarray) -> list[tuple[np.ndarray, bytes, int]]:
    """The ``<id> <value>`` argument pairs of rows as RESP bytes, grouped by framed size.

    Returns ``(positions, framed, size)`` per group: the row positions (ascending), and their
    pairs back to back, ``size`` bytes each.
    """
    ids = np.asarray(ids, dtype=np.int64)
    value_size = records.dtype.itemsize
    digits = 1 + np.searchsorted(_POW10, np.abs(ids), side="right")
    negative = ids < 0
    kind = digits * 2 + negative
    values = records.view(np.dtype((np.void, value_size)))
    kinds = np.unique(kind).tolist()
    groups = []
    for k in kinds:
        positions = np.flatnonzero(kind == k) if len(kinds) > 1 else np.arange(len(ids))
        n_digits, sign = divmod(k, 2)
        group_ids = np.abs(ids[positions])
        text_len = n_digits + sign
        head = b"$%d\r\n" % text_len + (b"-" if sign else b"")
        middle = b"\r\n$%d\r\n" % value_size
        dtype = np.dtype([("head", f"S{len(head)}"), ("id", "u1", (n_digits,)),
                          ("middle", f"S{len(middle)}"), ("value", values.dtype), ("end", "S2")])
        framed = np.empty(len(positions), dtype=dtype)
        framed["head"] = head
        scale = 10 ** np.arange(n_digits - 1, -1, -1, dtype=np.int64)
        framed["id"] = (group_ids[:, None] // scale % 10 + 48).astype(np.uint8)
        framed["middle"] = middle
        framed["value"] = values[positions]
        framed["end"] = b"\r\n"
        groups.append((positions, framed.tobytes(), dtype.itemsize))
    return groups


def hset_commands(keys: list[bytes], buckets: np.ndarray, ids: np.ndarray, records: np.ndarray,
                  batch_rows: int) -> Iterator[tuple[int, list[Any], int]]:
    """``(bucket, chunks, rows)`` per ``HSET <key of the bucket> <id> <record> ...`` command of at
    most ``batch_rows`` fields: ``chunks`` joined are the whole command.

    Values are fixed-size records (their ``$<size>`` header never changes) and ids become decimal
    digits arithmetically; rows whose ids have as many digits have the same framed size and are
    framed together."""
    order = np.argsort(buckets, kind="stable")
    buckets, ids, records = buckets[order], ids[order], records[order]
    for positions, framed, size in frame_hset_rows(ids, records):
        group_buckets = buckets[positions]  # ascending: positions keep the bucket order
        view = memoryview(framed)
        starts = np.flatnonzero(np.diff(group_buckets)) + 1
        bounds = [0, *starts.tolist(), len(group_buckets)]
        for start, end in pairwise(bounds):
            bucket = int(group_buckets[start])
            key = keys[bucket]
            for lo in range(start, end, batch_rows):
                hi = min(lo + batch_rows, end)
                head = b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%b\r\n" % (2 + 2 * (hi - lo), len(key), key)
                yield bucket, [head, view[lo * size:hi * size]], hi - lo


def hset_field_commands(keys: list[bytes], buckets: np.ndarray, fields: Sequence[bytes], records: np.ndarray,
                        batch_rows: int) -> Iterator[tuple[int, list[Any], int]]:
    """As :func:`hset_commands`, for rows whose hash fields are bytes (string and composite keys,
    :func:`features_online.layout.encode_fields`): ``(bucket, chunks, rows)`` per command.

    Every field is a RESP bulk string, ``$<byte length>\\r\\n<bytes>\\r\\n``: whatever it holds
    (CR LF, braces, spaces, any byte) it is one argument, and the key, which names the bucket,
    never depends on it."""
    if not len(fields):
        return
    value_size = records.dtype.itemsize
    order = np.argsort(buckets, kind="stable")
    buckets = buckets[order]
    raw = records[order].tobytes()
    middle = b"\r\n$%d\r\n" % value_size
    starts = np.flatnonzero(np.diff(buckets)) + 1
    positions = order.tolist()
    for start, end in pairwise([0, *starts.tolist(), len(buckets)]):
        bucket = int(buckets[start])
        key = keys[bucket]
        for lo in range(start, end, batch_rows):
            hi = min(lo + batch_rows, end)
            parts = [b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%b\r\n" % (2 + 2 * (hi - lo), len(key), key)]
            for row in range(lo, hi):
                field = fields[positions[row]]
                parts += (b"$%d\r\n" % len(field), field, middle,
                          raw[row * value_size:(row + 1) * value_size], b"\r\n")
            yield bucket, [b"".join(parts)], hi - lo


class ReplyError(RuntimeError):
    """Redis answered a command with an error (or with something the writer never asked for)."""


def supports(spec: ClientSpec) -> bool:
    """Whether :class:`Connection` speaks for ``spec`` exactly as redis-py would: a plain
    ``redis://host:port/db`` or ``rediss://`` URL. A URL with query options, a Unix socket or a
    cluster goes through redis-py instead."""
    url = urlsplit(spec.url)
    return not spec.cluster and url.scheme in ("redis", "rediss") and not url.query


class Connection:
    """A bare blocking connection to one Redis: framed commands out, one-line replies in.

    The writers send only commands this module frames (HSET, EXPIRE; AUTH and SELECT here), whose
    replies are single lines (``:<n>``, ``+OK``, ``-ERR ...``). TLS for ``rediss://`` with the
    system's CAs and a host name check, as redis-py by default; password from the URL or the
    spec's options, database from the URL's path; the spec's connect and socket timeouts."""

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
        self.send([pack(args)])
        return self.read_reply()

    def close(self) -> None:
        self.sock.close()
