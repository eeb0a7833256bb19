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
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from serving.routing import CANARY, CHAMPION
from serving.settings import AnalysisSettings

MAX_SAMPLES = 50_000  # per variant: bounds memory at very high rates (the newest are kept)


@dataclass(frozen=True)
class Breach:
    check: str  # error_rate | latency | score_shift
    detail: str


@dataclass(frozen=True)
class VariantStats:
    requests: int
    error_rate: float
    p99_ms: float
    scores: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "error_rate": round(self.error_rate, 4),
                "p99_ms": round(self.p99_ms, 3)}


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
            return VariantStats(0, 0.0, 0.0, np.empty(0))
        _, ok, seconds, scores = zip(*samples)
        return VariantStats(
            requests=len(samples),
            error_rate=1 - sum(ok) / len(ok),
            p99_ms=float(np.percentile(seconds, 99)) * 1000,
            scores=np.array([s for s in scores if s is not None], dtype=np.float64))

    def verdict(self) -> Breach | None:
        """The first failed check, or None while the canary holds up (or data is too thin)."""
        s = self.settings
        champion, canary = self.stats(CHAMPION), self.stats(CANARY)
        if min(champion.requests, canary.requests) < s.min_requests:
            return None
        if canary.error_rate - champion.error_rate > s.max_error_rate_delta:
            return Breach("error_rate", f"canary error rate {canary.error_rate:.1%} against "
                                        f"{champion.error_rate:.1%} for the champion")
        if (canary.p99_ms > champion.p99_ms * s.max_p99_ratio
                and canary.p99_ms - champion.p99_ms > s.min_p99_delta_ms):
            return Breach("latency", f"canary p99 {canary.p99_ms:.1f} ms against "
                                     f"{champion.p99_ms:.1f} ms for the champion")
        if min(len(champion.scores), len(canary.scores)) >= s.min_requests:
            distance = ks_distance(champion.scores, canary.scores)
            if distance > s.max_score_shift:
                return Breach("score_shift", f"score distributions differ (KS distance "
                                             f"{distance:.2f} > {s.max_score_shift})")
        return None

    def summary(self) -> dict[str, Any]:
        return {name: self.stats(name).as_dict() for name in (CHAMPION, CANARY)}
