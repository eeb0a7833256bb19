"""The one "serve a fallback or fail" decision, every branch, against a fake score store keyed by
int64 ids or by encoded string fields, for a classifier's and a regressor's scores; and the
reasons the pipeline hands it (model not ready, store down, model error, deadline, policies)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest

from features_online import layout
from features_online.definitions import (
    CLASSIFIER_OUTPUTS,
    REGRESSOR_OUTPUTS,
    Entity,
    EntityKey,
    Feature,
    FeatureView,
    score_view,
)
from features_online.errors import StoreUnavailable
from features_online.reader import LiveVersion, ViewRead
from observability.metrics import GatewayMetrics
from serving.catalog import Catalog
from serving.errors import DependencyUnavailable, FallbackUnavailable, ModelNotReady
from serving.models import InProcessModel, ModelTable
from serving.pipeline import Pipeline, fallback_or_fail
from serving.runtime.base import FeatureSpec
from serving.settings import Settings
from tests.unit.conftest import ToyRuntime, make_spec

MAX_AGE_S = 3600.0
ACCOUNT = Entity("account", (EntityKey("account_id"),))
MERCHANT = Entity("merchant", (EntityKey("merchant_code", "string", max_length=32),))
UNSET = object()


class FakeScores:
    """A score store holding ``{key: (label, score, age_s)}`` (int ids, or encoded fields), for
    the score views added to it; or down. ``outputs``: what the batch job recorded (UNSET: a
    version written before outputs were recorded). Records each read."""

    def __init__(self, rows: dict, down: bool = False, outputs=CLASSIFIER_OUTPUTS) -> None:
        self.rows, self.down, self.outputs = rows, down, outputs
        self.views: dict[str, FeatureView] = {}
        self.reads: list[tuple[str, list]] = []

    def add_view(self, view: FeatureView) -> None:
        self.views.setdefault(view.name, view)

    async def read(self, ids_by_view, timeout_s):
        if self.down:
            raise StoreUnavailable("online store unreachable")
        (name, keys), = ids_by_view.items()
        keys = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
        self.reads.append((name, keys))
        view = self.views[name]
        found = [self.rows.get(k) for k in keys]
        values = [layout.encode(view, 0, {"label": np.array([r[0]]), "score": np.array([r[1]])})[0]
                  if r else None for r in found]
        records, present = layout.decode(view, values)
        return {name: ViewRead(view, records, present, np.array([r[2] if r else np.nan for r in found]))}

    def live(self, name):
        extra = {"model_version": "7"}
        if self.outputs is not UNSET:
            extra["outputs"] = self.outputs
        return LiveVersion(version=4, as_of_ms=0, watermark_ms=0, rows=len(self.rows), extra=extra)


def decide(scores, reasons, cause=None, keys=(10, 11, 12), entity=ACCOUNT):
    """``fallback_or_fail`` for model ``toy`` whose scores are keyed by ``entity``; ``keys``: every
    row's key (int ids, or strings encoded as the codec does)."""
    if entity.is_int:
        row_keys = np.array(keys, dtype=np.int64)
    else:
        row_keys = layout.encode_fields(entity, {entity.keys[0].name: list(keys)})
    if scores is not None:
        scores.add_view(score_view("toy", (entity,), timedelta(seconds=MAX_AGE_S)))
    metrics = GatewayMetrics()
    answers = asyncio.run(fallback_or_fail(scores, metrics, "toy", row_keys, reasons, cause, 1.0))
    return answers, metrics


def test_without_a_score_store_the_online_error_is_raised():
    with pytest.raises(DependencyUnavailable, match="store down"):
        decide(None, {0: "feature_store_unavailable"}, DependencyUnavailable("store down"))


def test_without_a_score_store_or_a_cause_the_row_gets_503_saying_fallbacks_are_off():
    with pytest.raises(FallbackUnavailable) as err:
        decide(None, {1: "features_missing", 2: "features_stale"})
    assert err.value.message == "features_missing, features_stale, and fallbacks are off"
    assert (err.value.status, err.value.code) == (503, "fallback_unavailable")


