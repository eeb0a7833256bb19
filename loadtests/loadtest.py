"""Run the Locust traffic (loadtests/locustfile.py) headless against a gateway and gate on SLOs.

    python loadtests/loadtest.py --duration 60s --users 32            # gateway on :8000
    python loadtests/loadtest.py --host http://127.0.0.1:8300 --customers 20000 --shape spike

Writes Locust's CSV files, an HTML report and ``summary.json`` under ``--out`` (default
``loadtests/reports/<timestamp>/``), prints a summary of the valid traffic, and exits 0 when every
SLO gate passes, 1 when one fails, 2 when Locust itself did not run.

Interface for ``mlgate loadtest``: :func:`add_arguments` and :func:`run`. The pieces under them are
pure and unit-tested: :func:`summarize` (Locust stats rows -> figures) and :func:`failed_gates`
(figures -> failed gates). Standard library only: no gateway imports.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import resource
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
REPORTS = HERE / "reports"  # gitignored
INVALID_PREFIX = "invalid: "  # = traffic.INVALID_PREFIX (a unit test keeps them equal)
VALID_ROW = ("ALL", "valid traffic")  # (Type, Name) of the locustfile's synthetic rows
ROWS_TYPE = "ROWS"
GRACE_S = 60  # Locust start-up and stop time allowed beyond --duration before it is killed


@dataclass(frozen=True)
class Slo:
    p99_ms: float = 50.0
    error_rate: float = 0.01
    fallback_rate: float = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="http://127.0.0.1:8000", help="gateway base URL")
    parser.add_argument("--duration", default="30s", help="how long to load: 90, 30s, 2m, 1m30s")
    parser.add_argument("--users", type=int, default=32, help="concurrent users (the shape's peak)")
    parser.add_argument("--spawn-rate", type=float, default=None, help="users started per second "
                        "(steady shape; default: all of them within a second)")
    parser.add_argument("--shape", choices=("steady", "ramp", "spike"), default="steady")
    parser.add_argument("--customers", type=int, default=100_000,
                        help="customer ids 1..N synced to the online store (demo default 100000)")
    parser.add_argument("--zipf-s", type=float, default=1.0, help="popularity skew of customers")
    parser.add_argument("--user-rps", type=float, default=10.0,
                        help="mean requests/s per user, Poisson arrivals (0: closed loop, no pause)")
    parser.add_argument("--batch-share", type=float, default=0.15, help="requests with 10-50 entities")
    parser.add_argument("--invalid-share", type=float, default=0.02, help="deliberately invalid requests")
    parser.add_argument("--canary-share", type=float, default=0.0,
                        help="valid requests forced to the canary (x-mlgate-variant: canary; needs a loopback "
                             "caller or LOADTEST_ADMIN_TOKEN)")
    parser.add_argument("--model", default="fraud-detector")
    parser.add_argument("--max-requests", type=int, default=2_000_000, help="hard cap on requests")
    parser.add_argument("--out", default=None, help="report folder (default loadtests/reports/<timestamp>)")
    parser.add_argument("--slo-p99-ms", type=float, default=Slo.p99_ms,
                        help="p99 latency of valid traffic, ms")
    parser.add_argument("--slo-error-rate", type=float, default=Slo.error_rate,
                        help="failed share of valid requests (also: invalid requests answered wrongly)")
    parser.add_argument("--slo-fallback-rate", type=float, default=Slo.fallback_rate,
                        help="share of prediction rows served from batch fallback scores")


def parse_duration(text: str) -> int:
    """Seconds in "90", "30s", "2m", "1m30s", "1h"."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text)
    parts = re.findall(r"(\d+)\s*([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"bad duration {text!r}: use e.g. 30s, 2m, 1m30s")
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def read_stats(path: Path) -> list[dict[str, str]]:
    """Rows of Locust's ``*_stats.csv``: its last once-a-second snapshot, so requests still in
    flight at the stop may be missing (a handful against Locust's printed table)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(value: str | None) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # "N/A" when an entry had no requests
        return None


def _rate(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def summarize(rows: list[dict[str, str]]) -> dict[str, Any]:
    """The figures the gates judge, from the rows of Locust's ``*_stats.csv``."""
    by_key = {(r["Type"], r["Name"]): r for r in rows}
    total = by_key.get(("", "Aggregated"), {})
    valid = by_key.get(VALID_ROW, {})
    invalid = [r for r in rows if r["Name"].startswith(INVALID_PREFIX)]

    def count(row: dict[str, str], column: str = "Request Count") -> int:
        return int(_number(row.get(column)) or 0)

    def row_count(kind: str) -> int:
        return count(by_key.get((ROWS_TYPE, f"rows {kind}"), {}))

    s: dict[str, Any] = {
        "requests": count(total), "failures": count(total, "Failure Count"),
        "rps": _number(total.get("Requests/s")) or 0.0,
        "valid_requests": count(valid), "valid_failures": count(valid, "Failure Count"),
        "valid_rps": _number(valid.get("Requests/s")) or 0.0,
        "p50_ms": _number(valid.get("50%")), "p95_ms": _number(valid.get("95%")),
        "p99_ms": _number(valid.get("99%")), "max_ms": _number(valid.get("Max Response Time")),
        "invalid_requests": sum(count(r) for r in invalid),
        "invalid_unexpected": sum(count(r, "Failure Count") for r in invalid),
        "rows": row_count("scored"), "default_rows": row_count("default"),
        "fallback_rows": row_count("fallback"),
    }
    s["error_rate"] = _rate(s["valid_failures"], s["valid_requests"])
    s["invalid_mismatch_rate"] = _rate(s["invalid_unexpected"], s["invalid_requests"])
    s["default_rate"] = _rate(s["default_rows"], s["rows"])
    s["fallback_rate"] = _rate(s["fallback_rows"], s["rows"])
    return s


def failed_gates(summary: dict[str, Any], slo: Slo) -> list[str]:
    """Every SLO gate the run failed, as a sentence; empty when all pass."""
    if not summary["valid_requests"]:
        return ["traffic: no valid request was made"]
    failed = []
    p99 = summary["p99_ms"]
    if p99 is None or p99 > slo.p99_ms:
        failed.append(f"p99 latency {p99} ms > {slo.p99_ms:g} ms")
    if summary["error_rate"] > slo.error_rate:
        failed.append(f"error rate {summary['error_rate']:.3%} > {slo.error_rate:.3%} "
                      f"({summary['valid_failures']} of {summary['valid_requests']} valid requests failed)")
    # An invalid request answered with anything but its 4xx (a 500, a 200, a timeout) is a defect.
    if summary["invalid_mismatch_rate"] > slo.error_rate:
        failed.append(f"invalid requests answered wrongly: {summary['invalid_unexpected']} of "
                      f"{summary['invalid_requests']} ({summary['invalid_mismatch_rate']:.3%} > "
                      f"{slo.error_rate:.3%})")
    if summary["fallback_rate"] > slo.fallback_rate:
        failed.append(f"fallback rate {summary['fallback_rate']:.3%} > {slo.fallback_rate:.3%} "
                      f"({summary['fallback_rows']} of {summary['rows']} rows)")
    return failed


def format_summary(s: dict[str, Any], slo: Slo, failed: list[str]) -> str:
    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{round(v, 1):g} ms"

    lines = [
        f"requests            {s['requests']:,} ({s['valid_requests']:,} valid, "
        f"{s['invalid_requests']:,} invalid by design), {s['rps']:,.1f} req/s",
        f"unexpected failures {s['failures']:,} (valid: {s['valid_failures']:,}, "
        f"invalid answered wrongly: {s['invalid_unexpected']:,})",
        f"error rate          {s['error_rate']:.3%} of valid requests",
        f"latency, valid      p50 {ms(s['p50_ms'])}  p95 {ms(s['p95_ms'])}  p99 {ms(s['p99_ms'])}  "
        f"max {ms(s['max_ms'])}",
        f"rows scored         {s['rows']:,}: default features {s['default_rows']:,} "
        f"({s['default_rate']:.2%}), fallback {s['fallback_rows']:,} ({s['fallback_rate']:.2%})",
    ]
    if "generator_cpu" in s:
        lines.append(f"load generator CPU  {s['generator_cpu']:.0%} of one core")
    verdict = (["SLO gates: FAILED"] + [f"  - {f}" for f in failed]) if failed else [
        f"SLO gates: passed (p99 <= {slo.p99_ms:g} ms, error rate <= {slo.error_rate:.2%}, "
        f"fallback rate <= {slo.fallback_rate:.2%})"]
    return "\n".join(["", "load test summary", *lines, *verdict])


def locust_command(args: argparse.Namespace, seconds: int, out: Path) -> list[str]:
    users = max(1, args.users)
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
            "--host", args.host, "--users", str(users),
            "--spawn-rate", str(args.spawn_rate or users), "--run-time", f"{seconds}s",
            "--stop-timeout", "5", "--csv", str(out / "locust"), "--html", str(out / "report.html"),
            "--shape", args.shape, "--customers", str(args.customers), "--zipf-s", str(args.zipf_s),
            "--user-rps", str(args.user_rps), "--batch-share", str(args.batch_share),
            "--invalid-share", str(args.invalid_share), "--canary-share", str(args.canary_share),
            "--model", args.model, "--max-requests", str(args.max_requests)]


