"""What the load test sends (loadtests/traffic.py): population, features, invalid bodies, shapes."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from examples.fraud.train import REQUEST_NAMES
from loadtests import loadtest, traffic


def test_request_features_are_the_models_request_time_inputs():
    assert list(traffic.REQUEST_FEATURES) == REQUEST_NAMES
    assert loadtest.INVALID_PREFIX == traffic.INVALID_PREFIX


def test_population_stays_in_range_and_is_skewed():
    population = traffic.Population(3_000, s=1.0, seed=7)
    rng = random.Random(1)
    draws = [population.draw(rng) for _ in range(20_000)]
    assert min(draws) >= 1 and max(draws) <= 3_000
    top_30 = sum(n for _, n in Counter(draws).most_common(30))  # the most popular 1%
    assert 0.35 < top_30 / len(draws) < 0.55
    assert population.top_share(0.01) == pytest.approx(top_30 / len(draws), abs=0.03)
    hot = [c for c, _ in Counter(draws).most_common(5)]
    assert hot != sorted(hot) or max(hot) > 100  # ranks are shuffled over the ids


def test_population_is_seeded_and_a_single_customer_works():
    a, b = traffic.Population(1_000, seed=3), traffic.Population(1_000, seed=3)
    assert [a.draw(random.Random(5)) for _ in range(3)] == [b.draw(random.Random(5)) for _ in range(3)]
    assert traffic.Population(1).draw(random.Random(0)) == 1
    with pytest.raises(ValueError):
        traffic.Population(0)


def test_transactions_are_plausible():
    rng = random.Random(2)
    rows = [traffic.transaction(rng) for _ in range(2_000)]
    assert all(list(r) == list(traffic.REQUEST_FEATURES) for r in rows)
    assert all(r["amount"] > 0 and 0 <= r["merchant_risk"] <= 1 and 1 <= r["card_age_days"] <= 3650
               for r in rows)
    assert {r["hour_of_day"] for r in rows} == set(range(24))
    assert {r["day_of_week"] for r in rows} == set(range(7))
    assert {r["merchant_category"] for r in rows} == set(range(12))
    assert all(r["distance_from_home_km"] == 0.0 for r in rows if r["is_online"])
    for name in ("hour_of_day", "day_of_week", "merchant_category", "is_online", "is_foreign", "card_age_days"):
        assert all(type(r[name]) is int for r in rows)  # longs go out as JSON integers
    assert 15 < sorted(r["amount"] for r in rows)[1_000] < 45  # median near e**3.3 ~ 27


def test_bodies_for_one_and_many_entities():
    population, rng = traffic.Population(100), random.Random(3)
    one = traffic.predict_body(rng, population, 1)
    assert len(one["entities"]) == 1 and isinstance(one["features"], dict)
    many = traffic.predict_body(rng, population, 20)
    assert len(many["entities"]) == len(many["features"]) == 20


def test_every_invalid_kind_spoils_the_body_as_announced():
    population, rng = traffic.Population(100), random.Random(4)
    seen = {}
    for _ in range(200):
        status, code, raw = traffic.invalid_request(rng, traffic.predict_body(rng, population, 1))
        seen[code] = (status, raw)
    assert set(seen) == {code for _, code, _ in traffic.INVALID_KINDS}
    assert seen["missing_features"][0] == 422 and seen["malformed_json"][0] == 400
    with pytest.raises(json.JSONDecodeError):
        json.loads(seen["malformed_json"][1])
    assert "amount" not in json.loads(seen["missing_features"][1])["features"]
    assert json.loads(seen["invalid_request"][1])["entities"][0]["customer_id"] == "seven"


@pytest.mark.parametrize("prediction, kind", [
    ({"label": 0, "features": {"customer_activity": {"source": "online_store", "status": "fresh"}}}, "store"),
    ({"label": 0, "features": {"customer_activity": {"source": "online_store", "status": "stale"}}}, "store"),
    ({"label": 0, "features": {"customer_activity": {"source": "default", "status": "missing"}}}, "default"),
    ({"label": 0, "features": {"customer_activity": {"status": "missing"}}}, "default"),
    ({"label": 0, "source": "batch_fallback"}, "fallback"),
    ({"label": 0, "features": {"customer_activity": {"source": "batch_fallback"}}}, "fallback"),
    ({"label": 0}, "store"),
])
def test_rows_are_classified_by_where_their_features_came_from(prediction, kind):
    assert traffic.classify(prediction) == kind


def test_load_shapes():
    assert [traffic.shape_users("steady", t, 60, 32) for t in (0, 30, 59)] == [32, 32, 32]
    assert [traffic.shape_users("ramp", t, 100, 32) for t in (0, 40, 80, 99)] == [1, 16, 32, 32]
    assert [traffic.shape_users("spike", t, 100, 32) for t in (0, 39, 40, 59, 60, 99)] == [8, 8, 32, 32, 8, 8]
    with pytest.raises(ValueError):
        traffic.shape_users("sawtooth", 0, 60, 32)