def test_unreachable_scores_are_503_naming_why_the_rows_needed_them():
    with pytest.raises(FallbackUnavailable) as err:
        decide(FakeScores({}, down=True), {0: "model_error"})
    assert err.value.message == "model_error, and batch scores are unreachable: online store unreachable"


@pytest.mark.parametrize("rows, problem", [({10: (0, 0.1, 5.0)}, "missing"),
                                           ({10: (0, 0.1, 5.0), 11: (1, 0.9, MAX_AGE_S + 1)}, "too old")])
def test_a_row_without_a_usable_score_is_503_naming_it(rows, problem):
    with pytest.raises(FallbackUnavailable) as err:
        decide(FakeScores(rows), {0: "model_not_ready", 1: "model_not_ready"})
    assert err.value.message == f"entities[1]: model_not_ready, and its batch score is {problem}"
    assert err.value.status == 503 and err.value.code == "fallback_unavailable"


def test_a_string_keyed_row_without_a_usable_score_is_503_naming_it():
    scores = FakeScores({b"m-1": (1, 0.5, 1.0), b"m-3": (0, 0.5, MAX_AGE_S + 1)})
    with pytest.raises(FallbackUnavailable) as err:
        decide(scores, {0: "model_error", 2: "model_error"}, keys=("m-1", "m-2", "m-3"), entity=MERCHANT)
    assert err.value.message == "entities[2]: model_error, and its batch score is too old"


def test_usable_scores_answer_their_rows_only_with_provenance_and_metrics():
    scores = FakeScores({10: (0, 0.125, 5.0), 11: (1, 0.5, 1.0), 12: (1, 0.875, 60.0)})
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


def test_string_keyed_scores_are_read_by_the_rows_encoded_fields():
    scores = FakeScores({"é/1".encode(): (1, 0.75, 2.0), b"b 2": (0, 0.25, 3.0)})
    answers, metrics = decide(scores, {1: "model_error", 2: "model_error"}, keys=("a", "é/1", "b 2"),
                              entity=MERCHANT)
    assert scores.reads == [("score.toy", ["é/1".encode(), b"b 2"])]
    assert {row: (a["label"], a["probability"], a["score_age_s"]) for row, a in answers.items()} == {
        1: (1, 0.75, 2.0), 2: (0, 0.25, 3.0)}
    assert metrics.registry.get_sample_value("mlgate_fallback_rows_total",
                                             {"model": "toy", "reason": "model_error"}) == 2


def test_a_regressors_scores_answer_its_prediction():
    scores = FakeScores({10: (0, 42.5, 5.0), 11: (0, -3.25, 6.0)}, outputs=REGRESSOR_OUTPUTS)
    answers, _ = decide(scores, {0: "model_not_ready", 1: "model_not_ready"}, keys=(10, 11))
    assert answers == {
        0: {"prediction": 42.5, "source": "batch_fallback", "model_version": "7",
            "fallback_reason": "model_not_ready", "score_age_s": 5.0},
        1: {"prediction": -3.25, "source": "batch_fallback", "model_version": "7",
            "fallback_reason": "model_not_ready", "score_age_s": 6.0}}


def test_scores_written_before_outputs_were_recorded_answer_as_a_classifiers():
    answers, _ = decide(FakeScores({10: (1, 0.625, 5.0)}, outputs=UNSET), {0: "model_error"})
    assert (answers[0]["label"], answers[0]["probability"]) == (1, 0.625)
    assert "prediction" not in answers[0]


# -- the reasons, as the pipeline finds them ------------------------------------------------------

ACTIVITY = FeatureView("account_activity", ACCOUNT, (Feature("events_7d", "long", 0),), timedelta(hours=1))
SPEC = make_spec(inputs=(FeatureSpec("amount", "double"),
                         FeatureSpec("account_activity__events_7d", "long")), input_example=())
BODY = b'{"entities": [{"account_id": 10}, {"account_id": 11}], "features": {"amount": 50.0}}'
FRESH = {10: (0, 0.25, 1.0), 11: (1, 0.75, 1.0)}