def _run_locust(cmd: list[str], timeout_s: float) -> tuple[int, float]:
    """Run Locust, echoing its output; kill it past ``timeout_s``. (exit code, its CPU seconds)"""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    watchdog = threading.Timer(timeout_s, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            print(line, end="", flush=True)
        rc = proc.wait()
    finally:
        watchdog.cancel()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return rc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(args: argparse.Namespace) -> int:
    """Load the gateway, write reports, print the summary: 0 = gates passed, 1 = failed, 2 = no run."""
    try:
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else REPORTS / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    slo = Slo(args.slo_p99_ms, args.slo_error_rate, args.slo_fallback_rate)
    cmd = locust_command(args, seconds, out)
    print("$ " + shlex.join(cmd), flush=True)
    started = time.monotonic()
    rc, cpu_s = _run_locust(cmd, seconds + GRACE_S)
    stats = out / "locust_stats.csv"
    if rc not in (0, 1) or not stats.exists():  # Locust exits 1 on any failure: the gates judge those
        print(f"locust did not complete (exit code {rc}); see its output above", file=sys.stderr)
        return 2
    summary = summarize(read_stats(stats))
    summary["generator_cpu"] = cpu_s / max(time.monotonic() - started, 1e-9)
    failed = failed_gates(summary, slo)
    print(format_summary(summary, slo, failed))
    report = {"summary": summary, "slo": asdict(slo), "failed_gates": failed,
              "duration_s": seconds, "users": args.users, "shape": args.shape, "host": args.host}
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"reports: {out}/ (report.html, locust_stats.csv, summary.json)")
    return 1 if failed else 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(cli)
    sys.exit(run(cli.parse_args()))


def register(sub: argparse._SubParsersAction) -> None:
    """``mlgate loadtest`` (entry point ``mlgate.commands``)."""
    sp = sub.add_parser("loadtest", help="Locust against a running gateway, with SLO gates (exit 1 on a breach)")
    add_arguments(sp)
    sp.set_defaults(func=lambda args, settings: run(args))
