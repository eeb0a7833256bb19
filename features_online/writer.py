"""What Spark runs in each partition of a sync: Arrow batches in, HSET commands out, counts back.

This code runs in Spark's Python workers, where every import is paid again by each cold worker:
it needs numpy, pyarrow and the layout, and nothing that pulls in pydantic or pandas; redis-py
only for a cluster (:class:`features_online.wire.Connection` talks to a single Redis). Connection
details arrive as a plain :class:`ClientSpec`. The Arrow batches come from ``mapInArrow`` or from the
writer's own share of a Parquet table's row groups (:mod:`features_online.parquet_pieces`).

Per Arrow batch, the rows are grouped by bucket and written as ``HSET <bucket key> <field>
<value> ...`` commands of at most ``batch_rows`` fields. A single ``int64`` key (the fast path):
field = the id's decimal digits, framed as RESP by numpy (:func:`features_online.wire.hset_commands`)
instead of by redis-py one argument at a time, no Python object per row (2.3-2.5x the rows/s of
redis-py's pipelined ``hset``). String and composite keys: fields from
:func:`features_online.layout.encode_fields` (the Arrow string buffers read directly, no pandas),
framed as binary-safe bulk strings (:func:`features_online.wire.hset_field_commands`). A row
without a key fails the task (nothing flips); a feature without a value gets its default. Each command goes
to the connection of the node that owns its bucket (one connection without a cluster); replies
are read one batch behind, so Redis works on one batch while the next is being framed. An error
reply raises, the task fails, nothing flips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from features_online import layout, wire
from features_online.definitions import EntityKey, Feature, FeatureView
from features_online.redis_client import ClientSpec, connect_spec


class _Connections:
    """One connection per Redis node that owns a bucket; replies read in order, later.

    A bare socket (:class:`features_online.wire.Connection`) for a plain Redis URL; redis-py connections for
    a cluster (node of each bucket from its slot) or a URL with options."""

    def __init__(self, spec: ClientSpec, keys: list[bytes]) -> None:
        if wire.supports(spec):
            self.client = None
            raw = wire.Connection(spec)
            self.by_node: dict[str, tuple[Any, Any]] = {"": (None, raw)}  # node name -> (pool, connection)
            self.of_bucket = [raw] * len(keys)
            return
        self.client = connect_spec(spec)
        self.cluster = hasattr(self.client, "get_node_from_key")
        self.by_node = {}
        self.of_bucket = [self._connection(key) for key in keys]

    def _connection(self, key: bytes):
        if self.cluster:
            node = self.client.get_node_from_key(key)
            name, pool = node.name, self.client.get_redis_connection(node).connection_pool
        else:
            name, pool = "", self.client.connection_pool
        if name not in self.by_node:
            self.by_node[name] = (pool, _RedisPy(pool.get_connection()))
        return self.by_node[name][1]

    def send(self, commands: list[tuple[int, list[Any], int]]) -> list[tuple[Any, list[int]]]:
        """Send commands (bucket, chunks, rows); returns what to :meth:`read` for them later."""
        chunks: dict[int, list[Any]] = {}
        counts: dict[int, list[int]] = {}
        conns = {}
        for bucket, parts, rows in commands:
            conn = self.of_bucket[bucket]
            conns[id(conn)] = conn
            chunks.setdefault(id(conn), []).extend(parts)
            counts.setdefault(id(conn), []).append(rows)
        for key, conn in conns.items():
            conn.send(chunks[key])
        return [(conns[key], counts[key]) for key in conns]

    @staticmethod
    def read(sent: list[tuple[Any, list[int]]]) -> int:
        """Read the replies of commands sent earlier; rows acknowledged (an error reply raises)."""
        acked = 0
        for conn, counts in sent:
            for rows in counts:
                conn.read_reply()
                acked += rows
        return acked

    def close(self) -> None:
        for pool, conn in self.by_node.values():
            if pool is None:
                conn.close()
            else:
                pool.release(conn.conn)
        if self.client is not None:
            self.client.close()


@dataclass(frozen=True)
class _RedisPy:
    """A redis-py connection with the two calls the writer makes of a :class:`wire.Connection`."""

    conn: Any

    def send(self, chunks: list[Any]) -> None:
        self.conn.send_packed_command(chunks, check_health=False)

    def read_reply(self) -> Any:
        return self.conn.read_response()


@dataclass(frozen=True)
class PartitionWriter:
    """What each partition of a sync runs: through ``mapInArrow`` (called with the partition's
    Arrow batches, one output row ``(rows, written)``) or through ``mapPartitions`` over a
    Parquet table's row groups (:meth:`write_pieces`). ``rows``: rows received; ``written``:
    rows whose HSET Redis acknowledged."""

    client: ClientSpec
    view: FeatureView
    prefix: str
    version: int
    batch_rows: int
    ttl_s: int

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        """``mapInArrow``: the partition's Arrow batches in, one counts row out."""
        yield _counts(*self.write(batches))

    @property
    def columns(self) -> list[str]:
        """The columns the writer reads: the entity's key columns, ``as_of_ms``, the features."""
        return [*self.view.entity.key_names, "as_of_ms", *self.view.feature_names]

    def write_pieces(self, shares: Iterator[list[Any]]) -> Iterator[tuple[int, int]]:
        """``mapPartitions`` over a :class:`~features_online.parquet_pieces.ParquetTable`: this
        partition's row groups, decoded here; yields ``(rows, written)`` once."""
        from features_online import parquet_pieces

        yield self.write(parquet_pieces.read(shares, self.columns))

    def write(self, batches: Iterator[Any]) -> tuple[int, int]:
        """Write every row of the Arrow batches; returns (rows received, rows acknowledged)."""
        view = self.view
        keys = [k.encode() for k in layout.bucket_keys(self.prefix, view, self.version)]
        conns = _Connections(self.client, keys)
        rows = acked = 0
        touched: set[int] = set()
        behind: list = []
        try:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                records = layout.encode_records(view, _ids(batch, "as_of_ms"),
                                                {f.name: _feature(batch.column(f.name), f) for f in view.features})
                commands = self.commands(batch, keys, records)
                touched.update(bucket for bucket, _, _ in commands)
                sent = conns.send(commands)
                acked += conns.read(behind)
                behind, rows = sent, rows + batch.num_rows
            acked += conns.read(behind)
            # Every key gets its TTL: one EXPIRE per bucket this partition wrote.
            expire = [(b, [wire.pack((b"EXPIRE", keys[b], b"%d" % self.ttl_s))], 0) for b in sorted(touched)]
            conns.read(conns.send(expire))
        finally:
            conns.close()
        return rows, acked

    def commands(self, batch, keys: list[bytes], records: np.ndarray) -> list[tuple[int, list[Any], int]]:
        """The HSET commands of one batch's rows (``records`` row-aligned with it)."""
        entity = self.view.entity
        if entity.is_int:  # the fast path: decimal fields framed by numpy, bucket = id mod buckets
            ids = _ids(batch, entity.key_names[0])
            return list(wire.hset_commands(keys, layout.bucket_of(self.view, ids), ids, records, self.batch_rows))
        fields = layout.encode_fields(entity, {k.name: _key_values(batch, k) for k in entity.keys})
        return list(wire.hset_field_commands(keys, layout.bucket_of(self.view, fields), fields, records,
                                             self.batch_rows))


