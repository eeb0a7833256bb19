"""A capacity model: the hardware a target load needs, from figures measured in loadtests/RESULTS.md.

    python loadtests/capacity.py --rps 50000 --entities 200_000_000 --views 2
    python loadtests/capacity.py --rps 50000 --entities 200_000_000 --views 2 --p99-ms 5 --json
    python loadtests/capacity.py ... --measure-memory      # bytes/entity re-measured on this machine

Sizing should not be folklore: every rate here is one this repository measured, and every number
that is not measured is named as an assumption and printed with the answer. :func:`plan` is a
pure function of a :class:`Target` and the :class:`Measured` figures (unit-tested); printing is
separate. Headroom is applied once per rate-bound resource (gateway cores, Redis operations,
Spark cores), as a target utilisation of ``1 - headroom``; memory is sized by explicit factors
instead (fragmentation, the second copy of a view during a full sync, replicas).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GB = 10**9
RECORD_HEADER = 9  # layout.record_dtype: fmt (u8) + as_of_ms (i64)
ROW_FRAMING = 23  # per HSET row besides the record: a 9-digit field and both RESP bulk headers
VALUE_BYTES = 8  # a double or long feature; float/int are 4 and bool 1 (not modelled: all 8)


@dataclass(frozen=True)
class Measured:
    """The model's inputs. Each is measured (RESULTS.md section and date) or marked ASSUMED."""

    gateway_cpu_ms_per_req: float = 0.61
    """Server CPU per request at c=32, mlgate as shipped (reuseport, one replica per core), one
    entity per request, 12 stored features: RESULTS.md "2026-12-05, any feature repository
    (issue 12)", run 06:32 (the higher of the day: 0.48 at 06:36, 0.46 and 0.49 with API keys and
    quotas in "2026-12-05, authentication and quotas"). Includes Redis's CPU, so slightly high."""
    gateway_direct_cpu_ms_per_req: float = 1.10
    """Same, Ray Serve direct ingress (what the Helm chart runs, one replica per pod): RESULTS.md
    "2026-12-01 ... Gateway against its peers (issue 6)", 22:46 run, mlgate-direct c=32."""
    gateway_p99_ms_unloaded: float = 1.08
    """p99 with one request in flight (no queueing), mlgate c=1: RESULTS.md "2026-12-05,
    authentication and quotas (issue 13)". The latency model's anchor."""
    gateway_p99_ms_c32: float = 16.32
    """p99 at c=32, the box saturated (closed loop): same section; reported, not modelled."""
    bytes_per_entity: float = 168.5
    """Redis used_memory per stored entity, 12 double features (105-byte record), 9-digit ids,
    64 buckets, redis-server 7.0.15: RESULTS.md "2026-12-05, capacity model inputs" (measured by
    loadtests/entity_memory.py with 1 M entities; 168.4 with 4 M)."""
    bytes_per_entity_features: int = 12
    """The feature count ``bytes_per_entity`` was measured at (other counts are scaled)."""
    sync_rows_per_s_per_core: float = 201_748
    """A session's first full sync, Parquet read included, 1 M rows of the 12-feature view:
    403,495 rows/s on 2 cores shared by Spark, both writers and Redis: RESULTS.md "2026-12-01 ...
    Features: sync and reads against Feast (issue 3)", run 2. The lowest recent figure (671-788k
    rows/s on the faster VM of "First sync at 50x Feast", 2026-11-26)."""
    sync_record_bytes: int = 105
    """The record size of that sync (12 features); other sizes are scaled by framed bytes."""
    redis_ops_per_s_per_shard: float = 100_000
    """ASSUMED, not measured here: entity lookups (one HGET/HMGET field) per second one Redis
    primary serves, one core, small values. The benchmarks measured latency, not this ceiling."""
    redis_shard_memory_bytes: float = 25 * GB
    """ASSUMED operational limit per primary (fork for replica sync and failover time)."""
    fragmentation: float = 1.2
    """ASSUMED RSS / used_memory of a long-lived node (jemalloc); a fresh fill measures ~1.0."""
    http_request_bytes: int = 400
    """ASSUMED bytes in per predict call (headers + a one-entity JSON body), TCP/IP not counted."""
    http_response_bytes: int = 300
    """ASSUMED bytes out per predict call (headers + JSON answer)."""
    replicas_per_pod_reuseport: int = 4
    """ASSUMED pod size for reuseport: one replica per CPU (`mlgate serve`), 4-CPU pods."""


