"""Binding model inputs to feature views (codec), entity-keyed bodies (codec), and the
missing/stale policies that decide which rows get defaults, a fallback or a 422
(pipeline.stored_inputs): the settings' policies, a view's own overriding them, and older schema
versions of a view that lack a newer feature."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from features_online import layout
from features_online.definitions import Entity, EntityKey, Feature, FeatureView
from features_online.reader import ViewRead
from features_online.settings import FeatureSettings
from observability.metrics import GatewayMetrics
from serving import codec
from serving.errors import (
    InvalidRequest,
    ModelValidationError,
    StoredFeaturesMissing,
    StoredFeaturesStale,
)
from serving.pipeline import stored_inputs
from serving.runtime.base import FeatureSpec
from tests.unit.conftest import make_spec

ACCOUNT = Entity("account", (EntityKey("account_id"),))
TTL = timedelta(hours=2)
FEATURES = (Feature("events_7d", "long", -1), Feature("spend_30d", "double", 12.5))
VIEW = FeatureView("account_activity", ACCOUNT, FEATURES, TTL)
VIEWS = {VIEW.name: VIEW}
SPEC = make_spec(inputs=(FeatureSpec("amount", "double"),
                         FeatureSpec("account_activity__events_7d", "long"),
                         FeatureSpec("account_activity__spend_30d", "double")))
TTL_S = TTL.total_seconds()
MISSING = {"source": "default", "status": "missing"}


def read(present, age_s, events, view=VIEW):
    """What the store gave for ``view``: ``events`` per row (spend = events * 10) where present."""
    columns = {"events_7d": np.array(events, dtype=float), "spend_30d": np.array(events, dtype=float) * 10}
    values = layout.encode(view, 0, {f: columns[f] for f in view.feature_names})
    records, _ = layout.decode(view, values)
    return {VIEW.name: ViewRead(view, records, np.array(present), np.array(age_s, dtype=float))}


def policies(view: FeatureView = VIEW, **settings):
    """``stored_inputs`` for SPEC bound to ``view`` under these feature settings."""
    binding = codec.bind(SPEC, {view.name: view})
    metrics = GatewayMetrics()

    def run(reads):
        return stored_inputs(binding, reads, FeatureSettings(**settings), metrics)

    return run, metrics


def with_policy(**policy) -> FeatureView:
    return FeatureView(VIEW.name, ACCOUNT, FEATURES, TTL, **policy)


# -- bind ----------------------------------------------------------------------------------------

def test_bind_splits_inputs_into_views_and_request_time_values():
    binding = codec.bind(SPEC, VIEWS)
    assert dict(binding.by_view) == {"account_activity": ("events_7d", "spend_30d")}
    assert binding.views == (VIEW,)
    assert binding.request_spec.feature_names == ("amount",)
    assert binding.stored_dtypes == {"account_activity__events_7d": np.dtype(np.int64),
                                     "account_activity__spend_30d": np.dtype(np.float64)}
    assert binding.entities == (ACCOUNT,) and binding.key_columns == (EntityKey("account_id"),)


@pytest.mark.parametrize("name", ["account_activity__velocity", "merchant_stats__refunds"])
def test_bind_refuses_features_no_view_provides(name):
    with pytest.raises(ModelValidationError, match=name):
        codec.bind(make_spec(inputs=(FeatureSpec("amount", "double"), FeatureSpec(name, "double"))), VIEWS)


def test_bind_refuses_the_features_of_an_offline_view():
    offline = FeatureView(VIEW.name, ACCOUNT, FEATURES, TTL, online=False)
    with pytest.raises(ModelValidationError, match="account_activity__events_7d"):
        codec.bind(SPEC, {VIEW.name: offline})


# -- entity-keyed bodies -------------------------------------------------------------------------

def test_entity_rows_with_shared_or_per_row_request_features():
    binding = codec.bind(SPEC, VIEWS)
    rows, request = codec.entity_rows({"entities": [{"account_id": 5}, {"account_id": 9}],
                                       "features": {"amount": 3.0}}, binding, 10)
    assert rows.n == 2 and rows.keys(ACCOUNT).tolist() == [5, 9]
    assert request == [{"amount": 3.0}] * 2
    _, request = codec.entity_rows({"entities": [{"account_id": 5}], "features": [{"amount": 1.0}]},
                                   binding, 10)
    assert request == [{"amount": 1.0}]


@pytest.mark.parametrize("body, message", [
    ({"entities": []}, "non-empty"),
    ({"entities": [{"account_id": "5"}]}, r"entities\[0\].account_id: expected an integer id"),
    ({"entities": [{"user": 1}]}, r"entities\[0\] must be an object with exactly: account_id"),
    ({"entities": [{"account_id": 1}], "features": [{}, {}]}, "one object per entity"),
    ({"entities": [{"account_id": 1}], "features": [1]}, r"features\[0\] must be an object"),
    ({"entities": [{"account_id": 1}, {"account_id": 2}], "features": [{"amount": 1.0}, [1.0]]},
     r"features\[1\] must be an object"),
    ({"entities": [{"account_id": 1}], "features": [None]}, r"features\[0\] must be an object"),
    ({"entities": [{"account_id": 1}], "extra": 1}, "unknown top-level"),
])
def test_entity_body_errors_are_400(body, message):
    with pytest.raises(InvalidRequest, match=message) as err:
        codec.entity_rows(body, codec.bind(SPEC, VIEWS), 10)
    assert err.value.status == 400


def test_a_model_without_stored_features_takes_no_entities():
    with pytest.raises(InvalidRequest, match="send 'instances'"):
        codec.entity_rows({"entities": [{"account_id": 1}]}, codec.bind(make_spec(), VIEWS), 10)


# -- missing values ------------------------------------------------------------------------------

def test_by_default_never_seen_entities_get_the_views_defaults_saying_so():
    run, metrics = policies()  # the settings' own default: on_missing "default"
    columns, origin, fallback = run(read([True, False], [60.0, np.nan], [4, 0]))
    assert columns["account_activity__events_7d"].tolist() == [4, -1]
    assert columns["account_activity__spend_30d"].tolist() == [40.0, 12.5]
    assert origin[0]["account_activity"] == {"source": "online_store", "status": "fresh", "age_s": 60.0}
    assert origin[1]["account_activity"] == MISSING
    assert fallback == {}
    get = metrics.registry.get_sample_value
    assert get("mlgate_feature_rows_total", {"view": "account_activity", "status": "missing"}) == 1
    assert get("mlgate_feature_rows_total", {"view": "account_activity", "status": "fresh"}) == 1


def test_the_missing_policy_error_is_422_naming_the_row():
    run, _ = policies(on_missing="error")
    with pytest.raises(StoredFeaturesMissing) as err:
        run(read([True, False], [1.0, np.nan], [1, 0]))
    assert (err.value.status, err.value.code) == (422, "features_missing")
    assert err.value.message == "entities[1]: no account_activity features stored"


def test_the_missing_policy_fallback_marks_the_rows_for_batch_scores():
    run, _ = policies(on_missing="fallback")
    _, origin, fallback = run(read([False, True, False], [np.nan, 1.0, np.nan], [0, 2, 0]))
    assert fallback == {0: "features_missing", 2: "features_missing"}
    assert origin[1]["account_activity"]["status"] == "fresh"


@pytest.mark.parametrize("settings, view, fallback", [
    ("default", "fallback", {1: "features_missing"}),  # the view asks for batch scores
    ("error", "default", {}),  # the view serves defaults where the gateway would refuse
    ("fallback", None, {1: "features_missing"}),  # no policy of its own: the gateway's
])
def test_a_views_missing_policy_overrides_the_settings(settings, view, fallback):
    run, _ = policies(with_policy(on_missing=view), on_missing=settings)
    columns, origin, found = run(read([True, False], [1.0, np.nan], [3, 0]))
    assert found == fallback
    assert columns["account_activity__events_7d"].tolist() == [3, -1]
    assert origin[1]["account_activity"] == MISSING


def test_a_views_error_policy_overrides_settings_that_serve_defaults():
    run, _ = policies(with_policy(on_missing="error"), on_missing="default")
    with pytest.raises(StoredFeaturesMissing):
        run(read([False], [np.nan], [0]))


# -- stale values --------------------------------------------------------------------------------

STALE = ([True, True], [10.0, TTL_S + 1], [4, 5])


def test_stale_values_are_served_flagged_by_default():
    run, metrics = policies()
    columns, origin, fallback = run(read(*STALE))
    assert columns["account_activity__events_7d"].tolist() == [4, 5]
    assert origin[1]["account_activity"] == {"source": "online_store", "status": "stale", "age_s": TTL_S + 1}
    assert fallback == {}
    assert metrics.registry.get_sample_value("mlgate_feature_rows_total",
                                             {"view": "account_activity", "status": "stale"}) == 1


def test_the_stale_policy_default_replaces_only_the_stale_rows():
    run, _ = policies(on_stale="default")
    columns, origin, _ = run(read(*STALE))
    assert columns["account_activity__events_7d"].tolist() == [4, -1]
    assert columns["account_activity__spend_30d"].tolist() == [40.0, 12.5]
    assert origin[0]["account_activity"]["source"] == "online_store"
    assert origin[1]["account_activity"] == {"source": "default", "status": "stale", "age_s": TTL_S + 1}


def test_the_stale_policy_error_is_422_naming_the_row_and_the_ttl():
    run, _ = policies(on_stale="error")
    with pytest.raises(StoredFeaturesStale) as err:
        run(read(*STALE))
    assert (err.value.status, err.value.code) == (422, "features_stale")
    assert err.value.message == f"entities[1]: account_activity features older than {int(TTL_S)}s"


def test_the_stale_policy_fallback_marks_the_stale_rows():
    run, _ = policies(on_stale="fallback")
    _, _, fallback = run(read(*STALE))
    assert fallback == {1: "features_stale"}


@pytest.mark.parametrize("settings, view, fallback", [("serve", "fallback", {1: "features_stale"}),
                                                      ("fallback", "default", {})])
def test_a_views_stale_policy_overrides_the_settings(settings, view, fallback):
    run, _ = policies(with_policy(on_stale=view), on_stale=settings)
    _, _, found = run(read(*STALE))
    assert found == fallback


def test_missing_and_stale_rows_each_get_their_reason():
    run, _ = policies(on_missing="fallback", on_stale="fallback")
    _, _, fallback = run(read([True, False, True], [1.0, np.nan, TTL_S + 5], [1, 0, 2]))
    assert fallback == {1: "features_missing", 2: "features_stale"}


# -- schema versions and dtypes ------------------------------------------------------------------

def test_an_older_schema_version_serves_its_features_and_the_newer_ones_defaults():
    older = FeatureView(VIEW.name, ACCOUNT, FEATURES[:1], TTL)  # before spend_30d was added
    run, _ = policies()
    columns, origin, _ = run(read([True, False], [5.0, np.nan], [7, 0], view=older))
    assert columns["account_activity__events_7d"].tolist() == [7, -1]
    assert columns["account_activity__spend_30d"].tolist() == [12.5, 12.5]
    assert origin[0]["account_activity"]["source"] == "online_store"


def test_stored_values_reach_the_model_in_its_signatures_dtypes():
    spec = make_spec(inputs=(FeatureSpec("account_activity__events_7d", "integer"),
                             FeatureSpec("account_activity__spend_30d", "float")))
    binding = codec.bind(spec, VIEWS)
    assert binding.stored_dtypes == {"account_activity__events_7d": np.dtype(np.int32),
                                     "account_activity__spend_30d": np.dtype(np.float32)}
    columns, _, _ = stored_inputs(binding, read([True, False], [1.0, np.nan], [3, 0]), FeatureSettings(),
                                  GatewayMetrics())
    assert columns["account_activity__events_7d"].dtype == np.int32
    assert columns["account_activity__events_7d"].tolist() == [3, -1]
    assert columns["account_activity__spend_30d"].dtype == np.float32
    assert columns["account_activity__spend_30d"].tolist() == [30.0, 12.5]


def test_a_feature_the_model_does_not_read_is_not_served():
    spec = make_spec(inputs=(FeatureSpec("account_activity__spend_30d", "double"),))
    columns, _, _ = stored_inputs(codec.bind(spec, VIEWS), read([True], [1.0], [2]), FeatureSettings(),
                                  GatewayMetrics())
    assert list(columns) == ["account_activity__spend_30d"]
