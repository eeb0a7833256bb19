"""The load test's verdict: Locust stats CSV -> summary figures -> failed SLO gates (no Locust run)."""

from __future__ import annotations

import argparse
import csv

import pytest

from loadtests import loadtest
from loadtests.loadtest import Slo, failed_gates, parse_duration, read_stats, summarize

PERCENTILES = ["50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
COLUMNS = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time",
           "Average Response Time", "Min Response Time", "Max Response Time", "Average Content Size",
           "Requests/s", "Failures/s", *PERCENTILES]


def stats_row(kind: str, name: str, requests: int, failures: int = 0, p50: int = 2, p95: int = 6,
              p99: int = 12, rps: float = 100.0) -> dict:
    pct = [p50, p50, p50, p50, p95, p95, p99, p99, p99 + 5, p99 + 5, p99 + 10] if requests else ["N/A"] * 11
    return dict(zip(COLUMNS, [kind, name, requests, failures, p50, p50 * 1.2, 0, p99 + 10, 512,
                              rps, failures / 60, *pct]))


def write_stats(path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def locust_run(valid_failures: int = 0, invalid_wrong: int = 0, p99: int = 12, fallback: int = 0,
               default: int = 0) -> list[dict]:
    """Rows as the locustfile produces them: 10,000 valid requests, 200 invalid, 12,000 rows."""
    return [
        stats_row("POST", "invalid: malformed_json", 120, invalid_wrong, p50=1, p99=3),
        stats_row("POST", "invalid: unknown_feature", 80, 0, p50=1, p99=3),
        stats_row("POST", "predict 1", 9_000, valid_failures, p99=p99),
        stats_row("POST", "predict batch", 1_000, 0, p50=5, p95=9, p99=p99 + 4),
        stats_row("ALL", "valid traffic", 10_000, valid_failures, p99=p99, rps=166.7),
        stats_row("ROWS", "rows scored", 12_000, p50=0, p95=0, p99=0),
        stats_row("ROWS", "rows default", default, p50=0, p95=0, p99=0),
        stats_row("ROWS", "rows fallback", fallback, p50=0, p95=0, p99=0),
        stats_row("", "Aggregated", 10_200, valid_failures + invalid_wrong, rps=170.0),
    ]


def summary_of(tmp_path, rows: list[dict]) -> dict:
    path = tmp_path / "locust_stats.csv"
    write_stats(path, rows)
    return summarize(read_stats(path))


def test_summary_reads_valid_traffic_invalid_requests_and_row_counts(tmp_path):
    s = summary_of(tmp_path, locust_run(valid_failures=7, invalid_wrong=1, fallback=60, default=24))
    assert (s["requests"], s["failures"], s["rps"]) == (10_200, 8, 170.0)
    assert (s["valid_requests"], s["valid_failures"], s["valid_rps"]) == (10_000, 7, 166.7)
    assert (s["p50_ms"], s["p95_ms"], s["p99_ms"], s["max_ms"]) == (2.0, 6.0, 12.0, 22.0)
    assert (s["invalid_requests"], s["invalid_unexpected"]) == (200, 1)
    assert (s["rows"], s["default_rows"], s["fallback_rows"]) == (12_000, 24, 60)
    assert s["error_rate"] == pytest.approx(0.0007)
    assert s["invalid_mismatch_rate"] == pytest.approx(0.005)
    assert s["fallback_rate"] == pytest.approx(0.005) and s["default_rate"] == pytest.approx(0.002)


def test_invalid_requests_answered_as_expected_are_not_errors(tmp_path):
    s = summary_of(tmp_path, locust_run())
    assert s["failures"] == 0 and s["error_rate"] == 0.0 and s["invalid_requests"] == 200
    assert failed_gates(s, Slo()) == []


def test_a_run_without_traffic_has_na_percentiles_and_fails(tmp_path):
    s = summary_of(tmp_path, [stats_row("", "Aggregated", 0, 0)])
    assert s["valid_requests"] == 0 and s["p99_ms"] is None and s["fallback_rate"] == 0.0
    assert failed_gates(s, Slo()) == ["traffic: no valid request was made"]


def passing() -> dict:
    return {"valid_requests": 10_000, "valid_failures": 0, "p99_ms": 12.0, "error_rate": 0.0,
            "invalid_requests": 200, "invalid_unexpected": 0, "invalid_mismatch_rate": 0.0,
            "rows": 12_000, "fallback_rows": 0, "fallback_rate": 0.0}


@pytest.mark.parametrize("change, gate", [
    ({"p99_ms": 51.0}, "p99 latency 51.0 ms > 50 ms"),
    ({"p99_ms": None}, "p99 latency None ms > 50 ms"),
    ({"error_rate": 0.0101, "valid_failures": 101}, "error rate 1.010% > 1.000%"),
    ({"invalid_mismatch_rate": 0.02, "invalid_unexpected": 4}, "invalid requests answered wrongly: 4 of 200"),
    ({"fallback_rate": 0.06, "fallback_rows": 720}, "fallback rate 6.000% > 5.000% (720 of 12000 rows)"),
])
def test_each_gate_fails_on_its_own(change, gate):
    failed = failed_gates({**passing(), **change}, Slo())
    assert len(failed) == 1 and failed[0].startswith(gate)


def test_gates_are_inclusive_at_the_threshold_and_take_custom_slos():
    at_limit = {**passing(), "p99_ms": 50.0, "error_rate": 0.01, "fallback_rate": 0.05,
                "invalid_mismatch_rate": 0.01}
    assert failed_gates(at_limit, Slo()) == []
    strict = Slo(p99_ms=10, error_rate=0.0, fallback_rate=0.0)
    assert len(failed_gates(at_limit, strict)) == 4


def test_several_gates_fail_together(tmp_path):
    s = summary_of(tmp_path, locust_run(valid_failures=500, p99=80, fallback=1_200))
    failed = failed_gates(s, Slo())
    assert [f.split(" ")[0] for f in failed] == ["p99", "error", "fallback"]


@pytest.mark.parametrize("text, seconds", [("90", 90), ("30s", 30), ("2m", 120), ("1m30s", 90),
                                           ("1h", 3600)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30x", "s", "1m 30", "-5s"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_the_locust_command_carries_every_traffic_option(tmp_path):
    parser = argparse.ArgumentParser()
    loadtest.add_arguments(parser)
    args = parser.parse_args(["--users", "8", "--customers", "3000", "--shape", "spike",
                              "--canary-share", "0.1", "--host", "http://127.0.0.1:9"])
    cmd = loadtest.locust_command(args, 10, tmp_path)
    flags = dict(zip(cmd[::1], cmd[1:]))
    assert flags["--run-time"] == "10s" and flags["--users"] == "8" and flags["--spawn-rate"] == "8"
    assert flags["--customers"] == "3000" and flags["--shape"] == "spike"
    assert flags["--canary-share"] == "0.1" and flags["--host"] == "http://127.0.0.1:9"
    assert flags["--csv"] == str(tmp_path / "locust") and "--headless" in cmd
