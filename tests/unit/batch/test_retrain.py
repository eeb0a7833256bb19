"""``mlgate retrain`` without services: entry point resolution and its contract errors, the
drift decision, the lineage tags a version gets, and that the serving alias never moves."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from batch import retrain
from features_online.repository import compile_spec, validate
from serving import lineage
from serving.errors import CommandFailed, UsageError


def stub_train(settings, alias="champion", spark=None, **arguments):
    """An entry point for these tests: records its call, returns a version."""
    stub_train.calls.append((alias, spark, arguments))
    return SimpleNamespace(version="7")


stub_train.calls = []
NOT_CALLABLE = 3


def repo(training: dict | None, serving: dict | None = None, tmp_path=None):
    source = str(tmp_path / "events.parquet") if tmp_path else "/nowhere/events.parquet"
    return compile_spec(validate({
        "project": "p",
        "entities": [{"name": "user", "keys": [{"name": "user_id"}]}, {"name": "shop", "keys": [{"name": "shop_id"}]}],
        "sources": [{"name": "events", "parquet": source, "timestamp": "ts"}],
        "views": [{"name": "user_stats", "entity": "user", "source": "events", "ttl": "1d",
                   "features": [{"name": "n", "dtype": "long", "aggregation": {"function": "count", "window": "1d"}}]},
                  {"name": "shop_stats", "entity": "shop", "source": "events", "ttl": "1d",
                   "features": [{"name": "n", "dtype": "long", "aggregation": {"function": "count", "window": "1d"}}]}],
        "models": [{"name": "m", "entities": ["user"], "serving": serving or {},
                    **({"training": training} if training is not None else {})}]}))


ENTRY = f"{__name__}:stub_train"


@pytest.mark.parametrize("training, message", [
    (None, "declares no training entry point"),
    ({"seed": 1}, "declares no training entry point"),
    ({"entry_point": "no_colon"}, "expected module:function"),
    ({"entry_point": "mod:not an identifier"}, "expected module:function"),
    ({"entry_point": "no_such_module_xyz:train"}, "cannot import no_such_module_xyz"),
    ({"entry_point": f"{__name__}:missing"}, "has no function missing"),
    ({"entry_point": f"{__name__}:NOT_CALLABLE"}, "has no function NOT_CALLABLE"),
    ({"entry_point": ENTRY, "alias": "x"}, "set by mlgate retrain"),
])
def test_a_bad_training_declaration_is_a_usage_error(training, message):
    with pytest.raises(UsageError, match=message):
        retrain.plan(repo(training), "m", "challenger")


def test_unknown_model_and_the_serving_alias_are_refused():
    with pytest.raises(UsageError, match="no model 'other'"):
        retrain.plan(repo({"entry_point": ENTRY}), "other", "challenger")
    with pytest.raises(UsageError, match="never moves the serving alias"):
        retrain.plan(repo({"entry_point": ENTRY}), "m", "champion")
    with pytest.raises(UsageError, match="never moves the serving alias"):
        retrain.plan(repo({"entry_point": ENTRY}, serving={"alias": "prod"}), "m", "prod")


def test_plan_keeps_the_other_arguments_and_the_model_entities_views():
    job = retrain.plan(repo({"entry_point": ENTRY, "seed": 4}), "m", "challenger")
    assert job.function is stub_train and job.arguments == {"seed": 4}
    assert list(job.feature_views) == ["user_stats"] and len(job.feature_views["user_stats"]) == 8


STATUS = {"model": "m", "version": "3", "computed_at": 1700000000, "drifted": True, "threshold": 0.2,
          "features": {f"c{i}": {"psi": i / 10, "kind": "numeric", "n": 100} for i in range(8)}}


def test_decide():
    assert retrain.decide(None, False) == retrain.Decision(True, "manual", "asked to")
    none = retrain.decide(None, True)
    assert not none.train and "run `mlgate monitor" in none.reason
    calm = retrain.decide({**STATUS, "drifted": False}, True)
    assert not calm.train and "not drifted" in calm.reason and "c7 0.700" in calm.reason
    drifted = retrain.decide(STATUS, True)
    assert drifted.train and drifted.trigger == "drift"
    assert drifted.drift == {"version": "3", "computed_at": 1700000000, "threshold": 0.2,
                             "psi": {"c7": 0.7, "c6": 0.6, "c5": 0.5, "c4": 0.4, "c3": 0.3}}


def test_lineage_tags_round_trip():
    tags = lineage.tags("drift", feature_views={"v": "abc"}, data_snapshot={"sources": {}},
                        parent_version="2", drift={"psi": {"x": 0.31}})
    assert tags[lineage.DRIFT] == '{"psi":{"x":0.31}}'
    assert lineage.read(tags) == {"trigger": "drift", "drift": {"psi": {"x": 0.31}},
                                  "data_snapshot": {"sources": {}}, "feature_views": {"v": "abc"},
                                  "parent_version": "2"}
    assert lineage.DRIFT not in lineage.tags("manual", feature_views={}, data_snapshot={})
    assert lineage.read({lineage.DRIFT: "{broken"})["drift"] is None
    with pytest.raises(ValueError):
        lineage.tags("cron", feature_views={}, data_snapshot={})


class FakeRegistry:
    """The MlflowClient calls retrain makes, in memory."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = dict(aliases)
        self.tags: dict[tuple[str, str], str] = {}

    def get_model_version_by_alias(self, model, alias):
        from mlflow.exceptions import MlflowException

        if alias not in self.aliases:
            raise MlflowException("no alias")
        return SimpleNamespace(version=self.aliases[alias])

    def set_registered_model_alias(self, model, alias, version):
        self.aliases[alias] = version

    def set_model_version_tag(self, model, version, key, value):
        self.tags[(version, key)] = value