def _counts(rows: int, acked: int):
    """The one output row, built from buffers (``pa.array`` would import pandas)."""
    import pyarrow as pa

    columns = [pa.Array.from_buffers(pa.int64(), 1, [None, pa.py_buffer(np.array([n], dtype=np.int64))])
               for n in (rows, acked)]
    return pa.RecordBatch.from_arrays(columns, names=["rows", "written"])


def _ids(batch, name: str) -> np.ndarray:
    """Entity ids or as-of times: integers, never null."""
    column = batch.column(name)
    _no_nulls(column, name)
    return np.asarray(_numbers(column), dtype=np.int64)


def _no_nulls(column, name: str) -> None:
    if column.null_count:
        raise ValueError(f"{column.null_count} of {len(column)} rows have no {name} (null): every row "
                         "needs its entity key and as_of_ms")


_OFFSETS = {"string": np.int32, "binary": np.int32, "large_string": np.int64, "large_binary": np.int64}


def _key_values(batch, key: EntityKey) -> list:
    """One key column's values for :func:`layout.encode_fields`: ints, or each string's UTF-8
    bytes, sliced from the Arrow buffers (``to_pylist`` would build a str per row, pandas is
    not imported)."""
    column = batch.column(key.name)
    _no_nulls(column, key.name)
    if key.type == "int64":
        return np.asarray(_numbers(column), dtype=np.int64).tolist()
    offsets_type = _OFFSETS.get(str(column.type).replace("utf8", "string"))
    if offsets_type is None:  # e.g. dictionary-encoded: pyarrow's general path
        values = [v.encode() if isinstance(v, str) else bytes(v) for v in column.to_pylist()]
        _key_lengths(np.array([len(v) for v in values]), key)
        return values
    _, offsets, data = column.buffers()[:3]
    n, at = len(column), column.offset
    offsets = np.frombuffer(offsets, dtype=offsets_type, count=at + n + 1)[at:]
    _key_lengths(np.diff(offsets), key)
    first, last = int(offsets[0]), int(offsets[-1])
    blob = bytes(memoryview(data)[first:last]) if data is not None else b""
    bounds = (offsets - first).tolist()
    return [blob[a:b] for a, b in zip(bounds, bounds[1:])]


