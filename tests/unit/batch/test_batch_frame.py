"""Which rows a batch job scores and how a model's outputs become the score view's fields."""

from __future__ import annotations

import numpy as np
import pytest

from batch.frame import FrameError, ViewInputs, frame_plan
from batch.outputs import CLASSIFIER, REGRESSOR, UnscorableOutputs, score_outputs
from features_online import repository
from features_online.definitions import scored_entity
from tests.unit.batch.toy import write_repository


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return repository.load(write_repository(tmp_path_factory.mktemp("repo")))


def inputs(repo, **features):
    return [ViewInputs(repo.views[name], tuple(names)) for name, names in features.items()]


def test_a_one_entity_model_scores_the_rows_of_its_first_view_and_joins_the_others(repo):
    entity = scored_entity("shop-classifier", repo.model_entities("shop-classifier"))
    plan = frame_plan(entity, inputs(repo, shop_risk=["disputes"], shop_stats=["orders_7d"]))
    assert plan.driver == "shop_risk" and plan.key_names == ("shop_code",)
    assert plan.columns == {"shop_risk__disputes": "shop_risk__disputes", "shop_stats__orders_7d": "shop_stats__orders_7d"}


def test_a_two_entity_model_needs_an_entity_table_saying_which_pairs_to_score(repo):
    entity = scored_entity("pair-regressor", repo.model_entities("pair-regressor"))
    views = inputs(repo, account_stats=["spend_30d"], shop_stats=["orders_7d"])
    assert entity.key_names == ("account_id", "shop_code")
    with pytest.raises(FrameError, match="--entities"):
        frame_plan(entity, views)
    plan = frame_plan(entity, views, entity_table=True)
    assert plan.driver is None and plan.key_names == ("account_id", "shop_code")


def test_a_view_keyed_by_a_column_the_model_entities_lack_is_refused(repo):
    entity = scored_entity("shop-classifier", repo.model_entities("shop-classifier"))
    with pytest.raises(FrameError, match="account_id"):
        frame_plan(entity, inputs(repo, shop_stats=["orders_7d"], account_stats=["spend_30d"]), entity_table=True)


@pytest.mark.parametrize("names, shapes, kind, score, label", [
    (("label", "probabilities"), {"probabilities": [None, 2]}, CLASSIFIER, "probabilities", "label"),
    (("label", "probability"), {"probability": [None]}, CLASSIFIER, "probability", "label"),
    (("variable",), {"variable": [None, 1]}, REGRESSOR, "variable", None),
    (("prediction", "leaf_ids"), {}, REGRESSOR, "prediction", None),
])
def test_classifiers_and_regressors_map_to_label_and_score(names, shapes, kind, score, label):
    outputs = score_outputs(names, shapes)
    assert (outputs.kind, outputs.score, outputs.label) == (kind, score, label)


@pytest.mark.parametrize("names, shapes", [
    (("label", "probabilities"), {"probabilities": [None, 3]}),  # three classes: no one score
    (("label",), {}),
    (("variable",), {"variable": [None, 4]}),
    (("a", "b"), {}),
])
def test_outputs_that_are_no_single_score_are_refused(names, shapes):
    with pytest.raises(UnscorableOutputs):
        score_outputs(names, shapes)


def test_scores_are_the_positive_class_probability_or_the_prediction():
    classifier = score_outputs(("label", "probabilities"))
    label, score = classifier.scores({"label": np.array([0, 1]), "probabilities": np.array(
        [[0.75, 0.25], [0.125, 0.875]], np.float32)})
    assert label.dtype == np.int64 and label.tolist() == [0, 1]
    assert score.dtype == np.float64 and score.tolist() == [0.25, 0.875]
    label, score = score_outputs(("variable",)).scores({"variable": np.array([[1.5], [-2.25]], np.float32)})
    assert label.tolist() == [0, 0] and label.dtype == np.int64 and score.tolist() == [1.5, -2.25]
