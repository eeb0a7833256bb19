"""One gateway, three protocols, the same request: mlgate's native REST predict, Open Inference
Protocol v2 REST and OIP v2 gRPC, each driven by h2load (nghttp2's load generator, in C: HTTP/1.1
for the REST paths, HTTP/2 for gRPC) at each concurrency, in the same run.

    .venv/bin/python loadtests/bench_protocols.py [--state-dir /tmp/mlgate-bench-state] [--duration 10]

Needs `h2load` (Debian: nghttp2-client) and the demo state bench_gateway.py prepares in
--state-dir (built here when missing). The gateway is started as `mlgate demo --detach` starts it
(reuseport ingress, one replica per CPU) with the gRPC service on. Every request is the same
entity-keyed call (one customer's 12 stored features read from Redis, 9 request-time inputs):
h2load sends one body. h2load cannot read gRPC's status trailer, so the gateway's own
`mlgate_protocol_requests_total` is read before and after each run: every request must have
been answered ok.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from loadtests.bench_gateway import (MODEL, PREDICT, bodies, free_port, kill, mlgate_system, model_files,  # noqa: E402
                                     oip_body, prepare, settle, spawn)
from loadtests.loadgen import call, http  # noqa: E402

GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def grpc_frame(keyed: dict) -> bytes:
    """The entity-keyed body as a length-prefixed ModelInferRequest (gRPC's wire framing)."""
    from serving.rpc.proto import protocol

    request = protocol().ModelInferRequest(model_name=MODEL)
    for tensor in oip_body(keyed)["inputs"]:
        item = request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        if tensor["datatype"] == "INT64":
            item.contents.int64_contents.extend(tensor["data"])
        else:
            item.contents.fp64_contents.extend(tensor["data"])
    raw = request.SerializeToString()
    return b"\x00" + len(raw).to_bytes(4, "big") + raw


def protocol_counts(port: int) -> dict[tuple[str, str], float]:
    text = call(port, http("GET", port, "/metrics"))[1].decode()
    found = re.findall(r'^mlgate_protocol_requests_total\{outcome="([^"]+)",protocol="([^"]+)"\} (\S+)$',
                       text, re.MULTILINE)
    return {(protocol, outcome): float(v) for outcome, protocol, v in found}


def h2load(url: str, body: bytes, headers: list[str], c: int, duration: float, warmup: float, h1: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data, log = Path(tmp) / "body", Path(tmp) / "log"
        data.write_bytes(body)
        cmd = ["h2load", "-c", str(c), "-m", "1", "-D", f"{duration:g}", "--warm-up-time", f"{warmup:g}",
               "-d", str(data), "--log-file", str(log), *(["--h1"] if h1 else []),
               *[arg for h in headers for arg in ("-H", h)], url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 120)
        if done.returncode != 0:
            raise RuntimeError(f"h2load failed: {done.stdout[-1000:]} {done.stderr[-1000:]}")
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    statuses = [int(r[1]) for r in rows]
    latencies = sorted(int(r[2]) / 1000 for r in rows)  # µs -> ms
    span_s = (max(int(r[0]) for r in rows) - min(int(r[0]) for r in rows)) / 1e6 if rows else duration
    return {"requests": len(rows), "non_200": sum(s != 200 for s in statuses),
            "rps": len(rows) / max(span_s, 1e-9), "p50": statistics.median(latencies),
            "p99": latencies[int(0.99 * (len(latencies) - 1))], "mean": statistics.fmean(latencies)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", type=Path, default=Path("/tmp/mlgate-bench-state"))
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2, help="each protocol this many times per level, interleaved")
    args = p.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load is not installed (Debian: apt-get install nghttp2-client)")
    levels = [int(c) for c in args.concurrency.split(",")]
    state = args.state_dir.expanduser().resolve()
    (state / "bench-logs").mkdir(parents=True, exist_ok=True)
    began = datetime.now().astimezone()
    print(f"bench_protocols started {began:%Y-%m-%d %H:%M:%S %Z}", flush=True)
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    os.environ.update(MLGATE_REDIS__URL=redis_url, MLGATE_HTTP__PROXY_PORT=str(free_port()))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    redis_proc = spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", str(state)], state / "bench-logs" / "redis.log")
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        from serving.settings import Settings

        time.sleep(0.5)
        settings = Settings(state_dir=state)
        prepare(settings, dict(os.environ), args.customers, state / "bench-logs" / "prepare.log")
        _, _, inputs = model_files(settings)
        keyed = bodies(redis_url, inputs, args.customers, 1, seed=42)[0][0]
        port, grpc_port = free_port(), free_port()
        grpc_env = {"MLGATE_PROTOCOLS__GRPC__ENABLED": "true", "MLGATE_PROTOCOLS__GRPC__PORT": str(grpc_port)}
        with mlgate_system(state, port, env=grpc_env):
            systems = {
                "mlgate REST": (f"http://127.0.0.1:{port}{PREDICT}", json.dumps(keyed).encode(),
                                ["content-type: application/json"], True, "mlgate"),
                "OIP v2 REST": (f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer",
                                json.dumps(oip_body(keyed)).encode(), ["content-type: application/json"], True, "v2"),
                "OIP v2 gRPC": (f"http://127.0.0.1:{grpc_port}{GRPC_METHOD}", grpc_frame(keyed),
                                ["content-type: application/grpc", "te: trailers"], False, "v2-grpc"),
            }
            settled_s, busy = settle()
            print(f"gateway up on :{port} (gRPC :{grpc_port}); settled after {settled_s:.0f} s "
                  f"({busy:.2f} cores busy)", flush=True)
            for c in levels:
                for _ in range(args.rounds):
                    for name, (url, body, headers, h1, label) in systems.items():
                        before = protocol_counts(port)
                        r = h2load(url, body, headers, c, args.duration, args.warmup, h1)
                        after = protocol_counts(port)
                        r["ok"] = after.get((label, "ok"), 0) - before.get((label, "ok"), 0)
                        r["not_ok"] = sum(v - before.get(k, 0) for k, v in after.items()
                                          if k[0] == label and k[1] != "ok")
                        results.setdefault((name, c), []).append(r)
                        print(f"  {name:12} c={c:>2}  p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  "
                              f"{r['rps']:8.1f} req/s  non-200 {r['non_200']}  gateway ok/errors "
                              f"{r['ok']:.0f}/{r['not_ok']:.0f}", flush=True)
    finally:
        kill(redis_proc)
    report(results, levels, began)


def report(results: dict[tuple[str, int], list[dict]], levels: list[int], began: datetime) -> None:
    ended = datetime.now().astimezone()
    print(f"\nrun {began:%Y-%m-%d %H:%M}-{ended:%H:%M %Z}; each cell: the median of the rounds\n")
    print("| protocol | concurrency | p50 ms | p99 ms | req/s | errors | p50 / mlgate REST | req/s / mlgate REST |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")

    def med(name: str, c: int, key: str) -> float:
        return statistics.median(r[key] for r in results[(name, c)])

    for (name, c), runs in results.items():
        errors = sum(r["non_200"] + r["not_ok"] for r in runs)
        print(f"| {name} | {c} | {med(name, c, 'p50'):.2f} | {med(name, c, 'p99'):.2f} | {med(name, c, 'rps'):,.0f} "
              f"| {errors} | {med(name, c, 'p50') / med('mlgate REST', c, 'p50'):.2f}x "
              f"| {med(name, c, 'rps') / med('mlgate REST', c, 'rps'):.2f}x |")
    lo, hi = min(levels), max(levels)
    print(f"\n- OIP v2 REST p50 / mlgate REST p50 at c={lo}: "
          f"{med('OIP v2 REST', lo, 'p50') / med('mlgate REST', lo, 'p50'):.2f}x (target: at most 1.2x)")
    print(f"- OIP v2 gRPC req/s / mlgate REST req/s at c={hi}: "
          f"{med('OIP v2 gRPC', hi, 'rps') / med('mlgate REST', hi, 'rps'):.2f}x (target: at least 1x)")


if __name__ == "__main__":
    main()
