"""Canary analysis: is the canary worse than the champion over the last ``window_s`` seconds?

Pure bookkeeping, no I/O: the pipeline records one outcome per answered request, the rollout
controller asks for a verdict every few seconds. Three checks, each judged only when both
variants have at least ``min_requests`` in the window:

- error rate: a request counts as failed when the variant raised, timed out or its rows had to
  be answered from batch scores because of it (the caller may still have had an answer);
- p99 latency: the canary's p99 over ``max_p99_ratio`` times the champion's, and more than
  ``min_p99_delta_ms`` above it;
- score shift: the two-sample Kolmogorov-Smirnov distance between the variants' scores. Sticky
  hashing splits customers at random, so both variants see the same population and a healthy
  challenger scores it alike.

Each check must also be significant: chance alone must explain what the window shows less often
than ``significance``. Without that, small windows are judged on noise: the p99 of 30 requests is
their slowest one, so one request that met a GC pause or a busy core would roll a healthy canary
back, and so would one failed request in 30 (3.3 % > 2 %), or the KS distance of two samples of 30
drawn from one distribution (over 0.3 about one time in ten). The tests are one-sided binomial
tails (how many canary requests failed, or were slower than the latency threshold, against the
share the policy allows) and the asymptotic KS critical value. The error-rate check compares
the canary with the upper Wilson bound of the champion's rate, not its point estimate, so chance
in either window must conspire for a false rollback (at most about twice ``significance``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Callable

import numpy as np

from serving.routing import CANARY, CHAMPION
from serving.settings import AnalysisSettings

MAX_SAMPLES = 50_000  # per variant: bounds memory at very high rates (the newest are kept)
P99 = 0.99


@dataclass(frozen=True)
class Breach:
    check: str  # error_rate | latency | score_shift
    detail: str


@dataclass(frozen=True)
class VariantStats:
    requests: int
    errors: int
    p99_ms: float
    latencies_ms: np.ndarray
    scores: np.ndarray

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "error_rate": round(self.error_rate, 4),
                "p99_ms": round(self.p99_ms, 3)}


def improbable(k: int, n: int, p: float, significance: float) -> bool:
    """Whether P(X >= k) < ``significance`` for X ~ Binomial(n, p): would k or more of n events
    that each happen with probability p be that rare by chance? Sums the tail upward from k and
    stops as soon as it reaches ``significance`` (``significance`` < 1/2)."""
    if k <= n * p:
        return False  # at or below the mean: the tail is at least about 1/2
    if k > n or p <= 0:
        return True  # impossible events, observed
    term = math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                    + k * math.log(p) + (n - k) * math.log1p(-p))
    odds, tail = p / (1 - p), 0.0
    for j in range(k, n + 1):  # past the mean the terms shrink geometrically
        tail += term
        if tail >= significance:
            return False
        if term <= tail * 1e-12:
            break
        term *= (n - j) / (j + 1) * odds
    return True


def wilson_upper(k: int, n: int, z: float) -> float:
    """Upper end of the Wilson score interval for a rate of k in n: the highest rate that k in n
    does not rule out at ``z`` standard errors."""
    if n == 0:
        return 1.0
    p, z2 = k / n, z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z2 / n))


def ks_critical(n: int, m: int, significance: float) -> float:
    """The KS distance two samples of sizes n and m from one distribution exceed with probability
    ``significance`` (the asymptotic formula)."""
    return math.sqrt(-math.log(significance / 2) / 2) * math.sqrt((n + m) / (n * m))


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest gap between the empirical CDFs of two samples."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


class CanaryAnalysis:
    def __init__(self, settings: AnalysisSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._samples: dict[str, deque] = {CHAMPION: deque(maxlen=MAX_SAMPLES),
                                           CANARY: deque(maxlen=MAX_SAMPLES)}

    def record(self, variant: str, ok: bool, seconds: float, score: float | None) -> None:
        samples = self._samples.get(variant)
        if samples is not None:
            samples.append((self._clock(), ok, seconds, score))

    def reset(self) -> None:
        """Forget the window (after a weight change or a new canary version)."""
        for samples in self._samples.values():
            samples.clear()

    def stats(self, variant: str) -> VariantStats:
        samples = self._samples[variant]
        horizon = self._clock() - self.settings.window_s
        while samples and samples[0][0] < horizon:
            samples.popleft()
        if not samples:
            return VariantStats(0, 0, 0.0, np.empty(0), np.empty(0))
        _, ok, seconds, scores = zip(*samples)
        latencies_ms = np.array(seconds, dtype=np.float64) * 1000
        return VariantStats(
            requests=len(samples),
            errors=len(ok) - sum(ok),
            p99_ms=float(np.percentile(latencies_ms, P99 * 100)),
            latencies_ms=latencies_ms,
            scores=np.array([s for s in scores if s is not None], dtype=np.float64))

    def verdict(self) -> Breach | None:
        """The first failed check, or None while the canary holds up (or data is too thin)."""
        s = self.settings
        champion, canary = self.stats(CHAMPION), self.stats(CANARY)
        if min(champion.requests, canary.requests) < s.min_requests:
            return None
        # The champion's rate is itself a sample: allow the highest rate its window does not rule
        # out (a champion that failed 0 of 50 by luck must not make the canary's 5 % a breach).
        z = NormalDist().inv_cdf(1 - s.significance)
        champion_rate = wilson_upper(champion.errors, champion.requests, z)
        allowed = min(champion_rate + s.max_error_rate_delta, 1.0)
        if (canary.error_rate > allowed
                and improbable(canary.errors, canary.requests, allowed, s.significance)):
            return Breach("error_rate", f"canary error rate {canary.error_rate:.1%} against "
                                        f"{champion.error_rate:.1%} for the champion")
        threshold_ms = max(champion.p99_ms * s.max_p99_ratio, champion.p99_ms + s.min_p99_delta_ms)
        slow = int(np.count_nonzero(canary.latencies_ms > threshold_ms))
        if canary.p99_ms > threshold_ms and improbable(slow, canary.requests, 1 - P99, s.significance):
            return Breach("latency", f"canary p99 {canary.p99_ms:.1f} ms against "
                                     f"{champion.p99_ms:.1f} ms for the champion ({slow} of "
                                     f"{canary.requests} canary requests over {threshold_ms:.1f} ms)")
        n, m = len(champion.scores), len(canary.scores)
        if min(n, m) >= s.min_requests:
            distance = ks_distance(champion.scores, canary.scores)
            limit = max(s.max_score_shift, ks_critical(n, m, s.significance))
            if distance > limit:
                return Breach("score_shift", f"score distributions differ (KS distance "
                                             f"{distance:.2f} > {limit:.2f})")
        return None

    def summary(self) -> dict[str, Any]:
        return {name: self.stats(name).as_dict() for name in (CHAMPION, CANARY)}
