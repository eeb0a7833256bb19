"""Online features, mlgate vs Feast, on the same data and the same private Redis server.

    python loadtests/bench_features.py                     # 1,000,000 entities, 2,000 calls/case
    python loadtests/bench_features.py --entities 100000 --calls 500 --feast-python /path/bin/python

1. Sync throughput: what ``mlgate features sync`` runs once its Spark session is up
   (``FeatureSync.full`` of the Parquet table: Spark tasks whose writers read its row groups) vs ``FeatureStore.materialize``
   from a FileSource over the same Parquet (Feast's local engine), into the same ``redis-server``.
2. Read latency p50/p99 for 1 and 100 random entities per call: ``ViewReader.read`` (asyncio) vs
   ``FeatureStore.get_online_features(...).to_dict()``.
3. mlgate only: the 100-entity × 2-view read (the int64-keyed view above and a string-keyed view
   of UUID-like codes, ``--string-entities`` of them, synced the same way; one round trip),
   interleaved call by call with the single-view reads so that all come from the same conditions.

    python loadtests/bench_features.py --entities 100000 --calls 2000 --skip-feast   # mlgate only

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
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from features_online.definitions import Entity, EntityKey, Feature, FeatureView  # noqa: E402

_COUNTS = ("txn_count_1d", "txn_count_7d", "txn_count_30d")
_AMOUNTS = ("amount_sum_1d", "amount_sum_7d", "amount_sum_30d", "amount_mean_30d", "amount_max_30d")
VIEW = FeatureView(  # the int64-keyed view the benchmark has always used (feast_side.py defines the same)
    "customer_activity", Entity("customer", (EntityKey("customer_id"),)),
    (*(Feature(n, "long", 0) for n in _COUNTS), *(Feature(n, "double", 0.0) for n in _AMOUNTS),
     Feature("distinct_merchants_30d", "long", 0), Feature("foreign_share_30d", "double", 0.0),
     Feature("online_share_30d", "double", 0.0), Feature("seconds_since_last_txn", "double", 30 * 86_400.0)),
    ttl=timedelta(days=2), buckets=64)
SHOPS = FeatureView(  # a string-keyed view: UUID-like codes, a feature of each other dtype
    "shop_profile", Entity("shop", (EntityKey("shop_code", "string"),)),
    (Feature("orders_30d", "long", 0), Feature("revenue_30d", "double", 0.0), Feature("rating", "float", 0.0),
     Feature("returns_30d", "int", 0), Feature("open_now", "bool", False)), ttl=timedelta(days=2), buckets=64)

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


def make_shops(n: int, as_of: datetime, seed: int) -> dict[str, np.ndarray]:
    """n shops with UUID-like codes (36 characters) and a value of every dtype."""
    rng = np.random.default_rng(seed + 1)
    raw = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64)
    codes = [f"{a:016x}{b:016x}" for a, b in raw.tolist()]
    return {"shop_code": np.array([f"{c[:8]}-{c[8:12]}-{c[12:16]}-{c[16:20]}-{c[20:]}" for c in codes], dtype=object),
            "as_of_ms": np.full(n, int(as_of.timestamp() * 1000), dtype=np.int64),
            "orders_30d": rng.poisson(20, n).astype(np.int64), "revenue_30d": np.round(rng.lognormal(6, 1, n), 2),
            "rating": rng.uniform(1, 5, n).astype(np.float32), "returns_30d": rng.poisson(1, n).astype(np.int32),
            "open_now": rng.random(n) < 0.7}


ROW_GROUP = 131_072  # several row groups per file, as a Spark-written table has several parts


def write_parquet(cols: dict[str, np.ndarray], as_of: datetime, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(next(iter(cols.values())))
    table = pa.table({**cols, "event_timestamp": pa.array([as_of] * n, pa.timestamp("us", tz="UTC"))})
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


def sync_ours(redis_settings, parquet: Path, shops: Path, as_of: datetime, runs: int) -> tuple[list[Timed], Timed]:
    """Full syncs as ``mlgate features sync`` runs them (``jobs.sync``: ``FeatureSync.full`` of
    the Parquet table, whose row groups the writers read), timed from the call to the flip; the
    Spark session (the JVM) is started first, untimed, as Feast's imports and ``apply`` are.
    Then, for comparison with earlier tables, one through a DataFrame (``spark.read.parquet`` +
    ``mapInArrow``, what incremental syncs and batch scores use) and one from a cached DataFrame.
    Last, the string-keyed view's table, the same way as the first runs (timed on its own)."""
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
        started = time.perf_counter()
        result = FeatureSync(redis_settings, FeatureSettings(), SHOPS).full(
            ParquetTable(spark, str(shops), partitions), as_of, source="bench")
        return out, Timed("string-keyed view, Parquet table, same session", result.rows,
                          time.perf_counter() - started)
    finally:
        spark.stop()


