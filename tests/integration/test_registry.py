"""load_model against a real MLflow registry: SQLite (the session's) and PostgreSQL. No mocks."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

from examples.fraud.train import FEATURE_NAMES, FEATURES, train_and_register
from serving import codec
from serving.errors import ModelValidationError
from serving.registry import APPROVED_BY, Registry
from serving.runtime.artifacts import ARTIFACT_SHA256
from serving.runtime.loader import load_model
from serving.settings import ModelSettings, OnnxSettings

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def load(uri: str, cache_dir, name: str, require_digest: bool = False, **ref):
    return load_model(ModelSettings(name=name, **ref), tracking_uri=uri, cache_dir=cache_dir,
                      onnx=OnnxSettings(), require_digest=require_digest)


@contextlib.contextmanager
def tracking(uri: str):
    """mlflow's global tracking and registry URIs set to ``uri`` for the block, then restored.
    Both: MLflow resolves ``models:/`` through the registry URI, which an earlier test module may
    have pointed at its own store (with its own ``fraud-detector``)."""
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def predict_rows(runtime, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """What the gateway does: JSON-like dicts through the codec into the runtime."""
    return runtime.predict(codec.decode(rows.to_dict(orient="records"), runtime.spec))


def assert_matches_pyfunc(runtime, uri: str, model_uri: str, rows: pd.DataFrame) -> None:
    with tracking(uri):
        expected = mlflow.pyfunc.load_model(model_uri).predict(rows)
    got = predict_rows(runtime, rows)
    assert 0 < got["label"].sum() < len(rows)  # both classes: the comparison is not trivial
    np.testing.assert_array_equal(got["label"], expected["label"].to_numpy())
    np.testing.assert_allclose(got["probability"], expected["probability"].to_numpy(), atol=1e-6)


@pytest.fixture(scope="module")
def rows(train_table) -> pd.DataFrame:
    """200 demo transactions (features only), frauds included."""
    table = train_table
    picked = pd.concat([table[table["label"] == 1].head(20), table.sample(180, random_state=3)])
    return picked[FEATURE_NAMES].reset_index(drop=True)


@pytest.fixture(scope="module")
def experiment(settings) -> str:
    """An experiment keeping its artifacts in the session's state folder (not ./mlruns)."""
    with tracking(settings.tracking_uri) as client:
        return client.create_experiment(unique("registry-tests"), artifact_location=settings.artifact_root)


def log_registered(experiment: str, name: str, log, alias: str | None = "live") -> None:
    """Log a model in a run with ``log(registered_model_name=name)``, then point ``alias`` at it."""
    with mlflow.start_run(experiment_id=experiment):  # fixed requirements: no slow inference
        info = log(registered_model_name=name, pip_requirements=["mlflow"])
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, str(info.registered_model_version))


def tiny_frame(n: int = 40) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    return x, (x["a"] + x["b"] > 0).astype(np.int64).to_numpy()


