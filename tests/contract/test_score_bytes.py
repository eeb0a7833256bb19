"""The batch-score view, pinned byte for byte: the batch scorer writes it, the gateway's fallback
reads it (features_online/definitions.py, score_view)."""

from datetime import timedelta

import numpy as np

from features_online import layout
from features_online.definitions import SCORED_ENTITY, score_view

VIEW = score_view("churn-model", timedelta(days=2))


def test_golden_score_keys():
    assert VIEW.name == "score.churn-model" and VIEW.version == 1 and SCORED_ENTITY.key == "entity_id"
    assert layout.meta_key("mlg", VIEW) == "mlg:fv:score.churn-model:1:meta"
    assert layout.bucket_key("mlg", VIEW, 3, 17) == "mlg:fv:{score.churn-model:1:3:b017}"


def test_golden_score_value_bytes():
    [value] = layout.encode(VIEW, 1_700_000_000_123, {"label": np.array([1]), "probability": np.array([0.75])})
    # struct.pack("<Bqqd", 1, 1_700_000_000_123, 1, 0.75): format, as_of_ms, label, probability
    assert value.hex() == "01" "7b68e5cf8b010000" "0100000000000000" "000000000000e83f"


def test_a_score_without_a_probability_stores_nan_never_a_made_up_number():
    [value] = layout.encode(VIEW, 5, {"label": np.array([0])})
    records, present = layout.decode(VIEW, [value])
    assert present.tolist() == [True] and np.isnan(records["probability"][0])