@dataclass(frozen=True)
class Target:
    rps: float
    entities: int
    views: int
    features_per_view: int = 12
    p99_ms: float | None = None
    headroom: float = 0.3
    replication: int = 1
    """Replicas per Redis primary (0: none); each holds a full copy."""
    sync_window_h: float = 1.0
    """A full sync of every view must fit in this window."""
    ingress: str = "reuseport"

    def check(self) -> None:
        """Refuse what has no meaning, before any arithmetic."""
        problems = []
        if not self.rps > 0:
            problems.append("rps must be > 0")
        if self.entities < 1:
            problems.append("entities must be >= 1")
        if self.views < 1:
            problems.append("views must be >= 1")
        if self.features_per_view < 1:
            problems.append("features-per-view must be >= 1")
        if not 0 <= self.headroom < 1:
            problems.append("headroom must be in [0, 1)")
        if self.replication < 0:
            problems.append("replication must be >= 0")
        if not self.sync_window_h > 0:
            problems.append("sync-window-h must be > 0")
        if self.p99_ms is not None and not self.p99_ms > 0:
            problems.append("p99-ms must be > 0")
        if self.ingress not in ("reuseport", "direct"):
            problems.append("ingress must be reuseport or direct")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class Plan:
    utilisation: float
    """Target busy share of each gateway core: 1 - headroom, lowered further by a p99 target."""
    predicted_p99_ms: float | None
    """None at 100% utilisation (no headroom): the queue has no bound."""
    gateway_rps_per_core: float
    gateway_cores: int
    replicas_per_pod: int
    gateway_pods: int
    record_bytes: int
    bytes_per_entity: float
    redis_live_bytes: float
    """One copy of every view, as used_memory."""
    redis_peak_bytes_per_copy: float
    """Live data plus the second version of one view during its full sync, times fragmentation."""
    redis_total_bytes: float
    """Peak per copy times (1 + replicas)."""
    lookups_per_s: float
    shards_for_memory: int
    shards_for_ops: int
    redis_shards: int
    redis_nodes: int
    http_bytes_in_per_s: float
    http_bytes_out_per_s: float
    redis_bytes_per_s: float
    """Gateway <-> Redis, both directions, commands and replies."""
    sync_rows_per_s: float
    spark_executor_cores: int
    assumptions: list[str] = field(default_factory=list)


def record_bytes(features: int) -> int:
    return RECORD_HEADER + VALUE_BYTES * features


