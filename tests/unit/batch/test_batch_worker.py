"""The batch plan of any model whose inputs come from views, and the worker that runs it: keys
of any type and number carried through, label and score as onnxruntime computes them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest

import batch.score
from batch.outputs import CLASSIFIER, REGRESSOR
from batch.score import parse_ref, plan
from batch.worker import score_batches
from features_online import repository
from features_online.definitions import score_view
from serving.errors import ModelValidationError
from serving.runtime.base import FeatureSpec
from serving.settings import Settings
from tests.unit.batch.toy import CLASSIFIER_INPUTS, REGRESSOR_INPUTS, classifier_onnx, regressor_onnx, write_repository
from tests.unit.conftest import make_spec

AS_OF = {"shop_stats": datetime(2026, 3, 2, tzinfo=timezone.utc), "shop_risk": datetime(2026, 3, 1, tzinfo=timezone.utc),
         "account_stats": datetime(2026, 3, 2, tzinfo=timezone.utc)}
DTYPES = {"shop_stats__orders_7d": "long", "shop_stats__revenue_7d": "double", "hour": "integer",
          "shop_risk__disputes": "integer", "account_stats__spend_30d": "double"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return repository.load(write_repository(tmp_path_factory.mktemp("repo")))


@pytest.fixture
def settings(tmp_path):
    return Settings(state_dir=tmp_path, mlflow_tracking_uri=None)


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """Stands in for the registry: ``fetch`` gives the spec and graph written here; each view's
    latest offline table is a path under tmp_path as of ``AS_OF``."""
    models = {"shop-classifier": (CLASSIFIER_INPUTS, classifier_onnx(len(CLASSIFIER_INPUTS))),
              "pair-regressor": (REGRESSOR_INPUTS, regressor_onnx(len(REGRESSOR_INPUTS)))}

    def fetch(settings, ref):
        names, graph = models[ref.name]
        folder = tmp_path / ref.name
        (folder / "extra_files").mkdir(parents=True, exist_ok=True)
        (folder / "model.onnx").write_bytes(graph)
        (folder / "extra_files" / "feature_stats.json").write_text(json.dumps({"hour": {"quantiles": {"0.5": 13.6}}}))
        spec = make_spec(ref.name, inputs=tuple(FeatureSpec(n, DTYPES[n]) for n in names), outputs=())
        return spec, folder, str(folder / "model.onnx")

    monkeypatch.setattr(batch.score, "fetch", fetch)
    monkeypatch.setattr(batch.score.jobs, "latest_table",
                        lambda settings, view: (tmp_path / "offline" / view.name, AS_OF[view.name]))
    return {name: graph for name, (_, graph) in models.items()}


def test_a_string_keyed_classifier_plan(settings, repo, registered, tmp_path):
    job = plan(settings, parse_ref("shop-classifier@champion"), repo)
    scoring = job.scoring
    assert scoring.keys == (("shop_code", "string"),) and scoring.outputs.kind == CLASSIFIER
    assert scoring.schema == "`shop_code` string, `as_of_ms` bigint, `label` bigint, `score` double"
    assert set(scoring.stored) == {n for n in CLASSIFIER_INPUTS if "__" in n}
    assert scoring.request_defaults == {"hour": 14.0}
    assert scoring.graph is not None  # the fast path: the graph specialised to the request-time value
    assert job.frame.driver == "shop_stats"  # the first view the model reads
    assert job.tables == {v: str(tmp_path / "offline" / v) for v in ("shop_stats", "shop_risk")}
    assert job.as_of == AS_OF["shop_risk"]  # the oldest table
    expected = score_view("shop-classifier", repo.model_entities("shop-classifier"),
                          timedelta(seconds=settings.fallback.max_age_s))
    assert job.view == expected and job.view.version == expected.version


def test_a_two_entity_regressor_plan(settings, repo, registered):
    with pytest.raises(ModelValidationError, match="--entities"):
        plan(settings, parse_ref("pair-regressor@champion"), repo)
    job = plan(settings, parse_ref("pair-regressor@champion"), repo, entity_table=True)
    assert job.scoring.keys == (("account_id", "int64"), ("shop_code", "string"))
    assert job.scoring.outputs.kind == REGRESSOR and job.scoring.outputs.score == "variable"
    assert job.frame.driver is None and job.view.entity.key_names == ("account_id", "shop_code")
    assert job.scoring.schema.startswith("`account_id` bigint, `shop_code` string, `as_of_ms` bigint")


def test_a_model_reading_no_view_is_refused(settings, repo, registered, monkeypatch):
    spec = make_spec("plain", inputs=(FeatureSpec("hour", "integer"),), outputs=())
    monkeypatch.setattr(batch.score, "fetch", lambda s, ref: (spec, None, None))
    with pytest.raises(ModelValidationError, match="no feature view"):
        plan(settings, parse_ref("plain@champion"), repo)


def feed(scoring, keys: dict[str, pa.Array], rows: int, seed: int) -> tuple[pa.RecordBatch, np.ndarray]:
    """An Arrow batch as ``model_columns`` hands it to the worker, and the same rows as the
    float32 matrix the registered graph takes (request-time inputs at their batch values)."""
    rng = np.random.default_rng(seed)
    names = [f.name for f in scoring.spec.inputs]
    x = rng.uniform(0, 50, (rows, len(names))).astype(np.float32)
    for j, name in enumerate(names):
        if name in scoring.request_defaults:
            x[:, j] = scoring.request_defaults[name]
    columns = {**keys, "as_of_ms": pa.array(np.full(rows, 1_700_000_000_000, np.int64))}
    columns.update({name: pa.array(x[:, names.index(name)]) for name in scoring.shipped})
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns)), x


def registered_graph(scoring, graph: bytes, x: np.ndarray) -> list[np.ndarray]:
    """The registered graph's outputs on ``x``, run as the gateway runs it (same session settings:
    onnxruntime's thread count can change the order in which tree ensembles sum)."""
    from serving.runtime.onnx_runtime import session_options

    session = ort.InferenceSession(graph, sess_options=session_options(scoring.onnx),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"features": x})


