"""The Redis key and value format: a contract between the Spark writer and the gateway reader.

Keys (``P`` = configured prefix, default ``mlg``)::

    P:fv:{<view>:<schema version>:<data version>:b<bucket>}   hash: entity id -> value
    P:fv:<view>:<schema version>:meta                         hash: live version, sync facts
    P:fv:<view>:<schema version>:sync-lock:{<the meta key>}   string: the running sync's lease

One data version of a view is ``view.buckets`` hashes (bucket = entity id mod buckets): a sync
writes them with HSETs of many fields per command (far faster than one key per entity, see
loadtests/RESULTS.md), every key gets its TTL with one EXPIRE per bucket, a whole version
retires with ``buckets`` EXPIREs instead of a SCAN over millions of keys, and 100 entities still
read in one round trip. The ``{...}`` part is the Redis Cluster hash tag: a version spreads over
``buckets`` slots. A version is immutable once the meta hash points at it, except that an
incremental sync overwrites single entities in place (each HSET field atomic).

Values are fixed-size little-endian records: ``fmt`` (u8, = FORMAT), ``as_of_ms`` (i64, when the
values were computed), then every feature in definition order as f64 (``double``) or i64
(``long``). 9 + 8·n bytes; no names, no per-field framing. Golden-bytes tests pin all of this.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from features_online.definitions import FeatureView

FORMAT = 1
_DTYPES = {"double": "<f8", "long": "<i8"}


@functools.cache
def record_dtype(view: FeatureView) -> np.dtype:
    return np.dtype([("fmt", "u1"), ("as_of_ms", "<i8")]
                    + [(f.name, _DTYPES[f.dtype]) for f in view.features])


def meta_key(prefix: str, view: FeatureView) -> str:
    return f"{prefix}:fv:{view.name}:{view.version}:meta"


def lock_key(prefix: str, view: FeatureView) -> str:
    """The sync lease of the view. Its hash tag is the whole meta key, so on a Redis Cluster both
    live in one slot: the flip checks the lease and writes the meta hash in one script."""
    return f"{prefix}:fv:{view.name}:{view.version}:sync-lock:{{{meta_key(prefix, view)}}}"


def bucket_of(view: FeatureView, entity_ids: np.ndarray) -> np.ndarray:
    return np.asarray(entity_ids, dtype=np.int64) % view.buckets


def bucket_key(prefix: str, view: FeatureView, data_version: int, bucket: int) -> str:
    return f"{prefix}:fv:{{{view.name}:{view.version}:{data_version}:b{bucket:03d}}}"


def bucket_keys(prefix: str, view: FeatureView, data_version: int) -> list[str]:
    return [bucket_key(prefix, view, data_version, b) for b in range(view.buckets)]


def field(entity_id: int) -> bytes:
    return b"%d" % int(entity_id)


def fields(entity_ids: np.ndarray) -> list[bytes]:
    """:func:`field` of each id."""
    return [b"%d" % i for i in np.asarray(entity_ids, dtype=np.int64).tolist()]


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