class Scorer(mlflow.pyfunc.PythonModel):
    """A pyfunc model that fails ('raise') or returns NaN ('nan') when scoring."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def predict(self, context, model_input, params=None):
        if self.mode == "raise":
            raise RuntimeError("broken model")
        return pd.DataFrame({"score": np.full(len(model_input), np.nan)})


# --- 1. the champion, end to end -------------------------------------------------------------

def test_champion_loads_as_onnx_with_its_signature_and_scores_like_pyfunc(settings, champion, rows,
                                                                           tmp_path):
    runtime = load(settings.tracking_uri, tmp_path, "fraud-detector", alias="champion")
    spec = runtime.spec
    assert (spec.flavor, spec.version, spec.alias) == ("onnx", champion.version, "champion")
    assert spec.uri == f"models:/fraud-detector/{champion.version}"
    assert spec.run_id == champion.run_id and spec.tags["trained_for"] == "champion"
    assert spec.feature_names == tuple(FEATURE_NAMES)
    assert [f.dtype for f in spec.inputs] == [dtype for _, dtype in FEATURES]
    assert spec.outputs == ("label", "probability")
    assert len(spec.input_example) == 5 and spec.load_seconds > 0
    assert_matches_pyfunc(runtime, settings.tracking_uri, "models:/fraud-detector@champion", rows)


# --- 2. aliases and pins follow the registry -------------------------------------------------

def test_aliases_and_pinned_versions_resolve_to_the_registered_versions(settings, champion, train_table,
                                                                        rows, tmp_path):
    uri, name = settings.tracking_uri, unique("fraud-aliases")
    with tracking(uri) as client:  # v1: a copy of the champion; v2: a freshly trained challenger
        copy = client.copy_model_version(f"models:/fraud-detector/{champion.version}", name)
        assert str(copy.version) == "1"
        challenger = train_and_register(train_table, uri, settings.artifact_root,
                                        alias="challenger", name=name)
    assert challenger.version == "2"

    by_alias = load(uri, tmp_path, name, alias="challenger")
    pinned = load(uri, tmp_path, name, version="1", alias="challenger")  # a pin wins over the alias
    ident = lambda rt: (rt.spec.version, rt.spec.alias, rt.spec.run_id)  # noqa: E731
    assert ident(by_alias) == ("2", "challenger", challenger.run_id)
    assert ident(pinned) == ("1", None, champion.run_id)
    # Genuinely different models behind the two versions.
    assert not np.allclose(predict_rows(by_alias, rows)["probability"],
                           predict_rows(pinned, rows)["probability"])

    with tracking(uri) as client:  # move the alias: the next load follows it
        client.set_registered_model_alias(name, "challenger", "1")
    assert load(uri, tmp_path, name, alias="challenger").spec.version == "1"


# --- 3. artifacts are downloaded once per version --------------------------------------------

def test_a_version_is_downloaded_once_and_a_half_download_is_redone(settings, champion, monkeypatch,
                                                                    tmp_path):
    calls = []
    real = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts",
                        lambda **kw: calls.append(kw["artifact_uri"]) or real(**kw))
    uri, ref = settings.tracking_uri, {"name": "fraud-detector", "alias": "champion"}
    load(uri, tmp_path, **ref)
    assert len(calls) == 1 and calls[0].startswith("file://")  # the version's own artifacts
    [target] = tmp_path.glob(f"*/fraud-detector/{champion.version}")  # <registry>/<name>/<version>
    assert (target / ".complete").is_file() and (target / "MLmodel").is_file()
    inode = target.stat().st_ino
    assert load(uri, tmp_path, **ref).spec.version == champion.version
    assert len(calls) == 1 and target.stat().st_ino == inode

    (target / ".complete").unlink()  # as if a previous download had died half-way
    load(uri, tmp_path, **ref)
    assert len(calls) == 2 and (target / ".complete").is_file()
    assert not list(target.parent.glob(f"{champion.version}.partial*"))


def test_concurrent_downloads_of_one_version_leave_one_whole_copy(settings, champion, tmp_path):
    """Replicas and variants of one node load the same version at once: none may delete the
    files another is downloading (a copy without its MLmodel was once marked complete)."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.runtime.loader import download

    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: download(settings.tracking_uri, "fraud-detector", champion.version,
                                                 tmp_path), range(4)))
    assert len(set(paths)) == 1 and (paths[0] / "MLmodel").is_file() and (paths[0] / ".complete").is_file()
    assert not list(paths[0].parent.glob(f"{champion.version}.partial*"))


# --- 4. models that must never serve ---------------------------------------------------------

def _unknown_name(experiment, name, x, y):
    """Nothing registered under this name."""


def _sklearn(signature=True, example=("a", "b")):
    """A LogisticRegression with or without a signature; its input example may rename columns."""
    def register(experiment, name, x, y):
        kw = {"signature": infer_signature(x, y)} if signature else {}
        if example:  # mlflow.sklearn only warns when the example does not fit the signature
            kw["input_example"] = x.head(3).set_axis(list(example), axis=1)
        model = LogisticRegression().fit(x, y)
        log_registered(experiment, name, lambda **reg: mlflow.sklearn.log_model(
            model, name="model", **kw, **reg))
        return model
    return register


def _scorer(mode):
    def register(experiment, name, x, y):
        signature = infer_signature(x, pd.DataFrame({"score": np.zeros(len(x))}))
        log_registered(experiment, name, lambda **kw: mlflow.pyfunc.log_model(
            name="model", python_model=Scorer(mode), signature=signature, input_example=x.head(3), **kw))
    return register


@pytest.mark.parametrize(("register", "alias", "message"), [
    (_unknown_name, "live", "cannot resolve"),
    (_sklearn(), "no-such-alias", "cannot resolve"),
    (_sklearn(signature=False, example=None), "live", "no signature"),
    (_sklearn(example=None), "live", "without an input example"),
    (_sklearn(example=("a", "c")), "live", "does not match the signature"),
    (_scorer("raise"), "live", "scoring the input example failed"),
    (_scorer("nan"), "live", "not finite"),
], ids=["unknown-name", "unknown-alias", "no-signature", "no-input-example", "example-off-signature",
        "predict-raises", "predict-nan"])
def test_bad_models_are_refused(settings, experiment, register, alias, message, tmp_path):
    name = unique("refused")
    with tracking(settings.tracking_uri):
        register(experiment, name, *tiny_frame())
    with pytest.raises(ModelValidationError, match=message):  # pyfunc allowed: its checks are the point
        load(settings.tracking_uri, tmp_path, name, alias=alias, allow_pyfunc=True)


# --- 5. no ONNX flavour: the pyfunc fallback, only where allowed -----------------------------

