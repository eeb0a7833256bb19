"""Canary analysis over a sliding window, on a controlled clock."""

import numpy as np
import pytest

from serving.canary import CanaryAnalysis, improbable, ks_critical, ks_distance, wilson_upper
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
    fill(a, "canary", 75)
    fill(a, "canary", 25, ok=False)
    breach = a.verdict()
    assert breach is not None and breach.check == "error_rate" and "25.0%" in breach.detail


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


def binomial_tail(k, n, p):
    from scipy.stats import binom  # the reference; the gateway itself does without scipy

    return float(binom.sf(k - 1, n, p))


@pytest.mark.parametrize("n,p", [(30, 0.02), (30, 0.01), (385, 0.01), (2000, 0.05), (50_000, 0.01)])
def test_improbable_agrees_with_the_exact_binomial_tail(n, p):
    for significance in (0.05, 0.001):
        for k in range(0, min(n, int(n * p) + 40) + 1):
            assert improbable(k, n, p, significance) == (binomial_tail(k, n, p) < significance), (k, n, p)


def test_improbable_edges():
    assert not improbable(0, 10, 0.0, 0.01)
    assert improbable(1, 10, 0.0, 0.01)  # an event that cannot happen, observed
    assert improbable(11, 10, 0.5, 0.01)
    assert not improbable(10, 10, 1.0, 0.01)


def test_one_slow_request_in_a_small_window_is_noise():
    """The p99 of 30 requests is their slowest: one GC pause must not roll a healthy canary back."""
    a, _ = analysis()
    fill(a, "champion", 90, ms=1.0)
    fill(a, "canary", 29, ms=1.0)
    fill(a, "canary", 1, ms=60.0)
    assert a.stats("canary").p99_ms > 2 * a.stats("champion").p99_ms + 5  # the old rule's breach
    assert a.verdict() is None
    fill(a, "canary", 4, ms=60.0)  # 5 of 34 over the threshold: no longer chance
    assert a.verdict().check == "latency"


def test_one_failed_request_in_a_small_window_is_noise():
    a, _ = analysis()
    fill(a, "champion", 100)
    fill(a, "canary", 29)
    fill(a, "canary", 1, ok=False)  # 3.3 % against 0 %: over the 2 % delta, but one request
    assert a.verdict() is None
    fill(a, "canary", 19, ok=False)  # 20 of 49
    assert a.verdict().check == "error_rate"


def test_a_champion_without_errors_by_luck_does_not_make_the_canarys_rate_a_breach():
    """Both fail 5 % of requests; the champion's window happened to see none of them (P = 8 %
    at n=50). Against its point estimate (0 %), 7 of 50 canary failures would be a breach."""
    a, _ = analysis()
    fill(a, "champion", 50)
    fill(a, "canary", 43)
    fill(a, "canary", 7, ok=False)
    assert a.verdict() is None


def test_wilson_upper():
    assert wilson_upper(0, 0, 3.0) == 1.0
    assert wilson_upper(5, 10, 0.0) == 0.5
    assert 0.08 < wilson_upper(0, 100, 3.09) < 0.09  # the rule of three's neighbour
    assert wilson_upper(100, 100, 3.09) == 1.0


def test_a_small_samples_ks_distance_is_not_a_score_shift():
    rng = np.random.default_rng(10)
    champion, canary = rng.uniform(size=25), rng.uniform(size=25)  # one distribution
    assert ks_distance(champion, canary) > 0.3  # the old rule's breach
    assert ks_distance(champion, canary) < ks_critical(25, 25, 0.001)
    a, _ = analysis()
    fill(a, "champion", 25, scores=list(champion))
    fill(a, "canary", 25, scores=list(canary))
    assert a.verdict() is None
