"""Bytes of Redis memory one stored entity costs, measured through the real sync writer.

    python loadtests/entity_memory.py --entities 1000000 --features 12

The capacity model (loadtests/capacity.py) multiplies this figure by the entity count, so it is
measured, not guessed: a view of ``K`` double features is written by
:class:`features_online.writer.PartitionWriter` (the code path of every sync: numpy-framed HSETs
into bucketed hashes, EXPIRE per bucket) into a private ``redis-server`` started here on a free
port (no persistence), and the figure is the growth of ``INFO memory`` ``used_memory`` divided by
the entities written. Everything Redis allocates for them is in it: the field (the id's decimal
digits), the fixed-size record, the hash entry and the hash table's share of buckets.

Ids start at 10**8, so fields have 9 digits, as for a store of 100 M-999 M entities. With 64
buckets, any N above about 8,200 puts more than 128 fields in each hash, so Redis uses the
hashtable encoding, as it does at production sizes (a listpack would be far smaller and
unrepresentative). The hash table's bucket array doubles in steps, so the figure moves by a few
bytes with N; measure with a large N (1 M) for the model's default.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from features_online.definitions import Entity, EntityKey, Feature, FeatureView  # noqa: E402

FIRST_ID = 10**8  # 9-digit fields
BATCH_ROWS = 1_000  # fields per HSET, the sync's default
ARROW_BATCH = 50_000  # rows per Arrow batch, as parquet_pieces.READ_BATCH_ROWS


def view_of(features: int, buckets: int = 64) -> FeatureView:
    """An int64-keyed view of ``features`` double features (record: 9 + 8 x features bytes)."""
    if features < 1:
        raise ValueError("a view needs at least one feature")
    return FeatureView("capacity_probe", Entity("probe", (EntityKey("probe_id"),)),
                       tuple(Feature(f"f{i:03d}", "double", 0.0) for i in range(features)),
                       ttl=timedelta(days=2), buckets=buckets)


def _batches(view: FeatureView, n: int, seed: int) -> list:
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    now_ms = int(time.time() * 1000)
    out = []
    for start in range(0, n, ARROW_BATCH):
        size = min(ARROW_BATCH, n - start)
        cols = {"probe_id": pa.array(np.arange(FIRST_ID + start, FIRST_ID + start + size, dtype=np.int64)),
                "as_of_ms": pa.array(np.full(size, now_ms, dtype=np.int64))}
        for f in view.features:
            cols[f.name] = pa.array(rng.random(size) * 1000)
        out.append(pa.record_batch(list(cols.values()), names=list(cols)))
    return out


def used_memory(port: int) -> int:
    import redis

    client = redis.Redis(port=port)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def bytes_per_entity_at(port: int, entities: int, features: int, buckets: int = 64, seed: int = 7) -> float:
    """Write ``entities`` entities of a ``features``-feature view into the (empty, private) Redis
    on ``port`` through the sync writer; the growth of ``used_memory`` per entity."""
    from features_online.redis_client import ClientSpec
    from features_online.writer import PartitionWriter

    if entities < 1:
        raise ValueError("entities must be at least 1")
    view = view_of(features, buckets)
    batches = _batches(view, entities, seed)
    writer = PartitionWriter(ClientSpec(f"redis://127.0.0.1:{port}/0", False, {"socket_timeout": 60.0}),
                             view, "mlg", 1, BATCH_ROWS, ttl_s=86_400)
    before = used_memory(port)
    rows, acked = writer.write(iter(batches))
    after = used_memory(port)
    if acked != entities:
        raise RuntimeError(f"the writer acknowledged {acked} of {entities} rows")
    return (after - before) / entities


def measure(entities: int = 1_000_000, features: int = 12, buckets: int = 64) -> float:
    """Bytes per entity on this machine's redis-server: a private server, started and stopped here."""
    from loadtests.bench_features import free_port, start_redis

    port = free_port()
    server = start_redis(port)
    try:
        return bytes_per_entity_at(port, entities, features, buckets)
    finally:
        server.terminate()
        server.wait()


def redis_version() -> str:
    import subprocess

    return subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=12)
    parser.add_argument("--buckets", type=int, default=64)
    args = parser.parse_args()
    got = measure(args.entities, args.features, args.buckets)
    print(f"{got:.1f} bytes per entity ({args.entities:,} entities, {args.features} double features, "
          f"record {9 + 8 * args.features} bytes, {args.buckets} buckets; {redis_version()})")


if __name__ == "__main__":
    main()