def test_a_model_without_the_onnx_flavour_is_refused_unless_allowed(settings, experiment, monkeypatch,
                                                                    tmp_path):
    name, (x, y) = unique("unsafe"), tiny_frame()
    with tracking(settings.tracking_uri):
        _sklearn()(experiment, name, x, y)
    monkeypatch.setattr(mlflow.pyfunc, "load_model", lambda *a, **kw: pytest.fail("pickle loaded"))
    with pytest.raises(ModelValidationError, match="no onnx flavour.*set allow_pyfunc: true on model"):
        load(settings.tracking_uri, tmp_path, name, alias="live")


def test_an_sklearn_model_is_served_through_pyfunc_when_allowed(settings, experiment, tmp_path):
    name, (x, y) = unique("sklearn"), tiny_frame()
    with tracking(settings.tracking_uri):
        model = _sklearn()(experiment, name, x, y)
    runtime = load(settings.tracking_uri, tmp_path, name, alias="live", allow_pyfunc=True)
    spec = runtime.spec
    assert (spec.flavor, spec.version, spec.outputs, spec.feature_names) == (
        "pyfunc", "1", ("prediction",), ("a", "b"))
    got = predict_rows(runtime, x)
    np.testing.assert_array_equal(got["prediction"], model.predict(x))
    assert set(got["prediction"]) == {0, 1}


# --- 6. the artifacts served are the ones approved ------------------------------------------

def artifact_store(client: MlflowClient, name: str, version: str) -> Path:
    """Where the registry keeps the version's artifacts (a local file store here)."""
    return Path(url2pathname(urlparse(client.get_model_version_download_uri(name, version)).path))


def test_approval_records_the_artifact_digest_and_a_tampered_artifact_is_refused(settings, experiment,
                                                                                tmp_path):
    name, (x, y) = unique("approved"), tiny_frame()
    ref = {"alias": "live", "allow_pyfunc": True}
    with tracking(settings.tracking_uri) as client:
        _sklearn()(experiment, name, x, y)
        digest = Registry(settings.tracking_uri).approve(name, "1", "risk-team")
        tags = client.get_model_version(name, "1").tags
    assert (tags[APPROVED_BY], tags[ARTIFACT_SHA256]) == ("risk-team", digest) and len(digest) == 64
    assert load(settings.tracking_uri, tmp_path / "before", name, require_digest=True, **ref).spec.version == "1"

    [weights] = artifact_store(client, name, "1").glob("model.*")  # someone swaps the model file
    weights.write_bytes(weights.read_bytes() + b"\n")
    with pytest.raises(ModelValidationError, match=rf"approved {digest[:12]}\.\.\., downloaded [0-9a-f]{{12}}"):
        load(settings.tracking_uri, tmp_path / "after", name, **ref)
    assert not list((tmp_path / "after").glob(f"*/{name}/1"))  # the tampered copy is not kept


def test_an_untagged_version_loads_unless_digests_are_required(settings, experiment, tmp_path):
    name, (x, y) = unique("untagged"), tiny_frame()
    with tracking(settings.tracking_uri):
        _sklearn()(experiment, name, x, y)
    ref = {"alias": "live", "allow_pyfunc": True}
    assert load(settings.tracking_uri, tmp_path, name, **ref).spec.version == "1"
    with pytest.raises(ModelValidationError, match="no mlgate.artifact_sha256 tag and registry.require_digest"):
        load(settings.tracking_uri, tmp_path, name, require_digest=True, **ref)


# --- 7. PostgreSQL as the registry -----------------------------------------------------------

@pytest.fixture
def postgres_uri(postgres_server):
    """A freshly created database on the session's private PostgreSQL; dropped afterwards."""
    import psycopg2
    from mlflow.store.model_registry.sqlalchemy_store import (
        SqlAlchemyStore as RegistryStore,
    )
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    admin = psycopg2.connect(host="127.0.0.1", port=postgres_server.port, user=postgres_server.user,
                             dbname="postgres", connect_timeout=5)
    admin.autocommit = True
    db = f"mlgate_test_{uuid.uuid4().hex[:8]}"
    uri, before = postgres_server.uri(db), mlflow.get_tracking_uri()
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{db}"')
        yield uri
    finally:
        mlflow.set_tracking_uri(before)  # train_and_register and load_model set it globally
        for store in (TrackingStore, RegistryStore):  # mlflow pools one engine per URI and store
            if (engine := store._engine_map.pop(uri, None)) is not None:
                engine.dispose()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


@pytest.mark.postgres
def test_postgres_registry_serves_the_fraud_model(postgres_uri, train_table, rows, tmp_path):
    trained = train_and_register(train_table, postgres_uri,
                                 (tmp_path / "artifacts").as_uri(), alias="champion")
    assert trained.version == "1"  # a fresh registry: nothing from the SQLite one leaks in
    runtime = load(postgres_uri, tmp_path / "cache", "fraud-detector", alias="champion")
    spec = runtime.spec
    assert (spec.flavor, spec.version, spec.run_id) == ("onnx", "1", trained.run_id)
    assert spec.outputs == ("label", "probability")
    assert_matches_pyfunc(runtime, postgres_uri, "models:/fraud-detector@champion", rows)