CASES = ("1 entity, int64 view", "100 entities, int64 view", "100 entities × 2 views (int64 + string)")


async def read_ours(redis_settings, cols, shops, n: int, calls: int, warmup: int, seed: int) -> dict:
    """p50/p99 (ms) per case of :data:`CASES`. Every iteration times one call of each case, their
    order rotating, so the cases share the same conditions. Timed: building the string view's
    fields (``layout.encode_fields``, as the gateway does per request) and ``ViewReader.read``."""
    from features_online import layout
    from features_online.reader import ViewReader
    from observability.metrics import GatewayMetrics
    from features_online.settings import FeatureSettings

    store = ViewReader(redis_settings, FeatureSettings(), {VIEW.name: VIEW, SHOPS.name: SHOPS}, GatewayMetrics())
    await store.start()
    rng = np.random.default_rng(seed)
    codes, n_shops = shops["shop_code"], len(shops["shop_code"])
    key = SHOPS.entity.key_names[0]
    try:
        ids = rng.integers(1, n + 1, size=100).astype(np.int64)  # correctness, once, untimed
        rows = rng.integers(0, n_shops, size=100)
        got = await store.read({VIEW.name: ids, SHOPS.name: layout.encode_fields(
            SHOPS.entity, {key: codes[rows].tolist()})}, timeout_s=1.0)
        assert got[VIEW.name].present.all() and got[SHOPS.name].present.all(), "mlgate read back missing entities"
        for f in VIEW.feature_names:
            assert np.array_equal(got[VIEW.name].records[f], cols[f][ids - 1]), f"mlgate read back wrong {f}"
        for f in SHOPS.feature_names:
            assert np.array_equal(got[SHOPS.name].records[f], shops[f][rows]), f"mlgate read back wrong {f}"

        async def call(case: int) -> float:
            size = 1 if case == 0 else 100
            ids = rng.integers(1, n + 1, size=size).astype(np.int64)
            picked = codes[rng.integers(0, n_shops, size=size)].tolist() if case == 2 else None
            t0 = time.perf_counter()
            if picked is None:
                await store.read({VIEW.name: ids}, timeout_s=1.0)
            else:
                await store.read({VIEW.name: ids, SHOPS.name: layout.encode_fields(SHOPS.entity, {key: picked})},
                                 timeout_s=1.0)
            return time.perf_counter() - t0

        latencies: dict[int, list[float]] = {c: [] for c in range(len(CASES))}
        for i in range(warmup + calls):
            for case in (i % 3, (i + 1) % 3, (i + 2) % 3):
                seconds = await call(case)
                if i >= warmup:
                    latencies[case].append(seconds)
        out = {}
        for case, values in latencies.items():
            ms = np.array(values) * 1000
            out[CASES[case]] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}
        return out
    finally:
        await store.close()


