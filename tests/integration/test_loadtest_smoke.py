"""A short real Locust run (loadtests/loadtest.py) against a real demo gateway: the SLO gates pass
and every request, valid or invalid by design, gets the answer it should."""

from __future__ import annotations

import csv
import json

import pytest

from tests.integration.conftest import DEMO_COURIERS, DEMO_CUSTOMERS, gateway_env, run_cli

pytestmark = pytest.mark.integration




@pytest.fixture(scope="module")
def gateway(tmp_path_factory, redis_url):
    """`mlgate data`, then `mlgate demo --detach` on a private state folder, Redis and free ports;
    `mlgate stop` after."""
    state = tmp_path_factory.mktemp("loadtest-state")
    env = gateway_env(state, redis_url)
    port = int(env["MLGATE_HTTP__PORT"])
    small = ["--customers", str(DEMO_CUSTOMERS), "--couriers", str(DEMO_COURIERS)]
    done = run_cli(["data", *small], env)
    assert done.returncode == 0, done.stderr[-3000:]
    demo = run_cli(["demo", "--detach", *small], env)
    if demo.returncode != 0:
        log = state / "logs" / "gateway.log"
        pytest.fail(f"demo failed:\n{demo.stdout[-2000:]}\n{demo.stderr[-2000:]}\n"
                    f"{log.read_text()[-4000:] if log.exists() else ''}")
    yield f"http://127.0.0.1:{port}"
    run_cli(["stop"], env, timeout=120)


def loadtest(gateway: str, out, *flags: str):
    """`mlgate loadtest` as an operator runs it: the real command, its exit status and its output."""
    return run_cli(["loadtest", "--host", gateway, "--customers", str(DEMO_CUSTOMERS), "--out", str(out),
                    *flags], {}, timeout=180)


def test_a_short_smoke_load_passes_its_slo_gates(gateway, tmp_path):
    out = tmp_path / "report"
    done = loadtest(gateway, out, "--duration", "10s", "--users", "8")

    printed = done.stdout
    assert done.returncode == 0, (printed[-4000:], done.stderr[-4000:])
    report = json.loads((out / "summary.json").read_text())
    s = report["summary"]
    assert report["failed_gates"] == []
    assert s["requests"] > 100 and s["failures"] == 0, printed[-4000:]
    assert s["valid_requests"] > 100 and s["invalid_requests"] > 0 and s["invalid_unexpected"] == 0
    # batches carry 10-50 rows; every customer drawn is in the synced population, none falls back
    assert s["rows"] > s["valid_requests"] and s["default_rows"] == 0 and s["fallback_rows"] == 0
    assert s["p99_ms"] is not None and s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"]
    assert "SLO gates: passed" in printed and "unexpected failures 0 " in printed
    assert (out / "report.html").stat().st_size > 10_000 and (out / "locust_stats.csv").exists()


def test_a_spike_runs_its_shape_and_a_failed_gate_fails_the_command(gateway, tmp_path):
    out = tmp_path / "spike"
    done = loadtest(gateway, out, "--duration", "10s", "--users", "8", "--shape", "spike",
                    "--slo-p99-ms", "0.01")  # no gateway answers in 10 microseconds

    assert done.returncode == 1, (done.stdout[-4000:], done.stderr[-4000:])
    report = json.loads((out / "summary.json").read_text())
    assert [g.split()[0] for g in report["failed_gates"]] == ["p99"], report["failed_gates"]
    assert report["summary"]["failures"] == 0  # the gate failed, not the gateway
    with open(out / "locust_stats_history.csv", newline="") as f:
        users = {int(row["User Count"]) for row in csv.DictReader(f)}
    assert {2, 8} <= users, users  # a quarter of the users, all of them, a quarter again
