"""``mlgate monitor`` without Spark: its arguments are checked before Spark starts, windows parse,
and the report and metric rows say what the job found (or that the window was empty)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from batch.monitor import MonitorResult, VersionReport, metric_rows, parse_window, render
from serving import cli


@pytest.fixture(autouse=True)
def _clean(clean_env):
    """Only the settings a test sets (tests/unit/conftest.py)."""


@pytest.mark.parametrize("args, flag", [(["--window", "2x"], "--window"), (["--window", "0d"], "--window"),
                                        (["--model", "../etc"], "--model"),
                                        (["--version", "three"], "--version")])
def test_bad_arguments_are_usage_errors_before_spark(monkeypatch, capsys, args, flag):
    from features_online import jobs

    monkeypatch.setattr(jobs, "session", lambda *a, **k: pytest.fail("Spark started"))
    assert cli.main(["monitor", "--model", "m", *args]) == cli.EXIT_USAGE  # a later --model wins
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[0].startswith(f"mlgate: error: {flag}")


def test_windows():
    assert parse_window("30m") == timedelta(minutes=30)
    assert parse_window("6h") == timedelta(hours=6)
    assert parse_window("1d") == timedelta(days=1)


def result(*versions: VersionReport) -> MonitorResult:
    end = datetime(2026, 3, 2, tzinfo=timezone.utc)
    return MonitorResult("m", end - timedelta(days=1), end, 1_700_000_000.0, 0.2, list(versions))


def test_report_and_rows_of_a_drifted_version_and_an_unbaselined_one():
    drifted = VersionReport("2", 100, 40, {"in_x": {"psi": 0.5, "kind": "numeric", "n": 100},
                                           "in_c": {"psi": 0.01, "js": 0.02, "kind": "categorical", "n": 100}},
                            {"auc": 0.7})
    bare = VersionReport("1", 5, missing_baseline="no baseline")
    r = result(drifted, bare)
    text = render(r)
    assert "DRIFTED" in text and "in_x" in text and "<- drift" in text and "not judged: no baseline" in text
    assert r.status()["version"] == "2" and r.status()["drifted"] is True
    rows = {(x["version"], x["column"], x["metric"]): x["value"] for x in metric_rows(r)}
    assert rows[("2", "in_x", "psi")] == 0.5 and rows[("2", "in_c", "js")] == 0.02
    assert rows[("2", "*", "drifted")] == 1.0 and rows[("2", "*", "auc")] == 0.7
    assert rows[("1", "*", "rows")] == 5.0 and ("1", "*", "drifted") not in rows


def test_an_empty_window_says_so_and_writes_no_status():
    r = result()
    assert r.status() is None and metric_rows(r) == []
    assert "no logged rows" in render(r)
