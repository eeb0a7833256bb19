"""`mlgate init`, `plan` and `apply` against a real redis-server and a real (SQLite) MLflow
registry: what a user sees at each step, the exit codes scripts rely on, and what lands in Redis.

Most commands run in this process through ``cli.main`` (the same parser and dispatcher as the
console script, minus ~2 s of imports per call); the two that check the real console script's
output (init, and the one-line error for a Redis nobody answers) run as subprocesses.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from serving import cli
from tests.integration.conftest import free_port, gateway_env, run_cli

pytestmark = pytest.mark.integration

VIEW = "account_activity"  # the scaffold's view


@pytest.fixture
def store(redis_server):
    """The session's redis-server; each test applies under its own key prefix."""
    return redis_server


@pytest.fixture
def env(store, tmp_path) -> dict[str, str]:
    return gateway_env(tmp_path / "state", store.url, MLGATE_REDIS__PREFIX=f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
def mlgate(env, monkeypatch, capsys):
    """``mlgate ARGS`` in this process with ``env``: (exit code, stdout, stderr lines)."""
    for name in [n for n in os.environ if n.startswith("MLGATE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str, list[str]]:
        capsys.readouterr()
        code = cli.main(list(args))
        out = capsys.readouterr()
        return code, out.out, [line for line in out.err.splitlines() if line.strip()]

    return run


def scaffolded(mlgate, folder: Path) -> Path:
    code, out, _ = mlgate("init", str(folder))
    assert code == 0, out
    return folder


def edit(path: Path, change) -> None:
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document))


def lines(out: str, kind: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"{kind} ")]


def test_init_plan_apply_then_no_changes_until_a_dtype_changes(mlgate, env, store, tmp_path):
    repo = tmp_path / "shop"
    done = run_cli(["init", str(repo)], env)  # the console script itself
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in repo.iterdir()) == ["features.yaml", "mlgate.yaml", "models.yaml"]
    for file in ("mlgate.yaml", "features.yaml", "models.yaml"):
        assert f"wrote {repo / file}" in done.stdout
    for step in (f"mlgate plan {repo}", f"mlgate apply {repo}", "mlgate features build", "mlgate features sync"):
        assert step in done.stdout
    assert yaml.safe_load((repo / "mlgate.yaml").read_text()) == {"project": "shop"}

    before = (repo / "features.yaml").read_text()
    code, out, err = mlgate("init", str(repo))  # never overwrites
    assert (code, out, err) == (1, "", [f"mlgate: error: {repo / 'mlgate.yaml'} exists: not overwriting it"])
    assert (repo / "features.yaml").read_text() == before

    code, out, err = mlgate("plan", str(repo))
    assert code == 0, err
    (added_view,) = [line for line in lines(out, "+") if line.startswith(f"+ view {VIEW} ")]
    assert "3 features" in added_view and "+ model shop-model" in out
    assert "2 to add, 0 to change, 0 to remove, 0 errors" in out
    prefix = env["MLGATE_REDIS__PREFIX"]
    assert not store.client().exists(f"{prefix}:repo")  # plan writes nothing

    code, out, err = mlgate("apply", str(repo))
    assert code == 0, err
    digest = store.client().hget(f"{prefix}:repo", "digest").decode()
    assert out.splitlines()[-1] == f"applied shop (digest {digest})"

    code, out, _ = mlgate("apply", str(repo))  # the same repository again: nothing to record
    assert code == 0 and "no changes" in out.splitlines() and not lines(out, "+")
    assert store.client().hget(f"{prefix}:repo", "digest").decode() == digest
    code, out, _ = mlgate("plan", str(repo))
    assert code == 0 and "no changes" in out.splitlines()

    edit(repo / "features.yaml", lambda d: d["views"][0]["features"][0].update(dtype="int"))  # long -> int
    code, out, _ = mlgate("plan", str(repo))
    assert code == 0
    (changed,) = lines(out, "~")
    assert changed.startswith(f"~ view {VIEW}: new schema version ")
    assert "0 to add, 1 to change, 0 to remove, 0 errors" in out


