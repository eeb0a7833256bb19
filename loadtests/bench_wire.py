"""One Redis wire (issue 17): the hand-written Redis paths against plain redis-py with hiredis.

    python loadtests/bench_wire.py                        # 300,000 entities, 7 write rounds, 10,000 reads/case
    python loadtests/bench_wire.py --entities 500000 --rounds 7 --calls 10000

One run, one private ``redis-server`` on a free port of 127.0.0.1, the layout's real record
(``customer_activity``: 105 bytes, 64 buckets), three hot paths:

1. Sync write rate, warm, in this process: every entity written once per round by each writer,
   the alternatives in a rotated order each round (Redis flushed, untimed, before each write).
   - ``numpy frames + bare socket``: ``PartitionWriter.write`` as the sync runs it on a plain URL
     (HSET commands framed by numpy, ``wire.hset_commands``, sent on ``wire.Connection``, replies
     read one batch behind; before 2026-12-04 the socket was ``resp.py``'s, same code);
   - ``numpy frames + redis-py``: the same ``PartitionWriter.write``, sending the same framed bytes on
     a redis-py connection (``send_packed_command`` / ``read_response``, hiredis parser);
   - ``plain redis-py``: the same records and bucket grouping, but ``pipeline.hset(key, items=...)``
     of at most ``--batch-rows`` fields per command, one ``execute()`` per Arrow batch, then EXPIREs.
2. Sync write rate from a cold writer, as in a session's first sync: a fresh interpreter per run
   (alternatives alternating), timed from after numpy/pyarrow/the layout are imported and the
   batches built, to the last EXPIRE acknowledged: redis-py's import (or not) is inside.
3. The gateway reader's latency, ``ViewReader.read`` (asyncio) for 1 entity (one HMGET) and 100
   entities (one EVALSHA), on two stores in one event loop: ``connect_async``, whose connections
   pack with ``wire.pack`` (the ``_LinearPacking`` override before 2026-12-04), and a plain
   ``redis.asyncio`` pool; every call's ids go to both,
   which of the two goes first alternating call by call.

Ratios are alternative ÷ hand-written for rows/s and hand-written ÷ alternative for latency: below
1, the alternative is slower. Stops by itself: ``--budget-s`` bounds the write rounds and cold
runs, a hard alarm kills the run (and its redis-server) well after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.bench_features import VIEW  # noqa: E402  (customer_activity, int64-keyed, 12 features)

WRITERS = ("numpy frames + bare socket", "numpy frames + redis-py", "plain redis-py")
READERS = ("wire.pack", "plain redis-py")
BATCH = 50_000  # rows per Arrow batch, as parquet_pieces.READ_BATCH_ROWS
PREFIX = "wire"


def batches(n: int, seed: int = 7) -> list:
    """Entities 1..n of the view as Arrow batches, the writer's input."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    cols = {"customer_id": np.arange(1, n + 1, dtype=np.int64),
            "as_of_ms": np.full(n, int(time.time() * 1000), dtype=np.int64)}
    for f in VIEW.features:
        cols[f.name] = (rng.integers(0, 500, n) if f.dtype == "long" else rng.random(n) * 1000).astype(
            np.int64 if f.dtype == "long" else np.float64)
    table = pa.table(cols)
    return table.to_batches(max_chunksize=BATCH)


def spec_for(url: str, writer: str):
    from features_online.redis_client import ClientSpec

    options = {"socket_connect_timeout": 0.2, "socket_timeout": 30.0}
    if writer == WRITERS[0]:
        return ClientSpec(url, False, options)
    # A query option that changes nothing (0 is redis-py's default) sends the writer to redis-py.
    return ClientSpec(url + "?health_check_interval=0", False, options)


def write(url: str, writer: str, data: list, version: int, batch_rows: int) -> int:
    """Write every row of ``data`` into ``version`` with ``writer``; returns rows acknowledged."""
    from features_online.writer import PartitionWriter

    if writer != "plain redis-py":
        _, acked = PartitionWriter(spec_for(url, writer), VIEW, PREFIX, version, batch_rows, 600).write(iter(data))
        return acked
    return write_plain(url, data, version, batch_rows)


