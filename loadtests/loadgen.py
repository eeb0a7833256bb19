"""The load generator of loadtests/bench_gateway.py: a closed-loop asyncio HTTP/1.1 client.

Each of N workers holds one keep-alive connection and sends pre-encoded requests back to back; a
request counts when it starts after the warm-up and ends before the run does. Also measured over
the counted window: this process's CPU (getrusage), the host's busy cores (/proc/stat) and the CPU
of every process under the server's pids. Run it on uvloop (the caller sets the policy).
"""

from __future__ import annotations

import asyncio
import resource
import time
from pathlib import Path

import psutil


def http(method: str, port: int, path: str, body: bytes = b"", headers: str = "") -> bytes:
    """One request; ``headers``: more header lines, each ending in CRLF."""
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"{headers}Content-Length: {len(body)}\r\n\r\n").encode() + body


async def exchange(reader, writer, raw: bytes) -> tuple[int, bytes]:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    at = head.lower().find(b"\r\ncontent-length:")
    if at >= 0:
        return int(head[9:12]), await reader.readexactly(int(head[at + 17:head.index(b"\r\n", at + 2)]))
    body = b""  # chunked (Ray Serve's proxy answers that way)
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readexactly(2)
    return int(head[9:12]), body


def call(port: int, raw: bytes) -> tuple[int, bytes]:
    async def once():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(exchange(reader, writer, raw), 30)
        finally:
            writer.close()
    return asyncio.run(once())


def host_busy() -> tuple[float, float]:
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)  # (busy, total) jiffies


def server_procs(roots: list[int]) -> dict[int, tuple[str, int, float]]:
    """pid -> (name, nice, CPU seconds so far) of every process under the given pids."""
    out = {}
    for root in roots:
        try:
            top = psutil.Process(root)
            for p in [top, *top.children(recursive=True)]:
                out[p.pid] = (p.name()[:36], p.nice(), sum(p.cpu_times()[:2]))
        except psutil.Error:
            continue
    return out


async def load(port: int, requests: list[bytes], concurrency: int, warmup: float, duration: float,
               roots: list[int]) -> dict:
    start = time.perf_counter()
    t_measure, t_end = start + warmup, start + warmup + duration
    latencies: list[float] = []
    errors = [0]
    snaps: dict[str, tuple] = {}

    async def snapshot(at: float, key: str) -> None:
        await asyncio.sleep(at - time.perf_counter())
        r = resource.getrusage(resource.RUSAGE_SELF)
        snaps[key] = (time.perf_counter(), r.ru_utime + r.ru_stime, host_busy(), server_procs(roots))

    async def worker(w: int) -> None:
        k = w * 997
        while time.perf_counter() < t_end:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                while True:
                    raw = requests[k % len(requests)]
                    k += 1
                    t0 = time.perf_counter()
                    status, _ = await exchange(reader, writer, raw)
                    t1 = time.perf_counter()
                    if t1 > t_end:
                        return
                    if t0 >= t_measure:
                        if status == 200:
                            latencies.append(t1 - t0)
                        else:
                            errors[0] += 1
            except (ConnectionError, asyncio.IncompleteReadError):
                errors[0] += 1  # reconnect and go on
            finally:
                writer.close()

    await asyncio.wait_for(asyncio.gather(snapshot(t_measure, "a"), snapshot(t_end, "b"),
                                          *(worker(w) for w in range(concurrency))), warmup + duration + 60)
    (wa, ca, (ba, ta), pa), (wb, cb, (bb, tb), pb) = snaps["a"], snaps["b"]
    wall = wb - wa
    procs = sorted(((pb[k][2] - pa[k][2]) / wall, pb[k][0]) for k in pb if k in pa)[::-1]
    lat = sorted(latencies) or [float("nan")]
    return {"p50": 1000 * lat[len(lat) // 2], "p99": 1000 * lat[int(len(lat) * 0.99)], "n": len(latencies),
            "rps": len(latencies) / duration, "errors": errors[0], "gen_cores": (cb - ca) / wall,
            "host_busy": (bb - ba) / (tb - ta) * psutil.cpu_count(),
            "server_cpu_ms": 1000 * sum(c for c, _ in procs) / max(len(latencies) / duration, 1e-9),
            "top_procs": [(n, round(c, 2)) for c, n in procs[:3]]}
