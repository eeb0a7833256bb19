"""What a gateway serves (serving.catalog): the online views of the applied repository, the
settings' models and then the repository's, each model's entities and the score views keyed by
them. Repositories are written as YAML to tmp_path and loaded as ``mlgate apply`` would."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import yaml

from features_online import repository
from features_online.definitions import SCORE_FIELDS, EntityKey
from serving.catalog import Catalog, catalog_of, changes
from serving.settings import ModelSettings, Settings

MODELS = [
    {"name": "churn", "entities": ["account"], "serving": {"alias": "prod"}},
    {"name": "basket-risk", "entities": ["account", "merchant"],
     "serving": {"routing": {"canary": {"alias": "challenger", "weight": 5}}}},
    {"name": "unkeyed"},  # no entities: scores cannot be keyed before it loads
    {"name": "no-reference", "entities": ["account"], "serving": {"alias": None}},
    {"name": "typo", "entities": ["account"], "serving": {"allias": "prod"}},
    {"name": "renamed", "serving": {"name": "other"}},
]


def write(root, models=MODELS, **view_changes):
    """A repository folder: an int64-keyed and a string-keyed entity, two online views and an
    offline one, and ``models``."""
    root.mkdir(exist_ok=True)
    (root / "mlgate.yaml").write_text("project: shop\n")
    activity = {"name": "account_activity", "entity": "account", "source": "events", "ttl": "2h",
                "features": [{"name": "events_7d", "dtype": "long",
                              "aggregation": {"function": "count", "window": "7d"}}], **view_changes}
    (root / "features.yaml").write_text(yaml.safe_dump({
        "entities": [{"name": "account", "keys": [{"name": "account_id"}]},
                     {"name": "merchant", "keys": [{"name": "merchant_code", "type": "string", "max_length": 16}]}],
        "sources": [{"name": "events", "parquet": "events/*.parquet", "timestamp": "ts"}],
        "views": [activity,
                  {"name": "merchant_stats", "entity": "merchant", "source": "events", "ttl": "1d",
                   "on_missing": "fallback", "features": [{"name": "refund_rate", "column": "refund_rate"}]},
                  {"name": "account_history", "entity": "account", "source": "events", "ttl": "30d",
                   "online": False, "features": [{"name": "lifetime_value", "column": "value"}]}]}))
    (root / "models.yaml").write_text(yaml.safe_dump({"models": models}))
    return repository.load(root)


@pytest.fixture
def repo(tmp_path):
    return write(tmp_path / "repo")


def names(catalog: Catalog) -> list[str]:
    return [m.name for m in catalog.models]


def test_without_a_repository_the_settings_models_alone_are_served():
    settings = Settings(models=[{"name": "pinned", "version": "3"}])
    catalog = catalog_of(settings, None)
    assert catalog.models == settings.models
    assert (dict(catalog.views), dict(catalog.entities), catalog.digest) == ({}, {}, None)
    assert catalog.score_views(timedelta(hours=1)) == {}


def test_the_repositorys_online_views_and_valid_models_are_served(repo, caplog):
    with caplog.at_level(logging.ERROR, logger="serving.catalog"):
        catalog = catalog_of(Settings(), repo)
    assert set(catalog.views) == {"account_activity", "merchant_stats"}  # not the offline view
    assert catalog.newest == {"account_activity": repo.views["account_activity"],
                              "merchant_stats": repo.views["merchant_stats"]}
    assert catalog.newest["merchant_stats"].on_missing == "fallback"
    assert catalog.digest == repo.digest
    assert names(catalog) == ["churn", "basket-risk", "unkeyed"]
    assert catalog.model("churn").uri == "models:/churn@prod"
    assert catalog.model("basket-risk").routing.canary.weight == 5
    assert catalog.model("typo") is None
    assert catalog.entities["basket-risk"] == (repo.entities["account"], repo.entities["merchant"])


def test_a_model_with_invalid_serving_settings_is_left_out_and_logged(repo, caplog):
    with caplog.at_level(logging.ERROR, logger="serving.catalog"):
        catalog = catalog_of(Settings(), repo)
    assert not {"no-reference", "typo", "renamed"} & set(names(catalog))
    logged = {r.getMessage().split(":")[0]: r.getMessage() for r in caplog.records}
    assert set(logged) == {"model no-reference of repository shop", "model typo of repository shop",
                           "model renamed of repository shop"}
    assert "needs an alias or a version" in logged["model no-reference of repository shop"]
    assert "allias: Extra inputs are not permitted" in logged["model typo of repository shop"]
    assert all("invalid serving settings, not served" in message for message in logged.values())


def test_a_model_of_the_settings_wins_over_the_repositorys_entry_of_that_name(repo):
    catalog = catalog_of(Settings(models=[{"name": "churn", "version": "12"}, {"name": "solo"}]), repo)
    assert names(catalog) == ["churn", "solo", "basket-risk", "unkeyed"]
    assert catalog.model("churn").uri == "models:/churn/12"  # not @prod
    assert catalog.entities["churn"] == (repo.entities["account"],)  # still keyed by the repository's
    assert "solo" not in catalog.entities


def test_score_views_only_for_models_whose_entities_are_known(repo):
    catalog = catalog_of(Settings(models=[{"name": "solo"}]), repo)
    views = catalog.score_views(timedelta(hours=6))
    assert set(views) == {"score.churn", "score.basket-risk"}  # not unkeyed, nor solo
    risk = views["score.basket-risk"]
    assert risk.entity.keys == (EntityKey("account_id"), EntityKey("merchant_code", "string", 16))
    assert views["score.churn"].entity.is_int
    assert risk.features == SCORE_FIELDS and risk.ttl == timedelta(hours=6)


def test_older_schema_versions_of_a_view_are_served_after_the_newest(tmp_path, repo):
    changed = write(tmp_path / "changed", features=[  # a feature added: a new schema version
        {"name": "events_7d", "dtype": "long", "aggregation": {"function": "count", "window": "7d"}},
        {"name": "events_1d", "dtype": "long", "aggregation": {"function": "count", "window": "1d"}}])
    catalog = catalog_of(Settings(), repository.with_history(changed, repo))
    newest, older = catalog.views["account_activity"]
    assert newest.feature_names == ("events_7d", "events_1d") and older.feature_names == ("events_7d",)
    assert newest.version != older.version
    assert catalog.views["merchant_stats"] == (repo.views["merchant_stats"],)  # unchanged: no history


def test_changes_reload_only_models_whose_settings_changed_beyond_routing():
    def model(name, **kw):
        return ModelSettings(name=name, **kw)

    canary = {"canary": {"alias": "challenger", "weight": 5}}
    old = Catalog(models=(model("kept"), model("gone"), model("rerouted"), model("repinned")))
    new = Catalog(models=(model("kept"), model("rerouted", routing=canary), model("repinned", version="3"),
                          model("new")))
    found = changes(old, new)
    assert found.removed == ("repinned", "gone")
    assert [m.name for m in found.added] == ["repinned", "new"] and found.added[0].version == "3"
    assert [m.name for m in found.rerouted] == ["rerouted"] and found.rerouted[0].routing.canary.weight == 5
    assert changes(new, new) == type(found)()