def write_plain(url: str, data: list, version: int, batch_rows: int) -> int:
    """The writer as plain redis-py would do it: per-row bytes, ``hset`` in a pipeline."""
    import redis

    from features_online import layout
    from features_online.writer import _ids, _numbers

    client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=30.0)
    keys = [k.encode() for k in layout.bucket_keys(PREFIX, VIEW, version)]
    acked, touched = 0, set()
    try:
        for batch in data:
            ids = _ids(batch, VIEW.entity.key_names[0])
            records = layout.encode_records(VIEW, _ids(batch, "as_of_ms"),
                                            {f: _numbers(batch.column(f)) for f in VIEW.feature_names})
            buckets = layout.bucket_of(VIEW, ids)
            order = np.argsort(buckets, kind="stable")
            buckets, ids, records = buckets[order], ids[order], records[order]
            raw, size = records.tobytes(), records.dtype.itemsize
            fields = layout.fields(ids)
            bounds = [0, *(np.flatnonzero(np.diff(buckets)) + 1).tolist(), len(ids)]
            pipe = client.pipeline(transaction=False)
            for start, end in pairwise(bounds):
                bucket = int(buckets[start])
                touched.add(bucket)
                for lo in range(start, end, batch_rows):
                    hi = min(lo + batch_rows, end)
                    items = [part for i in range(lo, hi) for part in (fields[i], raw[i * size:(i + 1) * size])]
                    pipe.hset(keys[bucket], items=items)
            pipe.execute()  # an error reply raises
            acked += len(ids)
        pipe = client.pipeline(transaction=False)
        for bucket in sorted(touched):
            pipe.expire(keys[bucket], 600)
        pipe.execute()
    finally:
        client.close()
    return acked


def stored(client, version: int) -> int:
    from features_online import layout

    pipe = client.pipeline(transaction=False)
    for key in layout.bucket_keys(PREFIX, VIEW, version):
        pipe.hlen(key)
    return sum(pipe.execute())


def warm_writes(url: str, client, data: list, n: int, rounds: int, batch_rows: int, deadline: float) -> dict:
    out: dict[str, list[float]] = {w: [] for w in WRITERS}
    for r in range(rounds):
        if time.monotonic() > deadline and r >= 2:
            print(f"  write rounds: budget spent after {r}", file=sys.stderr)
            break
        order = WRITERS[r % len(WRITERS):] + WRITERS[:r % len(WRITERS)]
        for writer in order:
            client.flushall()
            started = time.perf_counter()
            acked = write(url, writer, data, 1, batch_rows)
            seconds = time.perf_counter() - started
            assert acked == n and stored(client, 1) == n, (writer, acked)
            out[writer].append(n / seconds)
        print(f"  round {r + 1}: " + ", ".join(f"{w} {out[w][-1]:,.0f}" for w in WRITERS), file=sys.stderr)
    return out


def child(url: str, writer: str, n: int, batch_rows: int) -> None:
    """One cold writer (a fresh interpreter): prints seconds from the batches built to the end."""
    import pyarrow  # noqa: F401  (imported in a Spark worker before the writer runs)

    import features_online.layout
    import features_online.writer  # noqa: F401  (what the worker imports before the transport)

    data = batches(n)
    assert "redis" not in sys.modules, "redis-py imported before the timed part"
    started = time.perf_counter()
    acked = write(url, writer, data, 2, batch_rows)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "acked": acked, "redis_imported": "redis" in sys.modules}))


def cold_writes(url: str, client, n: int, runs: int, batch_rows: int, deadline: float) -> dict:
    out: dict[str, list[float]] = {w: [] for w in WRITERS}
    for r in range(runs):
        if time.monotonic() > deadline and r >= 2:
            print(f"  cold runs: budget spent after {r}", file=sys.stderr)
            break
        order = WRITERS[r % len(WRITERS):] + WRITERS[:r % len(WRITERS)]
        for writer in order:
            client.flushall()
            proc = subprocess.run([sys.executable, __file__, "--child", writer, "--url", url, "--entities", str(n),
                                   "--batch-rows", str(batch_rows)], stdout=subprocess.PIPE, text=True, check=True,
                                  timeout=120, cwd=ROOT)
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            assert got["acked"] == n and stored(client, 2) == n, (writer, got)
            assert got["redis_imported"] == (writer != WRITERS[0]), (writer, got)  # the path it says it took
            out[writer].append(n / got["seconds"])
        print(f"  cold run {r + 1}: " + ", ".join(f"{w} {out[w][-1]:,.0f}" for w in WRITERS), file=sys.stderr)
    return out


