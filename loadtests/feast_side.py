"""The Feast half of loadtests/bench_features.py; runs in Feast's own venv, prints one JSON line.

    python feast_side.py --parquet DATA.parquet --port 6390 --workdir DIR --calls 2000

Defines the customer_activity view in Feast (FileSource over the same Parquet, Redis online
store), applies it, times ``materialize`` and then ``get_online_features(...).to_dict()`` for 1
and 100 random entities per call. Uses Feast's defaults (local compute engine, no extra tuning).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--parquet", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--entities", type=int, required=True, help="ids are drawn from 1..N")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()

    import feast
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    # The view's features, in definition order, are the Parquet's other columns.
    schema = pq.read_schema(args.parquet)
    features = [(f.name, "long" if str(f.type) == "int64" else "double") for f in schema
                if f.name not in ("customer_id", "as_of_ms", "event_timestamp")]
    table = pq.read_table(args.parquet, columns=["event_timestamp"])
    stamps = table.column("event_timestamp").to_pandas()
    start, end = stamps.min().to_pydatetime() - timedelta(seconds=1), stamps.max().to_pydatetime() + timedelta(seconds=1)

    repo = Path(args.workdir)
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        "project: mlgate_bench\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "online_store:\n"
        "  type: redis\n"
        f'  connection_string: "127.0.0.1:{args.port}"\n'
        "entity_key_serialization_version: 3\n")
    store = FeatureStore(repo_path=str(repo))
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
    source = FileSource(path=str(Path(args.parquet).resolve()), timestamp_field="event_timestamp")
    view = FeatureView(name="customer_activity", entities=[customer], ttl=timedelta(days=2), source=source,
                       schema=[Field(name="customer_id", dtype=Int64)]
                       + [Field(name=n, dtype=Int64 if t == "long" else Float64) for n, t in features])
    store.apply([customer, view])

    started = time.perf_counter()
    store.materialize(start, end)
    materialize_s = time.perf_counter() - started

    import redis

    keys = redis.Redis(port=args.port).dbsize()
    if keys < table.num_rows:
        raise SystemExit(f"Feast materialized {table.num_rows} rows but Redis holds {keys} keys")
    refs = [f"customer_activity:{n}" for n, _ in features]
    rng = np.random.default_rng(args.seed)
    check = store.get_online_features(features=refs, entity_rows=[{"customer_id": 1}]).to_dict()
    if check[features[0][0]][0] is None:
        raise SystemExit("Feast read back nothing for customer_id 1: materialize wrote no rows?")
    reads = {}
    for size in (1, 100):
        latencies = []
        for i in range(args.warmup + args.calls):
            rows = [{"customer_id": int(x)} for x in rng.integers(1, args.entities + 1, size=size)]
            t0 = time.perf_counter()
            result = store.get_online_features(features=refs, entity_rows=rows).to_dict()
            elapsed = time.perf_counter() - t0
            if i >= args.warmup:
                latencies.append(elapsed)
            if any(v is None for v in result[features[0][0]]):
                raise SystemExit("Feast returned a missing value for an id that was materialized")
        ms = np.array(latencies) * 1000
        reads[size] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                       "calls": len(ms)}
    print(json.dumps({"feast_version": feast.__version__, "features": len(features),
                      "materialize_rows": table.num_rows, "redis_keys": keys, "materialize_s": materialize_s,
                      "first_value": check[features[0][0]][0], "reads": reads}))


if __name__ == "__main__":
    main()
