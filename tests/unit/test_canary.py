"""Canary analysis over a sliding window, on a controlled clock."""

import numpy as np

from serving.canary import CanaryAnalysis, ks_distance
from serving.settings import AnalysisSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def analysis(**kw):
    clock = Clock()
    return CanaryAnalysis(AnalysisSettings(window_s=60, min_requests=20, **kw), clock), clock


def fill(a, variant, n, ok=True, ms=1.0, scores=None):
    rng = np.random.default_rng(0)
    for i in range(n):
        score = scores[i] if scores is not None else float(rng.uniform())
        a.record(variant, ok, ms / 1000, score)


def test_no_verdict_on_thin_data_or_a_healthy_canary():
    a, _ = analysis()
    fill(a, "champion", 100)
    fill(a, "canary", 10, ok=False)
    assert a.verdict() is None  # 10 < min_requests
    a.reset()
    fill(a, "champion", 100)
    fill(a, "canary", 100)
    assert a.verdict() is None


def test_error_rate_breach():
    a, _ = analysis()
    fill(a, "champion", 100)
    fill(a, "canary", 90)
    fill(a, "canary", 10, ok=False)
    breach = a.verdict()
    assert breach is not None and breach.check == "error_rate" and "10.0%" in breach.detail


def test_latency_breach_needs_ratio_and_absolute_gap():
    a, _ = analysis()
    fill(a, "champion", 100, ms=1.0)
    fill(a, "canary", 100, ms=2.5)  # 2.5x but only 1.5 ms more: noise
    assert a.verdict() is None
    fill(a, "canary", 100, ms=40.0)
    assert a.verdict().check == "latency"


def test_score_shift_breach():
    a, _ = analysis()
    fill(a, "champion", 200, scores=list(np.linspace(0, 0.5, 200)))
    fill(a, "canary", 200, scores=list(np.linspace(0.5, 1, 200)))
    assert a.verdict().check == "score_shift"


def test_window_forgets_old_samples():
    a, clock = analysis()
    fill(a, "champion", 100)
    fill(a, "canary", 100, ok=False)
    clock.now += 61
    assert a.stats("canary").requests == 0 and a.verdict() is None


def test_ks_distance():
    x = np.linspace(0, 1, 500)
    assert ks_distance(x, x) == 0
    assert ks_distance(x, x + 2) == 1
