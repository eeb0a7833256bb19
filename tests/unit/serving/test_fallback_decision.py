"""The one "serve a fallback or fail" decision, every branch, against a fake score store; and the
reasons the pipeline hands it (model not ready, store down, model error, deadline, policies)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import numpy as np
import pytest

from features_online import layout
from features_online.definitions import CUSTOMER_ACTIVITY, score_view
from features_online.errors import StoreUnavailable
from features_online.reader import LiveVersion, ViewRead
from observability.metrics import GatewayMetrics
from serving.errors import DependencyUnavailable, FallbackUnavailable, ModelNotReady
from serving.models import InProcessModel, ModelTable
from serving.pipeline import Pipeline, fallback_or_fail
from serving.runtime.base import FeatureSpec
from serving.settings import Settings
from tests.unit.conftest import ToyRuntime, make_spec

MAX_AGE_S = 3600.0
SCORES = score_view("toy", timedelta(seconds=MAX_AGE_S))


class FakeScores:
    """A score store holding ``{entity: (label, probability, age_s)}``; or down."""

    def __init__(self, rows: dict[int, tuple[int, float, float]], down: bool = False) -> None:
        self.rows, self.down, self.reads = rows, down, []

    async def read(self, ids_by_view, timeout_s):
        if self.down:
            raise StoreUnavailable("online store unreachable")
        (name, ids), = ids_by_view.items()
        self.reads.append((name, ids.tolist()))
        found = [self.rows.get(int(i)) for i in ids]
        values = [layout.encode(SCORES, 0, {"label": np.array([r[0]]), "probability": np.array([r[1]])})[0]
                  if r else None for r in found]
        records, present = layout.decode(SCORES, values)
        age = np.array([r[2] if r else np.nan for r in found])
        return {name: ViewRead(SCORES, records, present, age)}

    def live(self, name):
        return LiveVersion(version=4, as_of_ms=0, watermark_ms=0, rows=len(self.rows),
                           extra={"model_version": "7"})


def decide(scores, reasons, cause=None, ids=(10, 11, 12)):
    metrics = GatewayMetrics()
    answers = asyncio.run(fallback_or_fail(scores, metrics, "toy", np.array(ids), reasons, cause, 1.0))
    return answers, metrics


def test_without_a_score_store_the_online_error_is_raised():
    with pytest.raises(DependencyUnavailable, match="store down"):
        decide(None, {0: "feature_store_unavailable"}, DependencyUnavailable("store down"))


def test_without_a_score_store_or_a_cause_the_row_gets_503_saying_fallbacks_are_off():
    with pytest.raises(FallbackUnavailable, match="features_missing, and fallbacks are off"):
        decide(None, {1: "features_missing"})


def test_unreachable_scores_are_503_naming_why_the_rows_needed_them():
    with pytest.raises(FallbackUnavailable, match="model_error, and batch scores are unreachable"):
        decide(FakeScores({}, down=True), {0: "model_error"})


@pytest.mark.parametrize("rows, problem", [({10: (0, 0.1, 5.0)}, "missing"),
                                           ({10: (0, 0.1, 5.0), 11: (1, 0.9, MAX_AGE_S + 1)}, "too old")])
def test_a_row_without_a_usable_score_is_503_naming_it(rows, problem):
    with pytest.raises(FallbackUnavailable) as err:
        decide(FakeScores(rows), {0: "model_not_ready", 1: "model_not_ready"})
    assert err.value.message == f"entities[1]: model_not_ready, and its batch score is {problem}"
    assert err.value.status == 503 and err.value.code == "fallback_unavailable"


def test_usable_scores_answer_their_rows_only_with_provenance_and_metrics():
    scores = FakeScores({10: (0, 0.125, 5.0), 12: (1, 0.875, 60.0)})
    answers, metrics = decide(scores, {0: "features_missing", 2: "deadline_exceeded"})
    assert scores.reads == [("score.toy", [10, 12])]  # only the rows that need a score
    assert answers == {
        0: {"label": 0, "probability": 0.125, "source": "batch_fallback", "model_version": "7",
            "fallback_reason": "features_missing", "score_age_s": 5.0},
        2: {"label": 1, "probability": 0.875, "source": "batch_fallback", "model_version": "7",
            "fallback_reason": "deadline_exceeded", "score_age_s": 60.0}}
    get = metrics.registry.get_sample_value
    assert get("mlgate_fallback_rows_total", {"model": "toy", "reason": "features_missing"}) == 1
    assert get("mlgate_fallback_rows_total", {"model": "toy", "reason": "deadline_exceeded"}) == 1


# -- the reasons, as the pipeline finds them ------------------------------------------------------

SPEC = make_spec(inputs=(FeatureSpec("amount", "double"),
                         FeatureSpec("customer_activity__txn_count_7d", "long")), input_example=())
BODY = b'{"entities": [{"customer_id": 10}, {"customer_id": 11}], "features": {"amount": 50.0}}'


class FakeFeatures:
    """The feature store: every entity fresh with 3 transactions; or down."""

    def __init__(self, down: bool = False) -> None:
        self.down = down

    async def read(self, ids_by_view, timeout_s):
        if self.down:
            raise StoreUnavailable("online store did not answer in time", "timeout")
        (name, ids), = ids_by_view.items()
        values = layout.encode(CUSTOMER_ACTIVITY, 0, {"txn_count_7d": np.full(len(ids), 3.0)})
        records, present = layout.decode(CUSTOMER_ACTIVITY, values)
        return {name: ViewRead(CUSTOMER_ACTIVITY, records, present, np.full(len(ids), 1.0))}


def predict(runtime=None, features=None, scores=None, load=True, **settings):
    settings = Settings(models=[{"name": "toy"}], **settings)
    metrics = GatewayMetrics()

    def factory(_):
        if not load:
            raise ModelNotReady("never loads")
        return InProcessModel(runtime or ToyRuntime(SPEC), metrics)

    async def main():
        table = ModelTable(settings, metrics, factory, retry_initial_s=10)
        table.start()
        if load:
            await asyncio.wait_for(table.wait_ready(), 5)
        try:
            pipeline = Pipeline(settings, table, metrics, features or FakeFeatures(), scores)
            return await pipeline.predict("toy", BODY, "rid")
        finally:
            table.close()

    return asyncio.run(main())


def reasons(result):
    return [row.get("fallback_reason", row["source"]) for row in result["predictions"]]


FRESH = {10: (0, 0.25, 1.0), 11: (1, 0.75, 1.0)}


def test_the_online_path_answers_when_it_can():
    assert reasons(predict(scores=FakeScores(FRESH))) == ["online", "online"]


@pytest.mark.parametrize("case, expected", [
    ({"load": False}, "model_not_ready"),
    ({"features": FakeFeatures(down=True)}, "feature_store_unavailable"),
    ({"runtime": ToyRuntime(SPEC, fail_with=RuntimeError("boom"))}, "model_error"),
])
def test_each_reason_reaches_the_batch_scores(case, expected):
    assert reasons(predict(scores=FakeScores(FRESH), **case)) == [expected, expected]


def test_with_fallbacks_off_the_online_error_is_the_answer():
    with pytest.raises(DependencyUnavailable, match="did not answer in time"):
        predict(features=FakeFeatures(down=True), scores=FakeScores(FRESH), fallback={"enabled": False})
