"""The parts of `mlgate init|plan|apply` that need no Redis or registry: the project name a folder
gives, the `serving` settings check, and how a plan is printed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from features_online import repository
from features_online.repository import Plan
from serving import repo_cli


@pytest.mark.parametrize(("folder", "project"), [
    ("feature_repo", "feature_repo"), ("my shop!", "my-shop"), ("_.hidden-repo", "hidden-repo"),
    ("Ünïcode", "n-code"), ("---", "features"), ("x" * 80, "x" * 63),
])
def test_the_default_project_is_the_folder_name_made_valid(tmp_path, folder, project):
    assert repo_cli.project_name(tmp_path / folder) == project
    assert repository.validate({"project": project}).project == project


def repo_with(tmp_path: Path, serving: dict) -> repository.Repository:
    repository.scaffold(tmp_path, "shop")
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(
        {"models": [{"name": "shop-model", "entities": ["account"], "serving": serving}]}))
    return repository.load(tmp_path)


def test_valid_serving_settings_become_the_gateways_model_settings(tmp_path):
    models, problems = repo_cli.serving_settings(repo_with(tmp_path, {"version": "3", "placement": "deployment",
                                                                      "routing": {"canary": None}}))
    assert problems == []
    assert models["shop-model"].uri == "models:/shop-model/3"


@pytest.mark.parametrize(("serving", "where"), [
    ({"placement": "s3cret-place"}, "serving.placement"),
    ({"routing": {"canary": {"alias": "challenger", "weight": 250}}}, "serving.routing.canary.weight"),
    ({"alias_typo": "s3cret-alias"}, "serving.alias_typo"),
    ({"alias": None}, "serving: "),  # the model-level rule: an alias or a version
    ({"name": "s3cret-name"}, "serving.name"),
])
def test_bad_serving_settings_name_model_and_field_without_the_value(tmp_path, serving, where):
    models, problems = repo_cli.serving_settings(repo_with(tmp_path, serving))
    assert models == {}
    (problem,) = problems
    assert problem.startswith(f"model shop-model: {where}")
    assert "s3cret" not in problem and "250" not in problem


def test_a_plan_prints_grouped_with_errors_last_and_counts(capsys):
    result = Plan()
    for kind, text in (("!", "model a: broken"), ("-", "view old"), ("+", "view new"), ("~", "model b: changed"),
                       ("+", "model c")):
        result.add(kind, text)
    repo_cli.show(result)
    assert capsys.readouterr().out.splitlines() == [
        "+ view new", "+ model c", "~ model b: changed", "- view old", "! model a: broken",
        "2 to add, 1 to change, 1 to remove, 1 error"]
    repo_cli.show(Plan())
    assert capsys.readouterr().out == "no changes\n"


def test_a_change_plan_does_not_itemise_is_still_a_change(tmp_path, capsys):
    from serving.settings import Settings

    repository.scaffold(tmp_path / "repo", "shop")
    applied = repository.load(tmp_path / "repo")
    settings = Settings(state_dir=tmp_path / "state", mlflow_tracking_uri=None)  # no registry there yet
    assert repo_cli.assemble(settings, applied, applied).lines == []
    features = tmp_path / "repo" / "features.yaml"
    features.write_text(features.read_text().replace("data/events.parquet", "elsewhere/*.parquet"))
    moved = repository.load(tmp_path / "repo")
    assert repo_cli.assemble(settings, moved, applied).lines == [
        ("~", "definitions changed (sources, entities, descriptions or the repository folder)")]
    assert "no MLflow registry" in capsys.readouterr().out
