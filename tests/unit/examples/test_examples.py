"""The examples' repository, data and model conversion, without Spark, Redis or MLflow."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import numpy as np
import pytest

from examples import project
from features_online import repository
from features_online.settings import StoreSettings


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return StoreSettings(state_dir=tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def repo(settings):
    return project.load(settings)


def test_one_repository_holds_both_examples_with_their_data_under_the_state_folder(repo, settings):
    assert repo.project == "examples"
    assert set(repo.models) == {"fraud-detector", "delivery-eta"}
    assert repo.models["delivery-eta"].entities == ("courier", "restaurant")
    assert [k.type for k in repo.entities["courier"].keys] == ["string"]
    assert repo.entities["customer"].is_int
    data = settings.data_dir
    assert repo.source("transactions")["parquet"] == str(data / "fraud" / "transactions.parquet")
    assert repo.source("deliveries")["parquet"] == str(data / "delivery" / "deliveries.parquet")


def test_the_fraud_view_keeps_the_demo_features_in_their_order(repo):
    view = repo.views["customer_activity"]
    assert view.feature_names == (
        "txn_count_1d", "txn_count_7d", "txn_count_30d", "amount_sum_1d", "amount_sum_7d", "amount_sum_30d",
        "amount_mean_30d", "amount_max_30d", "distinct_merchants_30d", "foreign_share_30d", "online_share_30d",
        "seconds_since_last_txn")
    assert view.feature("seconds_since_last_txn").default == 30 * 86_400.0
    assert view.ttl.days == 2


def test_both_models_inputs_resolve_against_the_repository(repo):
    from examples.delivery import train as delivery
    from examples.fraud import train as fraud

    inputs = {"fraud-detector": tuple(fraud.FEATURE_NAMES), "delivery-eta": tuple(delivery.FEATURE_NAMES)}
    result = repository.plan(repo, None, inputs)
    assert result.errors == []
    broken = repository.plan(repo, None, {"delivery-eta": ("courier_stats__no_such_feature",)})
    assert broken.errors and "courier_stats__no_such_feature" in broken.errors[0]


def test_delivery_data_has_uuid_like_string_keys_and_a_learnable_duration():
    from examples.delivery import data

    end = datetime(2026, 1, 15, 12, tzinfo=timezone.utc)
    one, two = data.generate(n_couriers=40, n_restaurants=30, days=5, deliveries_per_day=400, end=end), \
        data.generate(n_couriers=40, n_restaurants=30, days=5, deliveries_per_day=400, end=end)
    assert one.deliveries.equals(two.deliveries)  # seeded
    d = one.deliveries
    assert all(re.fullmatch(r"c-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", c) for c in d.courier_id.unique())
    assert one.couriers.courier_id.is_unique and d.restaurant_id.str.startswith("r-").all()
    assert (d.delivered_at > d.ordered_at).all() and (d.delivered_at < end).all()
    assert np.corrcoef(d.distance_km, d.eta_minutes)[0, 1] > 0.3
    assert (one.couriers.updated_at < d.ordered_at.min()).all()  # profiles precede every order


def test_the_regressor_becomes_onnx_with_one_flat_prediction_output():
    import onnxruntime as ort
    from sklearn.ensemble import GradientBoostingRegressor

    from examples.delivery.train import to_onnx

    rng = np.random.default_rng(0)
    x = rng.random((200, 3)).astype(np.float32)
    model = GradientBoostingRegressor(n_estimators=20).fit(x, x @ [3.0, 1.0, 0.5])
    session = ort.InferenceSession(to_onnx(model, 3).SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["prediction"]
    (got,) = session.run(None, {"features": x})
    assert got.shape == (200,)
    np.testing.assert_allclose(got, model.predict(x), atol=1e-4)
