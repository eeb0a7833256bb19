"""The Redis key and value format: a contract between the Spark writer and the gateway reader.

Keys (``P`` = configured prefix, default ``mlg``; ``V`` = the view's schema version, a digest of
its layout: see definitions.py)::

    P:fv:{<view>:V:<data version>:b<bucket>}   hash: entity field -> value
    P:fv:<view>:V:meta                         hash: live version, sync facts
    P:fv:<view>:V:sync-lock:{<the meta key>}   string: the running sync's lease

One data version of a view is ``view.buckets`` hashes: a sync writes them with HSETs of many
fields per command (far faster than one key per entity, see loadtests/RESULTS.md), every key
gets its TTL with one EXPIRE per bucket, a whole version retires with ``buckets`` EXPIREs instead
of a SCAN over millions of keys, and 100 entities still read in one round trip. The ``{...}``
part is the Redis Cluster hash tag: a version spreads over ``buckets`` slots. A version is
immutable once the meta hash points at it, except that an incremental sync overwrites single
entities in place (each HSET field atomic).

Entity fields (the hash field of an entity; binary-safe: Redis takes them as length-prefixed
bulk strings, so no key can change the command, the key or the hash tag, which depends only on
the bucket number):

- a single ``int64`` key: its decimal digits; bucket = id mod ``buckets`` (the fast path);
- a single ``string`` key: its UTF-8 bytes; bucket = CRC-32 of the field mod ``buckets``;
- a composite key: each part (decimal digits or UTF-8) as ``<byte length>:<bytes>``, back to
  back (unambiguous whatever the parts hold); bucket as for a string.

Values are fixed-size little-endian records: ``fmt`` (u8, = FORMAT), ``as_of_ms`` (i64, when the
values were computed), then every feature in definition order as f64 (``double``), f32
(``float``), i64 (``long``), i32 (``int``) or u8 (``bool``). No names, no per-field framing.
Golden-bytes tests pin all of this.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any, Mapping, Sequence, Union

import numpy as np

from features_online.definitions import FORMAT, Entity, FeatureView

STORAGE_DTYPES = {"double": "<f8", "float": "<f4", "long": "<i8", "int": "<i4", "bool": "u1"}
MODEL_DTYPES = {"double": np.float64, "float": np.float32, "long": np.int64, "int": np.int32, "bool": np.bool_}
"""The numpy dtype a model receives a stored feature as (that of its signature)."""

RowKeys = Union[np.ndarray, list]
"""The keys of some rows of one entity: an int64 array for a single ``int64`` key, else the
rows' encoded fields (:func:`encode_fields`)."""


@functools.cache
def record_dtype(view: FeatureView) -> np.dtype:
    return np.dtype([("fmt", "u1"), ("as_of_ms", "<i8")]
                    + [(f.name, STORAGE_DTYPES[f.dtype]) for f in view.features])


def meta_key(prefix: str, view: FeatureView) -> str:
    return f"{prefix}:fv:{view.name}:{view.version}:meta"


def lock_key(prefix: str, view: FeatureView) -> str:
    """The sync lease of the view. Its hash tag is the whole meta key, so on a Redis Cluster both
    live in one slot: the flip checks the lease and writes the meta hash in one script."""
    return f"{prefix}:fv:{view.name}:{view.version}:sync-lock:{{{meta_key(prefix, view)}}}"


def bucket_key(prefix: str, view: FeatureView, data_version: int, bucket: int) -> str:
    return f"{prefix}:fv:{{{view.name}:{view.version}:{data_version}:b{bucket:03d}}}"


def bucket_keys(prefix: str, view: FeatureView, data_version: int) -> list[str]:
    return [bucket_key(prefix, view, data_version, b) for b in range(view.buckets)]