def _key_lengths(lengths: np.ndarray, key: EntityKey) -> None:
    """String keys of at most ``max_length`` bytes: the gateway refuses a longer key in a request,
    so a row stored under one could never be read (the sync fails, nothing flips)."""
    bad = lengths > key.max_length
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(lengths)} rows have a {key.name} longer than its max_length "
                         f"({key.max_length} bytes): requests could never name them; raise max_length in the "
                         "repository or fix the keys")


def _feature(column, feature: Feature) -> np.ndarray:
    """A feature column as numpy, nulls replaced by the feature's default (integers stay
    integers: no float round trip for longs)."""
    values, valid = _values(column)
    if valid is None:
        return values
    return np.where(valid, values, feature.default)


def _numbers(column) -> np.ndarray:
    """A numeric Arrow array as numpy, nulls as NaN (the layout turns them into the default)."""
    values, valid = _values(column)
    return values if valid is None else np.where(valid, values, np.nan)


_NUMERIC = {**{f"{s}int{b}": np.dtype(f"{s}int{b}") for s in ("", "u") for b in (8, 16, 32, 64)},
            "float": np.dtype("<f4"), "double": np.dtype("<f8")}
"""Arrow type names -> numpy dtypes (Arrow's ``float`` is 32 bits; numpy's ``float`` is 64)."""


def _values(column) -> tuple[np.ndarray, np.ndarray | None]:
    """A numeric or boolean Arrow array's values as numpy and its validity (None: no nulls).

    Reads the Arrow buffers directly: pyarrow's own ``to_numpy`` imports pandas, which would
    cost every cold Spark worker about half a second.
    """
    name = str(column.type)
    n, at = len(column), column.offset
    dtype = _NUMERIC.get(name)
    validity, data = column.buffers()[:2]
    if name == "bool":  # bit-packed, like the validity
        values = _bits(data, at, n)
    elif dtype is not None:
        values = np.frombuffer(data, dtype=dtype, count=n + at)[at:]
    else:  # anything else (decimal, ...): pyarrow's general path, nulls as NaN
        return np.array(column.to_pylist(), dtype=np.float64), None
    if not column.null_count:
        return values, None
    return values, _bits(validity, at, n)


def _bits(buffer, offset: int, n: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), bitorder="little")
    return bits[offset:offset + n].astype(bool)
