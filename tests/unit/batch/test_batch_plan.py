"""How batch scoring fills the request-time inputs it cannot know."""

from batch.score import typical_request
from serving.runtime.base import FeatureSpec


def test_typical_request_rounds_integer_medians_and_keeps_real_ones():
    stats = {"amount": {"quantiles": {"0.5": 41.25}},
             "card_age_days": {"quantiles": {"0.5": 412.5}},
             "hour_of_day": {"quantiles": {"0.5": 13.6}}}
    inputs = [FeatureSpec("amount", "double"), FeatureSpec("card_age_days", "long"),
              FeatureSpec("hour_of_day", "integer")]
    assert typical_request(inputs, stats) == {"amount": 41.25, "card_age_days": 412.0, "hour_of_day": 14.0}
