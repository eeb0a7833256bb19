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
drawn from one distribution (over 0.3 about one time in ten). The tests, from ``scipy.stats``,
are one-sided binomial tests (how many canary requests failed, or were slower than the latency
threshold, against the share the policy allows) and the asymptotic KS critical value (Kolmogorov's
limiting distribution). The error-rate check compares the canary with the upper Wilson bound of
the champion's rate, not its point estimate, so chance in either window must conspire for a false
rollback (at most about twice ``significance``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy.stats import binomtest, ks_2samp, kstwobign

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
    """Whether k or more of n events that each happen with probability p would be rarer than
    ``significance`` by chance (the one-sided binomial test)."""
    return binomtest(k, n, p, alternative="greater").pvalue < significance


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
        champion_rate = binomtest(champion.errors, champion.requests, alternative="less") \
            .proportion_ci(1 - s.significance, method="wilson").high  # the Wilson upper bound
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
            # Only the distance is used: "asymp" spares the exact p-value of samples up to 10,000.
            distance = ks_2samp(champion.scores, canary.scores, method="asymp").statistic
            # The distance two samples of sizes n and m from one distribution exceed with
            # probability `significance`, from Kolmogorov's limiting distribution.
            critical = kstwobign.isf(s.significance) * math.sqrt((n + m) / (n * m))
            limit = max(s.max_score_shift, critical)
            if distance > limit:
                return Breach("score_shift", f"score distributions differ (KS distance "
                                             f"{distance:.2f} > {limit:.2f})")
        return None

    def summary(self) -> dict[str, Any]:
        return {name: self.stats(name).as_dict() for name in (CHAMPION, CANARY)}
