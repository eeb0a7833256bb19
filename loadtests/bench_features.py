"""Online features, mlgate vs Feast, on the same data and the same private Redis server.

    python loadtests/bench_features.py                     # 1,000,000 entities, 2,000 calls/case
    python loadtests/bench_features.py --entities 100000 --calls 500 --feast-python /path/bin/python

1. Sync throughput: what ``mlgate features sync`` runs once its Spark session is up
   (``FeatureSync.full`` of the Parquet table: Spark tasks whose writers read its row groups) vs ``FeatureStore.materialize``
   from a FileSource over the same Parquet (Feast's local engine), into the same ``redis-server``.
2. Read latency p50/p99 for 1 and 100 random entities per call: ``ViewReader.read`` (asyncio) vs
   ``FeatureStore.get_online_features(...).to_dict()``.

Feast runs in its own venv (loadtests/feast_side.py, a subprocess) so its pins cannot touch ours;
the default venv is created with pip on first use. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from features_online.definitions import CUSTOMER_ACTIVITY as VIEW  # noqa: E402

DEFAULT_FEAST_VENV = Path("/tmp/mlgate-feast-venv")


def make_data(n: int, as_of: datetime, seed: int) -> dict[str, np.ndarray]:
    """Plausible card activity for customers 1..n (counts nested 1d <= 7d <= 30d, shares in [0, 1])."""
    rng = np.random.default_rng(seed)
    c30 = rng.poisson(rng.gamma(1.5, 12.0, n))
    c7 = rng.binomial(c30, 7 / 30)
    c1 = rng.binomial(c7, 1 / 7)
    active = c30 > 0
    mean = np.where(active, rng.lognormal(3.5, 0.8, n), 0.0)
    noisy = lambda c: np.round(c * mean * rng.normal(1.0, 0.1, n).clip(0.5), 2)  # noqa: E731
    cols = {
        "customer_id": np.arange(1, n + 1, dtype=np.int64),
        "as_of_ms": np.full(n, int(as_of.timestamp() * 1000), dtype=np.int64),
        "txn_count_1d": c1, "txn_count_7d": c7, "txn_count_30d": c30,
        "amount_sum_1d": noisy(c1), "amount_sum_7d": noisy(c7), "amount_sum_30d": noisy(c30),
        "amount_mean_30d": np.round(mean, 2),
        "amount_max_30d": np.round(mean * (1 + rng.exponential(1.5, n)) * active, 2),
        "distinct_merchants_30d": np.minimum(c30, rng.binomial(c30, 0.6) + active),
        "foreign_share_30d": rng.beta(1, 20, n) * active,
        "online_share_30d": rng.beta(2, 3, n) * active,
        "seconds_since_last_txn": np.where(active, rng.exponential(2 * 86_400, n).clip(1, 30 * 86_400),
                                           30 * 86_400.0),
    }
    for f in VIEW.features:
        cols[f.name] = cols[f.name].astype(np.int64 if f.dtype == "long" else np.float64)
    assert list(cols)[2:] == list(VIEW.feature_names)
    return cols


ROW_GROUP = 131_072  # several row groups per file, as a Spark-written table has several parts


def write_parquet(cols: dict[str, np.ndarray], as_of: datetime, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({**cols, "event_timestamp": pa.array(
        [as_of] * len(cols["customer_id"]), pa.timestamp("us", tz="UTC"))})
    pq.write_table(table, path, coerce_timestamps="us", row_group_size=ROW_GROUP)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int) -> subprocess.Popen:
    import redis

    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            redis.Redis(port=port).ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def ensure_feast_python(path: str | None) -> str:
    if path:
        return path
    python = DEFAULT_FEAST_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {DEFAULT_FEAST_VENV} with feast[redis] ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(DEFAULT_FEAST_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "feast[redis]"], check=True)
    return str(python)


@dataclass(frozen=True)
class Timed:
    label: str
    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def sync_ours(redis_settings, parquet: Path, as_of: datetime, runs: int) -> list[Timed]:
    """Full syncs as ``mlgate features sync`` runs them (``jobs.sync``: ``FeatureSync.full`` of
    the Parquet table, whose row groups the writers read), timed from the call to the flip; the
    Spark session (the JVM) is started first, untimed, as Feast's imports and ``apply`` are.
    Then, for comparison with earlier tables, one through a DataFrame (``spark.read.parquet`` +
    ``mapInArrow``, what incremental syncs and batch scores use) and one from a cached DataFrame."""
    from features_online import spark_job
    from features_online.parquet_pieces import ParquetTable
    from features_online.sync import FeatureSync
    from features_online.settings import FeatureSettings, SparkSettings

    spark = spark_job.spark_session()  # what `mlgate features sync` has before it syncs, and no more:
    spark.sparkContext.setLogLevel("ERROR")  # no warm-up query (its first job pays the JVM's cold paths)
    partitions = SparkSettings().sync_partitions
    try:
        sync = FeatureSync(redis_settings, FeatureSettings(), VIEW)
        out = []
        for i in range(runs):
            started = time.perf_counter()
            result = sync.full(ParquetTable(spark, str(parquet), partitions), as_of, source="bench")
            out.append(Timed("first in the session: cold Python workers" if i == 0 else
                             f"run {i + 1}, same session", result.rows, time.perf_counter() - started))
        started = time.perf_counter()
        frame = spark_job.writer_partitions(spark.read.parquet(str(parquet)), partitions)
        result = sync.full(frame, as_of, source="bench")
        out.append(Timed("through a DataFrame (spark.read.parquet + mapInArrow), same session",
                         result.rows, time.perf_counter() - started))
        cached = spark_job.writer_partitions(spark.read.parquet(str(parquet)), partitions).cache()
        cached.count()  # read + cache, untimed: this row is the sync alone
        result = sync.full(cached, as_of, source="bench")
        out.append(Timed("from a cached DataFrame (read not timed), same session", result.rows, result.seconds))
        return out
    finally:
        spark.stop()


async def read_ours(redis_settings, cols, n: int, calls: int, warmup: int, seed: int) -> dict:
    from features_online.reader import ViewReader
    from observability.metrics import GatewayMetrics
    from features_online.settings import FeatureSettings

    store = ViewReader(redis_settings, FeatureSettings(), {VIEW.name: VIEW}, GatewayMetrics())
    await store.start()
    rng = np.random.default_rng(seed)
    try:
        ids = rng.integers(1, n + 1, size=100).astype(np.int64)  # correctness, once, untimed
        got = (await store.read({VIEW.name: ids}, timeout_s=1.0))[VIEW.name]
        assert got.present.all(), "mlgate read back missing entities"
        for f in VIEW.feature_names:
            assert np.array_equal(got.records[f], cols[f][ids - 1]), f"mlgate read back wrong {f}"
        out = {}
        for size in (1, 100):
            latencies = []
            for i in range(warmup + calls):
                ids = rng.integers(1, n + 1, size=size).astype(np.int64)
                t0 = time.perf_counter()
                await store.read({VIEW.name: ids}, timeout_s=1.0)
                if i >= warmup:
                    latencies.append(time.perf_counter() - t0)
            ms = np.array(latencies) * 1000
            out[size] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}
        return out
    finally:
        await store.close()


def table(ours_syncs, ours_reads, feast, n: int, feast_n: int) -> str:
    first = ours_syncs[0]
    feast_rps = feast["materialize_rows"] / feast["materialize_s"]
    sync_ratio = first.rows_per_s / feast_rps
    ok = lambda cond: "met" if cond else "NOT met"  # noqa: E731
    rows = [("| metric | mlgate | Feast | ratio | target |"), "|---|---|---|---|---|",
            f"| sync rows/s ({n:,} mlgate / {feast_n:,} Feast rows), mlgate {first.label} | "
            f"{first.rows_per_s:,.0f} | {feast_rps:,.0f} | {sync_ratio:,.1f}x | ≥ 200,000 rows/s: "
            f"{ok(first.rows_per_s >= 200_000)}; ≥ 50x Feast: {ok(sync_ratio >= 50)} |",
            f"| sync seconds | {first.seconds:.2f} | {feast['materialize_s']:.2f} | | |"]
    for extra in ours_syncs[1:]:
        rows.append(f"| sync rows/s, mlgate {extra.label} | {extra.rows_per_s:,.0f} ({extra.seconds:.2f} s) | | "
                    f"{extra.rows_per_s / feast_rps:,.1f}x | ≥ 50x: {ok(extra.rows_per_s / feast_rps >= 50)} |")
    for size in (1, 100):
        for q in ("p50", "p99"):
            a, b = ours_reads[size][q], feast["reads"][str(size)][q]
            target = f"< 2 ms: {ok(a < 2)}" if (size, q) == (100, "p99") else ""
            rows.append(f"| read {q}, {size} entit{'y' if size == 1 else 'ies'}/call (ms) | {a:.3f} | "
                        f"{b:.3f} | {b / a:,.1f}x | {target} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--feast-python", help=f"python of a venv with feast[redis] (default: "
                   f"{DEFAULT_FEAST_VENV}, created if missing)")
    p.add_argument("--entities", type=int, default=1_000_000)
    p.add_argument("--feast-entities", type=int, help="materialize only the first N entities in "
                   "Feast (rows/s is then computed from N; Feast reads draw from 1..N)")
    p.add_argument("--calls", type=int, default=2000, help="timed read calls per case")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--sync-runs", type=int, default=2, help="mlgate full syncs (the first is reported)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    command = " ".join(["python loadtests/bench_features.py", shlex.join(sys.argv[1:])]).strip()
    feast_python = ensure_feast_python(args.feast_python)
    feast_n = min(args.feast_entities or args.entities, args.entities)
    started = time.perf_counter()

    from features_online.settings import RedisSettings
    import redis

    as_of = datetime.now(timezone.utc).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="mlgate-bench-") as tmp:
        tmp = Path(tmp)
        cols = make_data(args.entities, as_of, args.seed)
        write_parquet(cols, as_of, tmp / "features.parquet")
        if feast_n < args.entities:
            write_parquet({k: v[:feast_n] for k, v in cols.items()}, as_of, tmp / "feast.parquet")
        port = free_port()
        server = start_redis(port)
        try:
            settings = RedisSettings(url=f"redis://127.0.0.1:{port}/0", prefix="bench")
            print(f"mlgate: {args.sync_runs} full sync(s) of {args.entities:,} entities ...", file=sys.stderr)
            syncs = sync_ours(settings, tmp / "features.parquet", as_of, args.sync_runs)
            print(f"mlgate: reads ({args.calls} calls/case) ...", file=sys.stderr)
            reads = asyncio.run(read_ours(settings, cols, args.entities, args.calls, args.warmup, args.seed))
            redis.Redis(port=port).flushall()
            print(f"Feast: materialize {feast_n:,} entities, then reads ...", file=sys.stderr)
            parquet = tmp / ("feast.parquet" if feast_n < args.entities else "features.parquet")
            proc = subprocess.run([feast_python, str(ROOT / "loadtests" / "feast_side.py"),
                                   "--parquet", str(parquet), "--port", str(port), "--workdir", str(tmp / "feast"),
                                   "--entities", str(feast_n), "--calls", str(args.calls),
                                   "--warmup", str(args.warmup), "--seed", str(args.seed)],
                                  stdout=subprocess.PIPE, text=True, check=True)
            feast = json.loads(proc.stdout.strip().splitlines()[-1])
        finally:
            server.terminate()
            server.wait()
    assert feast["features"] == len(VIEW.features) and feast["first_value"] == cols[VIEW.feature_names[0]][0]

    print(f"\nCommand: `{command}`\n")
    print(table(syncs, reads, feast, args.entities, feast_n))
    print("\nratio = mlgate ÷ Feast for rows/s, Feast ÷ mlgate for latency: above 1, mlgate is better.")
    print(f"Feast {feast['feast_version']} (local engine, Redis online store, defaults); "
          f"{len(VIEW.features)} features; redis-server on 127.0.0.1:{port}, both systems.")
    print("mlgate sync timing = what `mlgate features sync` does after its Spark session is up: "
          "FeatureSync.full of the Parquet table (lock, footers read on the driver, one Spark job whose "
          "writers decode their row groups with pyarrow, encode + HSET, then stored-count check, flip, "
          "retire the previous version). "
          "The first run is the session's first Python job, so it includes starting Spark's Python workers; "
          "later runs reuse them. Not timed: starting the Spark session (JVM); no query runs before the "
          "first sync, so it also pays the JVM's first job. "
          "Feast timing = FeatureStore.materialize (includes its Parquet read; apply, imports and "
          f"FeatureStore construction not timed). The Parquet file is written in {ROW_GROUP:,}-row groups.")
    print(f"Reads: {args.calls} timed calls per case after {args.warmup} warm-up calls, random ids uniform "
          f"over 1..{args.entities:,} (Feast: 1..{feast_n:,}); request building not timed, "
          f"decoding to arrays / to_dict() timed. Total run {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