def table(ours_syncs, shop_sync: Timed, ours_reads, feast: dict | None, n: int, feast_n: int) -> str:
    """The markdown table; without ``feast`` (``--skip-feast``), mlgate's figures alone."""
    first = ours_syncs[0]
    ok = lambda cond: "met" if cond else "NOT met"  # noqa: E731
    if feast is None:
        rows = ["| metric | mlgate | target |", "|---|---|---|",
                f"| sync rows/s ({n:,} rows), {first.label} | {first.rows_per_s:,.0f} ({first.seconds:.2f} s) | "
                f"≥ 200,000 rows/s: {ok(first.rows_per_s >= 200_000)} |"]
        rows += [f"| sync rows/s, {t.label} | {t.rows_per_s:,.0f} ({t.seconds:.2f} s) | |"
                 for t in [*ours_syncs[1:], shop_sync]]
        for case, figures in ours_reads.items():
            for q in ("p50", "p99"):
                target = f"≤ 2 ms: {ok(figures[q] <= 2)}" if q == "p99" and case != CASES[0] else ""
                rows.append(f"| read {q}, {case} (ms) | {figures[q]:.3f} | {target} |")
        return "\n".join(rows)
    feast_rps = feast["materialize_rows"] / feast["materialize_s"]
    sync_ratio = first.rows_per_s / feast_rps
    rows = [("| metric | mlgate | Feast | ratio | target |"), "|---|---|---|---|---|",
            f"| sync rows/s ({n:,} mlgate / {feast_n:,} Feast rows), mlgate {first.label} | "
            f"{first.rows_per_s:,.0f} | {feast_rps:,.0f} | {sync_ratio:,.1f}x | ≥ 200,000 rows/s: "
            f"{ok(first.rows_per_s >= 200_000)}; ≥ 50x Feast: {ok(sync_ratio >= 50)} |",
            f"| sync seconds | {first.seconds:.2f} | {feast['materialize_s']:.2f} | | |"]
    for extra in ours_syncs[1:]:
        rows.append(f"| sync rows/s, mlgate {extra.label} | {extra.rows_per_s:,.0f} ({extra.seconds:.2f} s) | | "
                    f"{extra.rows_per_s / feast_rps:,.1f}x | ≥ 50x: {ok(extra.rows_per_s / feast_rps >= 50)} |")
    rows.append(f"| sync rows/s, mlgate {shop_sync.label} | {shop_sync.rows_per_s:,.0f} ({shop_sync.seconds:.2f} s)"
                " | | | |")
    for size, case in ((1, CASES[0]), (100, CASES[1])):
        for q in ("p50", "p99"):
            a, b = ours_reads[case][q], feast["reads"][str(size)][q]
            target = f"< 2 ms: {ok(a < 2)}" if (size, q) == (100, "p99") else ""
            rows.append(f"| read {q}, {size} entit{'y' if size == 1 else 'ies'}/call (ms) | {a:.3f} | "
                        f"{b:.3f} | {b / a:,.1f}x | {target} |")
    for q in ("p50", "p99"):
        a = ours_reads[CASES[2]][q]
        rows.append(f"| read {q}, {CASES[2]}, one round trip (ms) | {a:.3f} | | | "
                    f"{f'≤ 2 ms: {ok(a <= 2)}' if q == 'p99' else ''} |")
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
    p.add_argument("--string-entities", type=int, default=100_000, help="shops of the string-keyed view")
    p.add_argument("--skip-feast", action="store_true", help="mlgate's figures only (no Feast venv, no Feast run)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    command = " ".join(["python loadtests/bench_features.py", shlex.join(sys.argv[1:])]).strip()
    feast_python = None if args.skip_feast else ensure_feast_python(args.feast_python)
    feast_n = min(args.feast_entities or args.entities, args.entities)
    started = time.perf_counter()

    from features_online.settings import RedisSettings
    import redis

    as_of = datetime.now(timezone.utc).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="mlgate-bench-") as tmp:
        tmp = Path(tmp)
        cols = make_data(args.entities, as_of, args.seed)
        write_parquet(cols, as_of, tmp / "features.parquet")
        shops = make_shops(args.string_entities, as_of, args.seed)
        write_parquet(shops, as_of, tmp / "shops.parquet")
        if feast_n < args.entities and feast_python:
            write_parquet({k: v[:feast_n] for k, v in cols.items()}, as_of, tmp / "feast.parquet")
        port = free_port()
        server = start_redis(port)
        feast = None
        try:
            settings = RedisSettings(url=f"redis://127.0.0.1:{port}/0", prefix="bench")
            print(f"mlgate: {args.sync_runs} full sync(s) of {args.entities:,} entities, one of "
                  f"{args.string_entities:,} shops ...", file=sys.stderr)
            syncs, shop_sync = sync_ours(settings, tmp / "features.parquet", tmp / "shops.parquet", as_of,
                                         args.sync_runs)
            print(f"mlgate: reads ({args.calls} calls/case) ...", file=sys.stderr)
            reads = asyncio.run(read_ours(settings, cols, shops, args.entities, args.calls, args.warmup, args.seed))
            if feast_python:
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
    if feast is not None:
        assert feast["features"] == len(VIEW.features) and feast["first_value"] == cols[VIEW.feature_names[0]][0]

    print(f"\nCommand: `{command}`\n")
    print(table(syncs, shop_sync, reads, feast, args.entities, feast_n))
    if feast is not None:
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
          + ("Feast timing = FeatureStore.materialize (includes its Parquet read; apply, imports and "
             "FeatureStore construction not timed). " if feast is not None else "")
          + f"The Parquet files are written in {ROW_GROUP:,}-row groups.")
    print(f"Views: {VIEW.name} (int64 key, {len(VIEW.features)} features, {9 + 8 * len(VIEW.features)}-byte "
          f"records) and {SHOPS.name} (string key: 36-character UUID-like codes, {len(SHOPS.features)} features "
          f"of every other dtype, {args.string_entities:,} shops). "
          f"Reads: {args.calls} timed calls per case after {args.warmup} warm-up calls, the cases interleaved "
          f"call by call; random ids uniform over 1..{args.entities:,}"
          + (f" (Feast: 1..{feast_n:,})" if feast is not None else "") + "; building the int ids not timed, "
          f"encoding the string keys (layout.encode_fields) and decoding to arrays timed. Total run "
          f"{time.perf_counter() - started:.0f} s.")

if __name__ == "__main__":
    main()
