"""The fallback answer: a model's precomputed batch score for each entity that needs one."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np

from batch.keyspace import score_view
from features_online.definitions import FeatureView
from features_online.reader import OnlineStore
from observability.metrics import GatewayMetrics
from serving.errors import DependencyUnavailable, FallbackUnavailable
from serving.settings import FallbackSettings

def views(models: list[str], settings: FallbackSettings) -> list[FeatureView]:
    """The batch-score keyspaces the gateway watches, one per configured model."""
    return [score_view(m, timedelta(seconds=settings.max_age_s)) for m in models]


async def batch_scores(store: OnlineStore, metrics: GatewayMetrics, model: str, ids: np.ndarray,
                       reasons: dict[int, str], timeout_s: float) -> dict[int, dict[str, Any]]:
    """Prediction rows for ``reasons``' rows from the batch scores, or FallbackUnavailable (503)
    naming the first row without a usable score and why it needed one."""
    rows = sorted(reasons)
    view_name = f"score.{model}"
    try:
        read = (await store.read({view_name: ids[rows]}, timeout_s))[view_name]
    except DependencyUnavailable as exc:
        raise FallbackUnavailable(f"{_why(reasons)}, and batch scores are unreachable: {exc.message}") from None
    usable = read.present & ~read.stale
    if not usable.all():
        bad = rows[int(np.argmin(usable))]
        problem = "too old" if read.present[int(np.argmin(usable))] else "missing"
        raise FallbackUnavailable(f"entities[{bad}]: {reasons[bad]}, and its batch score is {problem}")
    live = store.live(view_name)
    version = live.extra.get("model_version") if live else None
    answers = {}
    for i, row in enumerate(rows):
        answers[row] = {"label": int(read.records["label"][i]),
                        "probability": float(read.records["probability"][i]),
                        "source": "batch_fallback", "model_version": version,
                        "fallback_reason": reasons[row], "score_age_s": round(float(read.age_s[i]), 3)}
    for reason in set(reasons.values()):
        metrics.fallback_rows.labels(model, reason).inc(sum(1 for r in reasons.values() if r == reason))
    return answers


def _why(reasons: dict[int, str]) -> str:
    return ", ".join(sorted(set(reasons.values())))