def test_the_worker_scores_string_keyed_rows_as_the_registered_classifier(settings, repo, registered):
    scoring = plan(settings, parse_ref("shop-classifier@champion"), repo).scoring
    codes = pa.array([f"shop-{i:04d}/é" for i in range(300)])
    batch_in, x = feed(scoring, {"shop_code": codes}, 300, seed=1)
    out = pa.Table.from_batches(list(score_batches(scoring, iter([batch_in, batch_in.slice(0, 0)]))))
    label, probabilities = registered_graph(scoring, registered["shop-classifier"], x)
    assert out.column_names == ["shop_code", "as_of_ms", "label", "score"]
    assert out.column("shop_code").to_pylist() == codes.to_pylist()
    assert out.column("label").type == pa.int64() and out.column("score").type == pa.float64()
    np.testing.assert_array_equal(out.column("label").to_numpy(), label.astype(np.int64))
    np.testing.assert_array_equal(out.column("score").to_numpy(), probabilities[:, 1].astype(np.float64))
    assert len(np.unique(probabilities[:, 1])) > 10  # the inputs move the score: a real comparison


def test_the_worker_carries_both_keys_of_a_two_entity_regressor(settings, repo, registered):
    scoring = plan(settings, parse_ref("pair-regressor@champion"), repo, entity_table=True).scoring
    keys = {"account_id": pa.array(np.arange(200, dtype=np.int64) * 7), "shop_code": pa.array([f"s{i % 9}" for i in range(200)])}
    batch_in, x = feed(scoring, keys, 200, seed=2)
    out = pa.Table.from_batches(list(score_batches(scoring, iter([batch_in]))))
    (prediction,) = registered_graph(scoring, registered["pair-regressor"], x)
    assert out.column_names == ["account_id", "shop_code", "as_of_ms", "label", "score"]
    assert out.column("account_id").to_pylist() == keys["account_id"].to_pylist()
    assert out.column("shop_code").to_pylist() == keys["shop_code"].to_pylist()
    assert set(out.column("label").to_pylist()) == {0}
    np.testing.assert_array_equal(out.column("score").to_numpy(), prediction[:, 0].astype(np.float64))