def publish(client, n: int) -> None:
    """Point the view's meta hash at version 1 (written by the last warm round)."""
    from features_online import layout

    now_ms = int(time.time() * 1000)
    client.hset(layout.meta_key(PREFIX, VIEW), mapping={
        "version": 1, "as_of_ms": now_ms, "watermark_ms": now_ms, "rows": n, "fingerprint": VIEW.fingerprint})


async def reads(url: str, n: int, calls: int, warmup: int, blocks: int, seed: int) -> dict:
    import redis.asyncio as aioredis

    from features_online.reader import ViewReader
    from features_online.redis_client import _options, connect_async
    from features_online.settings import FeatureSettings, RedisSettings
    from observability.metrics import GatewayMetrics

    settings = RedisSettings(url=url, prefix=PREFIX)
    stores = {}
    for name in READERS:
        store = ViewReader(settings, FeatureSettings(pointer_refresh_s=3600), {VIEW.name: VIEW}, GatewayMetrics())
        if name == READERS[0]:
            store._client = connect_async(settings)
            assert store._client.connection_pool.connection_class.__name__.startswith("Linear")
        else:
            store._client = aioredis.Redis.from_pool(aioredis.ConnectionPool.from_url(url, **_options(settings)))
        await store.start()
        stores[name] = store
    classes = {name: s.client.connection_pool.connection_class.__name__ for name, s in stores.items()}
    rng = np.random.default_rng(seed)
    out: dict = {"classes": classes}
    try:
        probe = rng.integers(1, n + 1, size=100).astype(np.int64)
        for store in stores.values():  # correctness, once, untimed (also loads the script)
            assert (await store.read({VIEW.name: probe}, 1.0))[VIEW.name].present.all()
        for size in (1, 100):
            lat = {name: [] for name in READERS}
            for i in range(warmup + calls):
                ids = rng.integers(1, n + 1, size=size).astype(np.int64)
                order = READERS if i % 2 == 0 else READERS[::-1]
                for name in order:
                    started = time.perf_counter()
                    await stores[name].read({VIEW.name: ids}, 1.0)
                    if i >= warmup:
                        lat[name].append(time.perf_counter() - started)
            out[size] = {}
            for name, values in lat.items():
                ms = np.array(values) * 1000
                per_block = [np.percentile(b, 99) for b in np.array_split(ms, blocks)]
                out[size][name] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                                   "p99_blocks": (float(min(per_block)), float(max(per_block)))}
        out["pack_us"] = pack_times(stores)
    finally:
        for store in stores.values():
            await store.close()
    return out


def pack_times(stores: dict) -> dict:
    """µs to pack the 100-entity EVALSHA call, per connection class (median of 5 × 2,000)."""
    import timeit

    from features_online import layout
    from features_online.reader import GET_MANY_SHA

    ids = np.arange(1, 101, dtype=np.int64) * 37
    keys = [k.encode() for k in layout.bucket_keys(PREFIX, VIEW, 1)]
    command = ("EVALSHA", GET_MANY_SHA, 100, *[keys[b] for b in layout.bucket_of(VIEW, ids).tolist()],
               *layout.fields(ids))
    out = {}
    for name, store in stores.items():
        conn = store.client.connection_pool.make_connection()
        runs = timeit.repeat(lambda conn=conn: conn.pack_command(*command), number=2000, repeat=5)
        out[name] = float(np.median(runs)) / 2000 * 1e6
    return out