def encode_fields(entity: Entity, columns: Mapping[str, Sequence[Any]]) -> list[bytes]:
    """The hash field of each row, from the values of each key column (ints or strings, already
    validated). For a single ``int64`` key use :func:`fields` on the int array instead."""
    parts = []
    for key in entity.keys:
        values = columns[key.name]
        if key.type == "int64":
            parts.append([b"%d" % int(v) for v in values])
        else:
            parts.append([v.encode() if isinstance(v, str) else bytes(v) for v in values])
    if len(parts) == 1:
        return parts[0]
    return [b"".join(b"%d:%s" % (len(p), p) for p in row) for row in zip(*parts)]


def field(entity_id: int) -> bytes:
    return b"%d" % int(entity_id)


def fields(keys: RowKeys) -> list[bytes]:
    """The hash field of each row."""
    if isinstance(keys, np.ndarray):
        return [b"%d" % i for i in keys.astype(np.int64, copy=False).tolist()]
    return list(keys)


def decode_field(entity: Entity, raw: bytes) -> dict[str, Any]:
    """The key values of a stored field (the inverse of :func:`encode_fields`)."""
    if len(entity.keys) == 1:
        key = entity.keys[0]
        return {key.name: int(raw) if key.type == "int64" else raw.decode()}
    values: dict[str, Any] = {}
    rest = raw
    for key in entity.keys:
        size, _, rest = rest.partition(b":")
        part, rest = rest[:int(size)], rest[int(size):]
        values[key.name] = int(part) if key.type == "int64" else part.decode()
    return values


def bucket_of(view: FeatureView, keys: RowKeys) -> np.ndarray:
    """The bucket of each row (int64 ids: id mod buckets; encoded fields: CRC-32 mod buckets)."""
    if isinstance(keys, np.ndarray):
        return np.asarray(keys, dtype=np.int64) % view.buckets
    return np.fromiter((zlib.crc32(f) % view.buckets for f in keys), dtype=np.int64, count=len(keys))


def encode_records(view: FeatureView, as_of_ms: np.ndarray | int,
                   columns: dict[str, np.ndarray]) -> np.ndarray:
    """The values of a batch of rows as one structured array (row ``i`` = value ``i``'s bytes).
    Missing columns or NaNs take the feature's default."""
    n = len(next(iter(columns.values()))) if columns else len(np.atleast_1d(as_of_ms))
    records = np.empty(n, dtype=record_dtype(view))
    records["fmt"] = FORMAT
    records["as_of_ms"] = as_of_ms
    for f in view.features:
        col = columns.get(f.name)
        if col is None:
            records[f.name] = f.default
            continue
        col = np.asarray(col)
        if f.dtype == "bool" and col.dtype.kind == "f":
            nan = np.isnan(col)
            records[f.name] = np.where(nan, bool(f.default), col != 0) if nan.any() else col != 0
            continue
        if col.dtype.kind in "iub":  # integers cannot be NaN: no float round trip
            records[f.name] = col
            continue
        values = col.astype(np.float64, copy=False)
        nan = np.isnan(values)
        records[f.name] = np.where(nan, f.default, values) if nan.any() else values
    return records


def encode(view: FeatureView, as_of_ms: np.ndarray | int, columns: dict[str, np.ndarray]) -> list[bytes]:
    """One value per row from feature columns (missing columns or NaNs take the default)."""
    records = encode_records(view, as_of_ms, columns)
    raw = records.tobytes()
    size = records.dtype.itemsize
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def decode(view: FeatureView, values: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """Records for the values read (zeros where absent) and a mask of which were present.

    A value of the wrong size or format counts as absent: a reader never serves bytes it does
    not understand (for instance from a writer with another schema).
    """
    dtype = record_dtype(view)
    size = dtype.itemsize
    present = np.array([v is not None and len(v) == size and v[0] == FORMAT for v in values], dtype=bool)
    blank = bytes(size)
    joined = b"".join(v if ok else blank for v, ok in zip(values, present.tolist()))
    return np.frombuffer(joined, dtype=dtype), present
