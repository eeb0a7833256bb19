"""The command line's contract for expected errors: one line on stderr, exit 2 for usage or
configuration, exit 1 for a failure, the traceback only with ``--debug``. No Spark, Ray or Redis:
each case is refused before any of them starts, or the command is monkeypatched."""

from __future__ import annotations

import logging

import pytest
import yaml

from serving import cli, launcher
from serving.errors import CommandFailed, ModelValidationError
from serving.runtime.loader import resolve_version
from serving.settings import ModelSettings


@pytest.fixture(autouse=True)
def _clean(clean_env):
    """Only the settings a test sets (tests/unit/conftest.py)."""


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_malformed_mlgate_variable_is_a_one_line_configuration_error(monkeypatch, capsys):
    monkeypatch.setenv("MLGATE_HTTP__PORT", "eighty")
    assert cli.main(["stop"]) == cli.EXIT_USAGE
    (line,) = error_lines(capsys)
    assert line.startswith("mlgate: error: invalid settings") and "http.port" in line
    assert "eighty" not in line  # values are not echoed (they may be secrets)


@pytest.mark.parametrize("alias", ["bad name", "latest", "v3"])
def test_a_bad_alias_is_refused_before_anything_runs(monkeypatch, capsys, alias):
    from examples.fraud import runner

    monkeypatch.setattr(runner, "ensure_data", lambda *a: pytest.fail("data generated for a bad alias"))
    assert cli.main(["train", "--alias", alias]) == cli.EXIT_USAGE
    (line,) = error_lines(capsys)
    assert line.startswith("mlgate: error: --alias") and repr(alias) in line


@pytest.mark.parametrize("ref", ["fraud-detector", "fraud-detector@bad name", "fraud-detector/three", "@x"])
def test_a_malformed_model_reference_is_a_usage_error(capsys, ref):
    assert cli.main(["batch", "score", "--model", ref]) == cli.EXIT_USAGE
    (line,) = error_lines(capsys)
    assert line.startswith("mlgate: error: --model") and "name@alias" in line