def test_run_tags_the_new_version_and_points_the_challenger(tmp_path):
    (tmp_path / "events.parquet").write_bytes(b"x")
    r = repo({"entry_point": ENTRY, "seed": 2}, tmp_path=tmp_path)
    job = retrain.plan(r, "m", "challenger")
    client = FakeRegistry({"champion": "5"})
    settings = SimpleNamespace(offline_dir=tmp_path / "offline")
    stub_train.calls.clear()
    done = retrain.run(settings, r, job, retrain.decide(STATUS, True), "challenger", "SPARK", client)
    assert stub_train.calls == [("challenger", "SPARK", {"seed": 2})]
    assert done.version == "7" and done.parent_version == "5"
    assert client.aliases == {"champion": "5", "challenger": "7"}
    read = lineage.read({k: v for (version, k), v in client.tags.items() if version == "7"})
    assert read["trigger"] == "drift" and read["parent_version"] == "5"
    assert read["drift"]["psi"]["c7"] == 0.7
    assert read["feature_views"] == job.feature_views
    snapshot = read["data_snapshot"]["sources"]["events"]
    assert snapshot["path"] == str(tmp_path / "events.parquet") and snapshot["modified"].endswith("Z")


def test_an_entry_point_that_moves_the_serving_alias_is_undone(tmp_path):
    client = FakeRegistry({"champion": "5"})

    def rogue(settings, alias, spark):
        client.aliases["champion"] = "8"
        return {"version": "8"}

    job = retrain.plan(repo({"entry_point": ENTRY}), "m", "challenger")
    job = retrain.TrainingJob(job.model, rogue, {}, job.serving_alias, job.feature_views, job.views)
    with pytest.raises(CommandFailed, match="moved @champion"):
        retrain.run(SimpleNamespace(offline_dir=tmp_path), None, job, retrain.decide(None, False), "challenger",
                    None, client)
    assert client.aliases == {"champion": "5"}


def test_an_entry_point_must_return_a_version(tmp_path):
    job = retrain.plan(repo({"entry_point": ENTRY}), "m", "challenger")
    job = retrain.TrainingJob(job.model, lambda settings, alias, spark: None, {}, "champion", {}, ())
    with pytest.raises(CommandFailed, match="not a result with the registered version"):
        retrain.run(SimpleNamespace(offline_dir=tmp_path), None, job, retrain.decide(None, False), "challenger",
                    None, FakeRegistry({}))


def test_ordinary_training_is_tagged_initial_then_manual(tmp_path):
    r, settings = repo({"entry_point": ENTRY}), SimpleNamespace(offline_dir=tmp_path)
    first = lineage.read(retrain.training_tags(settings, r, "m", client=FakeRegistry({})))
    assert first["trigger"] == "initial" and first["parent_version"] is None
    assert list(first["feature_views"]) == ["user_stats"]
    again = lineage.read(retrain.training_tags(settings, r, "m", client=FakeRegistry({"champion": "3"})))
    assert again["trigger"] == "manual" and again["parent_version"] == "3"