def ratio_cell(values: list[float]) -> str:
    return f"{np.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def table(warm: dict, cold: dict, read: dict, n: int) -> str:
    base = WRITERS[0]
    lines = ["| hot path | " + " | ".join(WRITERS) + " | " + " | ".join(f"{w} ÷ {base}" for w in WRITERS[1:]) + " |",
             "|---|" + "---|" * (2 * len(WRITERS) - 1)]
    for label, runs in ((f"sync write, warm, rows/s: median (min–max) of {len(warm[base])} rounds", warm),
                        (f"sync write, cold writer, rows/s: median (min–max) of {len(cold[base])} runs", cold)):
        med = {w: float(np.median(v)) for w, v in runs.items()}
        lines.append(f"| {label} | " + " | ".join(ratio_cell(runs[w]) for w in WRITERS) + " | "
                     + " | ".join(f"{med[w] / med[base]:.2f}" for w in WRITERS[1:]) + " |")
    lines += ["", "| hot path (ms) | " + " | ".join(READERS) + f" | {READERS[0]} ÷ {READERS[1]} |", "|---|---|---|---|"]
    a, b = READERS
    for size, command in ((1, "HMGET"), (100, "EVALSHA")):
        r = read[size]
        for q in ("p50", "p99"):
            lines.append(f"| read {q}, {size} entit{'y' if size == 1 else 'ies'} ({command}) | {r[a][q]:.3f} | "
                         f"{r[b][q]:.3f} | {r[a][q] / r[b][q]:.2f} |")
        lines.append(f"| read p99 per block, {size} entit{'y' if size == 1 else 'ies'}: min–max | "
                     f"{r[a]['p99_blocks'][0]:.3f}–{r[a]['p99_blocks'][1]:.3f} | "
                     f"{r[b]['p99_blocks'][0]:.3f}–{r[b]['p99_blocks'][1]:.3f} | |")
    pack = read["pack_us"]
    lines.append(f"| pack the 100-entity EVALSHA (µs, no I/O) | {pack[a]:.1f} | {pack[b]:.1f} | "
                 f"{pack[a] / pack[b]:.2f} |")
    return "\n".join(lines)


def out_of_time(*_) -> None:
    raise SystemExit("bench_wire: out of time")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entities", type=int, default=300_000)
    p.add_argument("--rounds", type=int, default=7, help="warm write rounds (each writes every entity once per writer)")
    p.add_argument("--cold-runs", type=int, default=6, help="cold writer runs per writer")
    p.add_argument("--calls", type=int, default=10_000, help="timed read calls per case and reader")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--blocks", type=int, default=5, help="read calls split into blocks for the p99 spread")
    p.add_argument("--batch-rows", type=int, default=1000, help="fields per HSET (features.sync_batch_rows)")
    p.add_argument("--budget-s", type=float, default=300, help="no new write round or cold run after this")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--child", choices=WRITERS, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.url, args.child, args.entities, args.batch_rows)
    command = " ".join(["python loadtests/bench_wire.py", shlex.join(sys.argv[1:])]).strip()
    started = time.monotonic()
    deadline = started + args.budget_s

    import hiredis
    import redis
    from redis.utils import HIREDIS_AVAILABLE

    from loadtests.bench_features import free_port, start_redis

    assert HIREDIS_AVAILABLE, "hiredis is not importable: install redis[hiredis]"
    port = free_port()
    server = start_redis(port)
    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(args.budget_s * 2 + 300))  # a hard stop; the finally below still stops redis-server
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis(port=port)
        data = batches(args.entities, args.seed)
        print(f"warm writes: {args.rounds} rounds of {args.entities:,} entities per writer ...", file=sys.stderr)
        warm = warm_writes(url, client, data, args.entities, args.rounds, args.batch_rows, deadline)
        print(f"cold writers: {args.cold_runs} runs per writer ...", file=sys.stderr)
        cold = cold_writes(url, client, args.entities, args.cold_runs, args.batch_rows, deadline)
        client.flushall()
        write(url, WRITERS[0], data, 1, args.batch_rows)
        publish(client, args.entities)
        print(f"reads: {args.calls:,} calls per case and reader ...", file=sys.stderr)
        read = asyncio.run(reads(url, args.entities, args.calls, args.warmup, args.blocks, args.seed))
        info = client.info("server")
    finally:
        server.terminate()
        server.wait(10)
    print(f"\nCommand: `{command}`\n")
    print(table(warm, cold, read, args.entities))
    print(f"\nredis-py {redis.__version__}, hiredis {hiredis.__version__} (parser: hiredis), redis-server "
          f"{info['redis_version']} on 127.0.0.1:{port}; {VIEW.name}: "
          f"{9 + 8 * len(VIEW.features)}-byte records, {VIEW.buckets} buckets, {args.batch_rows} fields per HSET, "
          f"{BATCH:,}-row Arrow batches; {args.entities:,} entities. Reader connection classes: {read['classes']}. "
          f"Reads: {args.calls:,} timed calls per case and reader after {args.warmup} warm-up calls, same ids for "
          f"both, order alternating per call. Total {time.monotonic() - started:.0f} s.")


if __name__ == "__main__":
    main()