def repository(tmp_path, *models: str) -> str:
    """A feature repository folder (one view of accounts; ``models`` keyed by them), for
    ``--repo``: batch scoring reads no Redis then."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "mlgate.yaml").write_text("project: shop\n")
    (root / "features.yaml").write_text(yaml.safe_dump({
        "entities": [{"name": "account", "keys": [{"name": "account_id", "type": "string"}]}],
        "sources": [{"name": "events", "parquet": "events.parquet", "timestamp": "ts"}],
        "views": [{"name": "account_activity", "entity": "account", "source": "events", "ttl": "1d",
                   "features": [{"name": "events_7d", "dtype": "long",
                                 "aggregation": {"function": "count", "window": "7d"}}]}],
        "models": [{"name": name, "entities": ["account"]} for name in models]}))
    return str(root)


@pytest.fixture
def remote_registry(monkeypatch):
    """A registry URI the client does not touch until asked (no SQLite store is created, whose
    migrations would log to stderr); every test stubs what it would be asked."""
    monkeypatch.setenv("MLGATE_MLFLOW_TRACKING_URI", "http://127.0.0.1:1")


def refuse_every_model(monkeypatch):
    """The registry knows only ``churn``: any other reference is refused, naming it."""
    import batch.score
    import serving.runtime.loader as loader

    def refuse(client, ref):
        raise ModelValidationError(f"cannot resolve {ref.uri}: no registered model named {ref.name!r}\n"
                                   "(registered models: churn)")

    monkeypatch.setattr(loader, "resolve_version", refuse)
    monkeypatch.setattr(batch.score, "resolve_version", refuse)  # bound at its import


def test_an_unknown_model_is_a_failure_that_names_what_is_registered(monkeypatch, capsys, tmp_path, remote_registry):
    refuse_every_model(monkeypatch)
    argv = ["batch", "score", "--model", "nosuch@champion", "--repo", repository(tmp_path, "churn")]
    assert cli.main(argv) == cli.EXIT_FAILURE
    (line,) = error_lines(capsys)  # the library's line break folded
    assert line == ("mlgate: error: cannot resolve models:/nosuch@champion: no registered model named "
                    "'nosuch' (registered models: churn)")


def test_an_unreachable_registry_is_a_one_line_failure(monkeypatch, capsys, tmp_path, remote_registry):
    import requests

    from mlflow import MlflowClient

    def unreachable(self, name, alias):
        raise requests.ConnectionError("http://mlflow:5000 refused")

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", unreachable)
    argv = ["batch", "score", "--model", "churn@champion", "--repo", repository(tmp_path, "churn")]
    assert cli.main(argv) == cli.EXIT_FAILURE
    (line,) = error_lines(capsys)
    assert line == ("mlgate: error: cannot reach the MLflow registry to resolve "
                    "models:/churn@champion (ConnectionError)")


def test_batch_scoring_without_model_scores_the_repositorys_only_model(monkeypatch, capsys, tmp_path, remote_registry):
    refuse_every_model(monkeypatch)  # the model named is the one resolved, and refused here
    assert cli.main(["batch", "score", "--repo", repository(tmp_path, "churn-v2")]) == cli.EXIT_FAILURE
    (line,) = error_lines(capsys)
    assert line.startswith("mlgate: error: cannot resolve models:/churn-v2@champion:")


def test_batch_scoring_without_model_prefers_the_settings_first_model(monkeypatch, capsys, tmp_path, remote_registry):
    refuse_every_model(monkeypatch)
    monkeypatch.setenv("MLGATE_MODELS", '[{"name": "pinned", "version": "4"}]')
    assert cli.main(["batch", "score", "--repo", repository(tmp_path, "a", "b")]) == cli.EXIT_FAILURE
    (line,) = error_lines(capsys)
    assert line.startswith("mlgate: error: cannot resolve models:/pinned/4:")


@pytest.mark.parametrize("models, says", [(("a", "b"), "serves 2 models (a, b)"), ((), "serves 0 models (none)")])
def test_batch_scoring_without_model_needs_one_when_the_gateway_serves_several(capsys, tmp_path, models, says):
    assert cli.main(["batch", "score", "--repo", repository(tmp_path, *models)]) == cli.EXIT_USAGE
    (line,) = error_lines(capsys)
    assert line == f"mlgate: error: the gateway {says}: say which with --model"


def test_a_folder_that_is_no_repository_is_a_usage_error(capsys, tmp_path):
    assert cli.main(["batch", "score", "--model", "churn@champion", "--repo", str(tmp_path)]) == cli.EXIT_USAGE
    (line,) = error_lines(capsys)
    assert line.startswith(f"mlgate: error: --repo {tmp_path}: not a feature repository")


def test_a_command_failure_exits_1_without_a_traceback(monkeypatch, capsys, caplog):
    monkeypatch.setattr(launcher, "stop", lambda settings: (_ for _ in ()).throw(CommandFailed("it broke; do X")))
    assert cli.main(["stop"]) == cli.EXIT_FAILURE
    assert error_lines(capsys) == ["mlgate: error: it broke; do X"]
    assert "Traceback" not in caplog.text


def test_debug_shows_the_traceback(monkeypatch, capsys, caplog):
    monkeypatch.setattr(launcher, "stop", lambda settings: (_ for _ in ()).throw(CommandFailed("it broke")))
    with caplog.at_level(logging.ERROR, logger="mlgate"):
        assert cli.main(["--debug", "stop"]) == cli.EXIT_FAILURE
    assert "Traceback" in caplog.text and "CommandFailed: it broke" in caplog.text
    assert "mlgate: error: it broke" in capsys.readouterr().err


def test_demo_refuses_a_second_gateway_before_doing_any_work(monkeypatch, capsys):
    from examples.fraud import runner

    monkeypatch.setattr(launcher, "is_running", lambda settings: True)
    monkeypatch.setattr(runner, "ensure_data", lambda *a: pytest.fail("work done with a gateway running"))
    assert cli.main(["demo", "--detach"]) == cli.EXIT_FAILURE
    (line,) = error_lines(capsys)
    assert "a gateway is already running" in line and "mlgate stop" in line


class Registry:
    """An MLflow client that knows one model, ``fraud-detector`` with @champion -> v2. Its
    refusals carry the error codes MLflow's stores give them."""

    def get_model_version_by_alias(self, name, alias):
        raise refusal(f"Registered model alias {alias} not found.", "INVALID_PARAMETER_VALUE")

    def get_model_version(self, name, version):
        raise refusal(f"Model Version (name={name}, version={version}) not found")

    def get_registered_model(self, name):
        if name != "fraud-detector":
            raise refusal(f"Registered Model with name={name} not found")
        return type("RM", (), {"aliases": {"champion": "2"}})()

    def search_registered_models(self, max_results):
        return [type("RM", (), {"name": "fraud-detector"})()]


def refusal(message, code="RESOURCE_DOES_NOT_EXIST"):
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    return MlflowException(message, error_code=getattr(databricks_pb2, code))


@pytest.mark.parametrize(("ref", "says"), [
    (ModelSettings(name="nosuch"), "no registered model named 'nosuch' (registered models: fraud-detector)"),
    (ModelSettings(name="fraud-detector", alias="gone"), "fraud-detector has no alias @gone "
                                                          "(its aliases: @champion -> v2)"),
    (ModelSettings(name="fraud-detector", version="9", alias=None), "fraud-detector has no version 9"),
])
def test_resolve_version_says_what_the_registry_holds(ref, says):
    with pytest.raises(ModelValidationError, match="^cannot resolve ") as refused:
        resolve_version(Registry(), ref)
    assert says in str(refused.value)
