"""Canary analysis over a sliding window, on a controlled clock."""

import numpy as np
from scipy.stats import ks_2samp

from serving.canary import CanaryAnalysis
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


# Where each check starts to breach: the bounds the hand-written statistics gave before scipy.

def test_error_rate_breach_begins_where_chance_no_longer_explains_it():
    """1000 requests each, significance 0.001. A champion without failures allows its Wilson upper
    bound (0.95 %) plus the 2 % delta: 47 canary failures are still chance at that rate, 48 are not.
    With 10 champion failures the bound is 2.5 %, and the breach begins at 68."""
    for champion_failures, first_breach in ((0, 48), (10, 68)):
        for canary_failures in (first_breach - 1, first_breach):
            a, _ = analysis()
            fill(a, "champion", champion_failures, ok=False)
            fill(a, "champion", 1000 - champion_failures)
            fill(a, "canary", canary_failures, ok=False)
            fill(a, "canary", 1000 - canary_failures)
            breach = a.verdict()
            if canary_failures < first_breach:
                assert breach is None, (champion_failures, canary_failures)
            else:
                assert breach is not None and breach.check == "error_rate", champion_failures


def test_latency_breach_begins_where_chance_no_longer_explains_it():
    """1 % of requests may be over the p99 threshold (6 ms here): 21 of 1000 is still chance at
    significance 0.001, though the canary's p99 is 60 ms; 22 of 1000 is a breach."""
    for slow, breaches in ((21, False), (22, True)):
        a, _ = analysis()
        fill(a, "champion", 1000, ms=1.0)
        fill(a, "canary", 1000 - slow, ms=1.0)
        fill(a, "canary", slow, ms=60.0)
        assert a.stats("canary").p99_ms > 6.0
        breach = a.verdict()
        assert (breach is not None and breach.check == "latency") == breaches, slow


def shifted_scores(a, n, shift):
    fill(a, "champion", n, scores=list(np.linspace(0, 1, n)))
    fill(a, "canary", n, scores=list(np.linspace(shift, 1 + shift, n)))


def test_a_score_shift_must_be_both_large_and_significant():
    """The KS distance must exceed both max_score_shift (0.3) and its critical value at
    significance 0.001 (0.356 for 60 scores each, 0.195 for 200 each)."""
    for n, shift, breaches in ((60, 0.34, False),   # distance 0.350: over 0.3, but chance at 60
                               (60, 0.36, True),    # distance 0.367
                               (200, 0.25, False),  # significant at 200, but under 0.3
                               (200, 0.35, True)):
        a, _ = analysis()
        shifted_scores(a, n, shift)
        breach = a.verdict()
        assert (breach is not None and breach.check == "score_shift") == breaches, (n, shift)


def test_a_champion_that_fails_everything_allows_the_canary_to():
    a, _ = analysis()
    fill(a, "champion", 100, ok=False)
    fill(a, "canary", 100, ok=False)
    assert a.verdict() is None


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


def test_a_small_samples_ks_distance_is_not_a_score_shift():
    rng = np.random.default_rng(10)
    champion, canary = rng.uniform(size=25), rng.uniform(size=25)  # one distribution
    assert ks_2samp(champion, canary).statistic > 0.3  # the old rule's breach
    a, _ = analysis()
    fill(a, "champion", 25, scores=list(champion))
    fill(a, "canary", 25, scores=list(canary))
    assert a.verdict() is None