def jemalloc_class(size: int) -> int:
    """The allocation jemalloc makes for ``size`` bytes (its size classes: 8, 16 then steps of 16
    up to 128, then four classes per doubling)."""
    if size <= 8:
        return 8
    if size <= 128:
        return -(-size // 16) * 16
    step = 1 << (math.ceil(math.log2(size)) - 3)
    return -(-size // step) * step


def _value_alloc(record: int) -> int:
    """A Redis string of ``record`` bytes: sds header (3 bytes below 256, else 5) + bytes + NUL."""
    return jemalloc_class(record + (3 if record < 256 else 5) + 1)


def bytes_per_entity(measured: Measured, features: int) -> float:
    """The measured figure, with the value's allocation swapped for that of ``features`` features:
    everything else per entity (hash entry, field, table slot) does not depend on the record."""
    fixed = measured.bytes_per_entity - _value_alloc(record_bytes(measured.bytes_per_entity_features))
    return fixed + _value_alloc(record_bytes(features))


def redis_bytes_per_request(target: Target, record: int) -> int:
    """Bytes of one request's Redis round trip, both ways, framed by the real layout and packer:
    one HMGET of one field per view (what the reader sends on a Redis Cluster; on a single Redis
    one EVALSHA of all views, within a few bytes of it) and one record per view back."""
    from features_online import layout, wire
    from loadtests.entity_memory import FIRST_ID, view_of

    view = view_of(target.features_per_view)
    key = layout.bucket_key("mlg", view, 1_000, 63).encode()
    command = len(wire.pack((b"HMGET", key, layout.field(FIRST_ID))))
    reply = len(b"*1\r\n$%d\r\n" % record) + record + 2
    return target.views * (command + reply)


def plan(target: Target, measured: Measured) -> Plan:
    target.check()
    # Gateway: CPU per request measured at saturation; each replica is one Python event loop, one core.
    cpu_ms = measured.gateway_cpu_ms_per_req if target.ingress == "reuseport" else measured.gateway_direct_cpu_ms_per_req
    per_core = 1000 / cpu_ms
    utilisation = 1 - target.headroom
    if target.p99_ms is not None:
        # p99 ~ unloaded p99 / (1 - utilisation) (an M/M/1-like queue anchored at the measured c=1 p99)
        if target.p99_ms <= measured.gateway_p99_ms_unloaded:
            raise ValueError(f"p99 {target.p99_ms} ms is at or below the measured p99 with no queueing "
                             f"({measured.gateway_p99_ms_unloaded} ms): no number of cores meets it")
        utilisation = min(utilisation, 1 - measured.gateway_p99_ms_unloaded / target.p99_ms)
    cores = math.ceil(target.rps / (per_core * utilisation))
    per_pod = measured.replicas_per_pod_reuseport if target.ingress == "reuseport" else 1
    pods = math.ceil(cores / per_pod)
    # Redis memory: every view's live version, plus a second version of the view being fully synced.
    record = record_bytes(target.features_per_view)
    per_entity = bytes_per_entity(measured, target.features_per_view)
    live = target.entities * target.views * per_entity
    peak = (live + target.entities * per_entity) * measured.fragmentation
    total = peak * (1 + target.replication)
    # Redis operations: one lookup per view per request, all in one round trip.
    lookups = target.rps * target.views
    for_memory = math.ceil(peak / measured.redis_shard_memory_bytes)
    for_ops = math.ceil(lookups / (measured.redis_ops_per_s_per_shard * (1 - target.headroom)))
    shards = max(for_memory, for_ops)
    # Spark: every view's rows within the window; write cost scales with the framed row.
    sync_rows = target.entities * target.views / (target.sync_window_h * 3600)
    rate = measured.sync_rows_per_s_per_core * (measured.sync_record_bytes + ROW_FRAMING) / (record + ROW_FRAMING)
    spark = math.ceil(sync_rows / (rate * (1 - target.headroom)))
    return Plan(
        utilisation=utilisation,
        predicted_p99_ms=measured.gateway_p99_ms_unloaded / (1 - utilisation) if utilisation < 1 else None,
        gateway_rps_per_core=per_core, gateway_cores=cores, replicas_per_pod=per_pod, gateway_pods=pods,
        record_bytes=record, bytes_per_entity=per_entity, redis_live_bytes=live,
        redis_peak_bytes_per_copy=peak, redis_total_bytes=total, lookups_per_s=lookups,
        shards_for_memory=for_memory, shards_for_ops=for_ops, redis_shards=shards,
        redis_nodes=shards * (1 + target.replication),
        http_bytes_in_per_s=target.rps * measured.http_request_bytes,
        http_bytes_out_per_s=target.rps * measured.http_response_bytes,
        redis_bytes_per_s=target.rps * redis_bytes_per_request(target, record),
        sync_rows_per_s=sync_rows, spark_executor_cores=spark,
        assumptions=assumptions(target, measured))


def assumptions(target: Target, measured: Measured) -> list[str]:
    m = measured
    return [
        f"MEASURED gateway CPU per request at c=32, one entity per request: {m.gateway_cpu_ms_per_req} ms "
        f"(reuseport), {m.gateway_direct_cpu_ms_per_req} ms (direct ingress); it includes Redis's CPU on the same box",
        f"MEASURED p99 with no queueing {m.gateway_p99_ms_unloaded} ms; p99 modelled as that / (1 - utilisation) "
        f"(M/M/1-like, ASSUMED); closed-loop p99 at c=32 on a saturated box was {m.gateway_p99_ms_c32} ms",
        f"MEASURED {m.bytes_per_entity} bytes/entity at {m.bytes_per_entity_features} features (Redis 7.0, "
        "hashtable-encoded bucket hashes, 9-digit ids); other feature counts: the value's jemalloc size "
        "class swapped, every feature 8 bytes (double/long)",
        f"MEASURED sync {m.sync_rows_per_s_per_core:,.0f} rows/s per core (first sync, Parquet read included, "
        f"{m.sync_record_bytes}-byte records); scaled by framed bytes per row for other record sizes",
        f"ASSUMED {m.redis_ops_per_s_per_shard:,.0f} entity lookups/s per Redis primary",
        f"ASSUMED {m.redis_shard_memory_bytes / GB:g} GB per Redis primary, fragmentation x{m.fragmentation}",
        "DESIGN (features_online/sync.py): a full sync writes a new version beside the live one, so peak "
        "memory holds one view twice (views synced one at a time)",
        "DESIGN (features_online/reader.py): one Redis round trip per request, one lookup per view "
        "(one EVALSHA on a single Redis, one HMGET per view pipelined on a cluster)",
        f"ASSUMED {m.http_request_bytes} B in / {m.http_response_bytes} B out per HTTP call; "
        f"{m.replicas_per_pod_reuseport} replicas (CPUs) per gateway pod with reuseport, 1 with direct ingress",
        f"headroom {target.headroom:.0%} applied once to each rate (gateway, Redis ops, Spark), not to memory",
        "NOT MODELLED: batch requests (>1 entity), batch-score (fallback) views, cache hits, "
        "model inference cost other than the demo's ONNX tree ensemble, TLS, API-key quotas",
    ]


def _gb(n: float) -> str:
    return f"{n / GB:,.1f} GB"


def _rate(n: float) -> str:
    return f"{n / 10**6:,.1f} MB/s ({n * 8 / 10**9:,.2f} Gbit/s)"


def render(target: Target, p: Plan) -> str:
    lines = [
        f"Target: {target.rps:,.0f} req/s, {target.entities:,} entities x {target.views} views "
        f"x {target.features_per_view} features, headroom {target.headroom:.0%}, "
        f"{target.replication} replica(s) per Redis primary, full sync within {target.sync_window_h:g} h"
        + (f", p99 <= {target.p99_ms:g} ms" if target.p99_ms else ""),
        "",
        f"Gateway ({target.ingress} ingress): {p.gateway_cores} cores = {p.gateway_pods} pods x "
        f"{p.replicas_per_pod} replicas",
        f"  {p.gateway_rps_per_core:,.0f} req/s per core at saturation (c=32), run at {p.utilisation:.0%}: "
        f"{p.gateway_rps_per_core * p.utilisation:,.0f} req/s per core; modelled p99 "
        + (f"{p.predicted_p99_ms:.1f} ms" if p.predicted_p99_ms is not None else "unbounded (no headroom)"),
        f"Redis memory: {_gb(p.redis_total_bytes)} in all",
        f"  {p.bytes_per_entity:.1f} B/entity ({p.record_bytes}-byte record): live {_gb(p.redis_live_bytes)}; "
        f"peak per copy {_gb(p.redis_peak_bytes_per_copy)} (+1 view during a full sync, x fragmentation); "
        f"x {1 + target.replication} copies",
        f"Redis shards: {p.redis_shards} primaries ({p.redis_nodes} nodes with replicas); "
        f"memory needs {p.shards_for_memory}, {p.lookups_per_s:,.0f} lookups/s need {p.shards_for_ops}",
        f"Network: HTTP in {_rate(p.http_bytes_in_per_s)}, out {_rate(p.http_bytes_out_per_s)}; "
        f"gateway <-> Redis {_rate(p.redis_bytes_per_s)}",
        f"Spark sync: {p.spark_executor_cores} executor core(s) for {p.sync_rows_per_s:,.0f} rows/s",
        "",
        "Assumptions:",
        *(f"  - {a}" for a in p.assumptions),
    ]
    return "\n".join(lines)


def _int(text: str) -> int:
    return int(text.replace("_", "").replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rps", type=float, required=True, help="predict requests per second (one entity each)")
    parser.add_argument("--entities", type=_int, required=True, help="entities per view")
    parser.add_argument("--views", type=int, required=True, help="feature views each request reads")
    parser.add_argument("--features-per-view", type=int, default=12)
    parser.add_argument("--p99-ms", type=float, default=None)
    parser.add_argument("--headroom", type=float, default=0.3)
    parser.add_argument("--replication", type=int, default=1, help="replicas per Redis primary")
    parser.add_argument("--sync-window-h", type=float, default=1.0)
    parser.add_argument("--ingress", choices=("reuseport", "direct"), default="reuseport")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--measure-memory", action="store_true",
                        help="re-measure bytes/entity on this machine (private redis-server, 1 M entities)")
    args = parser.parse_args(argv)
    target = Target(args.rps, args.entities, args.views, args.features_per_view, args.p99_ms, args.headroom,
                    args.replication, args.sync_window_h, args.ingress)
    measured = Measured()
    if args.measure_memory:
        from loadtests.entity_memory import measure

        features = args.features_per_view
        measured = replace(measured, bytes_per_entity=measure(features=features), bytes_per_entity_features=features)
    try:
        result = plan(target, measured)
    except ValueError as exc:
        parser.error(str(exc))
    if args.json:
        print(json.dumps({"target": asdict(target), "measured": asdict(measured), "plan": asdict(result)}, indent=2))
    else:
        print(render(target, result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