def test_bad_serving_settings_are_a_plan_error_and_apply_needs_force(mlgate, env, store, tmp_path):
    repo = scaffolded(mlgate, tmp_path / "shop")
    edit(repo / "models.yaml", lambda d: d["models"][0]["serving"].update(placement="nowhere"))

    code, out, _ = mlgate("plan", str(repo))
    assert code == 1
    (error,) = lines(out, "!")
    assert error.startswith("! model shop-model: serving.placement: ")
    assert "nowhere" not in out  # the value given is not echoed
    assert out.splitlines()[-1] == "2 to add, 0 to change, 0 to remove, 1 error"
    assert out.splitlines()[-2] == error  # errors come last

    code, out, err = mlgate("apply", str(repo))
    assert code == 1 and err == ["mlgate: error: not applied: the plan has 1 error; fix it, or pass --force"]
    prefix = env["MLGATE_REDIS__PREFIX"]
    assert not store.client().exists(f"{prefix}:repo")
    code, out, _ = mlgate("apply", "--force", str(repo))
    assert code == 0 and store.client().exists(f"{prefix}:repo")


def test_an_invalid_repository_is_a_usage_error(mlgate, tmp_path):
    repo = scaffolded(mlgate, tmp_path / "shop")
    edit(repo / "features.yaml", lambda d: d["views"][0].update(entity="nobody"))
    for command in ("plan", "apply"):
        code, out, err = mlgate(command, str(repo))
        assert code == 2 and out == ""
        (line,) = err
        assert line.startswith("mlgate: error: invalid feature repository: ") and "unknown entity 'nobody'" in line


def test_a_redis_nobody_answers_is_one_line_without_the_password(mlgate, env, tmp_path):
    repo = scaffolded(mlgate, tmp_path / "shop")
    port = free_port()
    done = run_cli(["plan", str(repo)], {**env, "MLGATE_REDIS__URL": f"redis://:s3cret@127.0.0.1:{port}/0"},
                   timeout=60)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"mlgate: error: cannot reach Redis at redis://127.0.0.1:{port} ")
    assert "s3cret" not in done.stderr + done.stdout


@pytest.fixture
def registry(mlgate, tmp_path, monkeypatch):
    """A SQLite MLflow registry under tmp_path, for the gateway's settings and for this process's
    fluent API (reset afterwards: other tests use their own). After ``mlgate``, which clears
    every ``MLGATE_`` variable."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLGATE_MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # an earlier test may have left another registry process-wide
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def register(name: str, inputs: list[str]) -> str:
    """A tiny ONNX regressor whose signature's inputs are ``inputs``, registered as @champion."""
    import mlflow
    import mlflow.onnx
    from mlflow.models import infer_signature
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LinearRegression

    x = pd.DataFrame(np.arange(3 * len(inputs), dtype=np.float32).reshape(3, -1), columns=inputs)
    model = LinearRegression().fit(x.to_numpy(), np.arange(3, dtype=np.float32))
    onnx_model = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, len(inputs)]))],
                                 target_opset=17)
    with mlflow.start_run():
        info = mlflow.onnx.log_model(onnx_model, name="model", signature=infer_signature(x),
                                     registered_model_name=name)
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    return version


def test_plan_checks_the_champions_inputs_against_the_views(mlgate, registry, tmp_path):
    repo = scaffolded(mlgate, tmp_path / "shop")
    register("shop-model", ["basket_size", f"{VIEW}__events_1d", f"{VIEW}__amount_sum_7d"])
    code, out, _ = mlgate("plan", str(repo))
    assert code == 0 and not lines(out, "!") and "note:" not in out and "warning:" not in out

    register("shop-model", [f"{VIEW}__events_1d", f"{VIEW}__no_such_feature"])  # the new champion
    code, out, _ = mlgate("plan", str(repo))
    assert code == 1
    (error,) = lines(out, "!")
    assert error.startswith("! model shop-model: inputs do not resolve: ")
    assert f"{VIEW}__no_such_feature" in error


def test_a_registry_nobody_answers_is_a_warning_not_a_failure(mlgate, monkeypatch, tmp_path):
    repo = scaffolded(mlgate, tmp_path / "shop")
    monkeypatch.setenv("MLGATE_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    code, out, err = mlgate("plan", str(repo))
    assert code == 0 and err == []
    (warning,) = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert "cannot reach the MLflow registry" in warning and "inputs not checked" in warning
    assert f"+ view {VIEW} " in out
