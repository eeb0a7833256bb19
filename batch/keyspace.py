"""Where a model's precomputed scores live in Redis: a feature view of its own.

Batch scores are written and read with the feature machinery (versioned data, verified atomic
flip, retirement; see features_online/layout.py): the "view" is named ``score.<model>``, keyed by
the id of the entity the scores are for (the entity of the model's stored features), and its
"features" are the model's outputs. The meta hash of each version carries the model version that
produced the scores (``x_model_version``). The gateway can look scores up before the model itself
has loaded: it needs only the model name and the entity id of the request.
"""

from __future__ import annotations

from datetime import timedelta

from features_online.definitions import Entity, Feature, FeatureView

SCORE_OUTPUTS = (Feature("label", "long", 0), Feature("probability", "double", float("nan")))
SCORED_ENTITY = Entity(name="scored_entity", key="entity_id")


def score_view(model: str, max_age: timedelta) -> FeatureView:
    """The fallback keyspace of ``model``. ``max_age`` (its TTL) is the oldest score served."""
    return FeatureView(name=f"score.{model}", version=1, entity=SCORED_ENTITY, features=SCORE_OUTPUTS,
                       ttl=max_age, description=f"precomputed scores of {model}")