class FakeFeatures:
    """The feature store: the entities in ``present`` fresh with 3 events; or down."""

    def __init__(self, down: bool = False, present=(10, 11)) -> None:
        self.down, self.present = down, set(present)

    async def read(self, ids_by_view, timeout_s):
        if self.down:
            raise StoreUnavailable("online store did not answer in time", "timeout")
        (name, ids), = ids_by_view.items()
        values = layout.encode(ACTIVITY, 0, {"events_7d": np.full(len(ids), 3.0)})
        records, _ = layout.decode(ACTIVITY, values)
        present = np.array([int(i) in self.present for i in ids])
        return {name: ViewRead(ACTIVITY, records, present, np.where(present, 1.0, np.nan))}


class SlowRuntime(ToyRuntime):
    """Scores in a worker thread (not an ONNX model: never inline), slower than the deadline."""

    def __init__(self) -> None:
        super().__init__(replace(SPEC, flavor="pyfunc"))

    def predict(self, inputs):
        time.sleep(0.3)
        return super().predict(inputs)


def predict(runtime=None, features=None, scores=None, load=True, entities=True, view=ACTIVITY,
            body=BODY, **settings):
    """One entity-keyed request to model ``toy``; ``entities``: the repository declares them."""
    settings = Settings(models=[{"name": "toy"}], **settings)
    metrics = GatewayMetrics()
    catalog = Catalog(views={view.name: (view,)}, models=settings.models,
                      entities={"toy": (ACCOUNT,)} if entities else {})

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
            pipeline = Pipeline(settings, table, metrics, features or FakeFeatures(), scores, catalog=catalog)
            return await pipeline.predict("toy", body, "rid")
        finally:
            table.close()

    return asyncio.run(main())


def reasons(result):
    return [row.get("fallback_reason", row["source"]) for row in result["predictions"]]


def test_the_online_path_answers_when_it_can():
    result = predict(scores=FakeScores(FRESH))
    assert reasons(result) == ["online", "online"]
    assert [p["features"]["account_activity"]["status"] for p in result["predictions"]] == ["fresh", "fresh"]


@pytest.mark.parametrize("case, expected", [
    ({"load": False}, "model_not_ready"),
    ({"features": FakeFeatures(down=True)}, "feature_store_unavailable"),
    ({"runtime": ToyRuntime(SPEC, fail_with=RuntimeError("boom"))}, "model_error"),
    ({"runtime": SlowRuntime(), "body": BODY[:-1] + b', "timeout_ms": 150}'}, "deadline_exceeded"),
])
def test_each_reason_reaches_the_batch_scores(case, expected):
    scores = FakeScores(FRESH)
    result = predict(scores=scores, **case)
    assert reasons(result) == [expected, expected]
    assert [p["probability"] for p in result["predictions"]] == [0.25, 0.75]
    assert scores.reads == [("score.toy", [10, 11])]


def test_a_views_fallback_policy_sends_its_missing_rows_to_the_batch_scores():
    view = FeatureView(ACTIVITY.name, ACCOUNT, ACTIVITY.features, ACTIVITY.ttl, on_missing="fallback")
    scores = FakeScores(FRESH)
    result = predict(features=FakeFeatures(present=(10,)), scores=scores, view=view)
    assert reasons(result) == ["online", "features_missing"]
    assert scores.reads == [("score.toy", [11])]


def test_a_model_whose_entities_are_not_declared_falls_back_by_its_views_entities_once_loaded():
    """Batch scores of a model the repository does not list are keyed by its views' entities
    (batch.score.model_entities): the gateway looks them up by the same keys."""
    scores = FakeScores(FRESH)
    result = predict(features=FakeFeatures(down=True), scores=scores, entities=False)
    assert reasons(result) == ["feature_store_unavailable"] * 2
    assert scores.reads == [("score.toy", [10, 11])]


def test_a_model_not_loaded_whose_entities_are_not_declared_has_nothing_to_key_scores_by():
    with pytest.raises(ModelNotReady):
        predict(scores=FakeScores(FRESH), load=False, entities=False)


def test_with_fallbacks_off_the_online_error_is_the_answer():
    with pytest.raises(DependencyUnavailable, match="did not answer in time"):
        predict(features=FakeFeatures(down=True), scores=FakeScores(FRESH), fallback={"enabled": False})
