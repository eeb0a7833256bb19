"""Batch scoring of any model whose inputs come from views, end to end: a small repository in
YAML, offline tables written as Parquet where ``jobs.latest_table`` finds them, a string-keyed
classifier and a two-entity regressor registered in a real MLflow (SQLite), real Spark local,
scores synced into a private Redis and read back as the gateway reads them. The scores equal
onnxruntime's on the same rows, the rows a view lacks taking that view's defaults."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.outputs import CLASSIFIER, REGRESSOR
from batch.score import arrow_for_scoring, model_columns, parse_ref, plan, score
from batch.specialise import read_columns
from features_online import layout, repository
from features_online.definitions import score_view
from features_online.reader import ViewReader
from features_online.settings import FeatureSettings, RedisSettings
from features_online.spark_job import offline_path
from observability.metrics import GatewayMetrics
from serving.runtime.onnx_runtime import OnnxRuntime
from serving.settings import Settings
from tests.unit.batch.toy import CLASSIFIER_INPUTS, REGRESSOR_INPUTS, classifier_onnx, regressor_onnx, write_repository

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
SIGNATURE_TYPES = {"shop_stats__orders_7d": "long", "shop_stats__revenue_7d": "double", "hour": "integer",
                   "shop_risk__disputes": "integer", "account_stats__spend_30d": "double"}
SHOPS = [f"shop-{i:03d}" for i in range(36)] + ["boutique é/ü 7", "a:b|c"]  # any printable text
ACCOUNTS = list(range(1, 25))
MAX_BYTES = "spark.sql.execution.arrow.maxBytesPerBatch"
MAX_RECORDS = "spark.sql.execution.arrow.maxRecordsPerBatch"


@pytest.fixture(scope="module")
def world(tmp_path_factory, redis_server):
    """Settings of a private state folder and Redis prefix, the repository, its offline tables."""
    root = tmp_path_factory.mktemp("batch")
    repo = repository.load(write_repository(root / "repo"))
    settings = Settings(state_dir=root / "state", mlflow_tracking_uri=None,
                        redis=RedisSettings(url=redis_server.url, prefix="batchscore"))
    rng = np.random.default_rng(5)
    revenue = rng.uniform(0, 50, len(SHOPS))
    revenue[3] = np.nan  # a null in the table: the view's default, as the online layout stores it
    tables = {
        "shop_stats": {"shop_code": pa.array(SHOPS), "orders_7d": pa.array(rng.integers(0, 50, len(SHOPS)), pa.int64()),
                       "revenue_7d": pa.array(revenue, pa.float64(), from_pandas=True)},
        # only some shops have a risk row: the others get the view's default (3)
        "shop_risk": {"shop_code": pa.array(SHOPS[::2]),
                      "disputes": pa.array(rng.integers(0, 50, len(SHOPS[::2])), pa.int32())},
        "account_stats": {"account_id": pa.array(ACCOUNTS, pa.int64()),
                          "spend_30d": pa.array(rng.uniform(0, 50, len(ACCOUNTS)))},
    }
    for name, columns in tables.items():
        rows = len(next(iter(columns.values())))
        folder = offline_path(settings.offline_dir, repo.views[name], AS_OF)
        folder.mkdir(parents=True)
        as_of_ms = pa.array(np.full(rows, int(AS_OF.timestamp() * 1000), np.int64))
        pq.write_table(pa.table({**columns, "as_of_ms": as_of_ms}), folder / "part-00000.parquet")
        (folder / "_SUCCESS").touch()
    pairs = pd.DataFrame({"account_id": [1, 2, 2, 999, 17, 17], "shop_code": [SHOPS[0], SHOPS[1], SHOPS[5], SHOPS[2],
                                                                               SHOPS[-1], SHOPS[-1]]})
    pairs.to_parquet(root / "pairs.parquet")  # 999: an account with no row; a duplicate pair
    return settings, repo, {name: pa.table(columns).to_pandas() for name, columns in tables.items()}, root


def register(settings: Settings, name: str, graph: bytes, inputs: tuple[str, ...], stats: dict | None) -> str:
    """Log ``graph`` with a signature naming its inputs, register it, alias it champion."""
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    signature = ModelSignature(Schema([ColSpec(SIGNATURE_TYPES[n], n) for n in inputs]))
    extra = []
    if stats is not None:
        path = settings.state_dir / name / "feature_stats.json"  # the name the scorer looks for
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stats))
        extra = [str(path)]
    with mlflow.start_run():
        info = mlflow.onnx.log_model(onnx.load_from_string(graph), name="model", signature=signature,
                                     registered_model_name=name, extra_files=extra or None,
                                     save_as_external_data=False)
    version = str(info.registered_model_version)
    MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri).set_registered_model_alias(
        name, "champion", version)
    return version


@pytest.fixture(scope="module")
def models(world):
    settings = world[0]
    graphs = {"shop-classifier": classifier_onnx(len(CLASSIFIER_INPUTS)),
              "pair-regressor": regressor_onnx(len(REGRESSOR_INPUTS))}
    register(settings, "shop-classifier", graphs["shop-classifier"], CLASSIFIER_INPUTS,
             {"hour": {"quantiles": {"0.5": 13.6}}})
    register(settings, "pair-regressor", graphs["pair-regressor"], REGRESSOR_INPUTS, None)
    return graphs


def expected_frame(tables: dict[str, pd.DataFrame], repo, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with every view's features by qualified name, defaults where a view has no row
    (or a null): an independent pandas join."""
    frame = rows.copy()
    for name, table in tables.items():
        view = repo.views[name]
        keys = list(view.entity.key_names)
        if not set(keys) <= set(frame.columns):
            continue
        frame = frame.merge(table.rename(columns={f: view.qualified(f) for f in view.feature_names}), on=keys,
                            how="left")
        for f in view.features:
            frame[view.qualified(f.name)] = frame[view.qualified(f.name)].fillna(f.default)
    return frame


def onnxruntime_scores(settings, graph: bytes, inputs: tuple[str, ...], frame: pd.DataFrame, hour: float = 14.0):
    """The registered graph on the same rows through the gateway's runtime (float32 matrix)."""
    from serving.runtime.base import FeatureSpec, ModelSpec

    spec = ModelSpec("m", "1", None, "models:/m/1", "onnx", tuple(FeatureSpec(n, "double") for n in inputs), ())
    columns = {n: (np.full(len(frame), hour) if n == "hour" else frame[n].to_numpy(np.float64)) for n in inputs}
    return OnnxRuntime(graph, spec, settings.onnx).predict(columns)


def read_back(settings, view, keys: dict[str, list]):
    async def run():
        reader = ViewReader(settings.redis, FeatureSettings(), {view.name: view}, GatewayMetrics())
        await reader.start()
        try:
            rows = layout.encode_fields(view.entity, keys)
            return (await reader.read({view.name: rows}, 2.0))[view.name], reader.live(view.name)
        finally:
            await reader.close()
    return asyncio.run(run())


def test_a_string_keyed_classifier_is_scored_synced_and_read_back(spark, world, models):
    settings, repo, tables, root = world
    result = score(settings, spark, "shop-classifier@champion", str(root / "out-classifier"), repo)
    got = pd.read_parquet(root / "out-classifier").sort_values("shop_code").reset_index(drop=True)
    expected = expected_frame(tables, repo, pd.DataFrame({"shop_code": sorted(SHOPS)}))
    out = onnxruntime_scores(settings, models["shop-classifier"], CLASSIFIER_INPUTS, expected)
    assert result.rows == len(SHOPS) and got["shop_code"].tolist() == sorted(SHOPS)
    assert (expected["shop_risk__disputes"] == 3).sum() == len(SHOPS) // 2  # defaults really fed
    assert len(np.unique(out["probabilities"][:, 1])) > 5  # the features move the score
    np.testing.assert_array_equal(got["label"].to_numpy(), out["label"].astype(np.int64))
    np.testing.assert_array_equal(got["score"].to_numpy(), out["probabilities"][:, 1].astype(np.float64))
    assert set(got["as_of_ms"]) == {int(AS_OF.timestamp() * 1000)} and set(got["model"]) == {"shop-classifier"}

    view = score_view("shop-classifier", repo.model_entities("shop-classifier"),
                      timedelta(seconds=settings.fallback.max_age_s))
    read, live = read_back(settings, view, {"shop_code": got["shop_code"].tolist()})
    assert read.present.all() and result.sync.rows == len(SHOPS)
    np.testing.assert_array_equal(read.records["label"], got["label"].to_numpy())
    np.testing.assert_array_equal(read.records["score"], got["score"].to_numpy())
    assert live.extra["outputs"] == CLASSIFIER and live.extra["model_version"] == result.version


def test_a_two_entity_regressor_scores_the_pairs_of_an_entity_table(spark, world, models):
    settings, repo, tables, root = world
    result = score(settings, spark, "pair-regressor@champion", str(root / "out-regressor"), repo,
                   entities=str(root / "pairs.parquet"))
    got = pd.read_parquet(root / "out-regressor").sort_values(["account_id", "shop_code"]).reset_index(drop=True)
    pairs = pd.read_parquet(root / "pairs.parquet").drop_duplicates().sort_values(["account_id", "shop_code"])
    expected = expected_frame(tables, repo, pairs.reset_index(drop=True))
    out = onnxruntime_scores(settings, models["pair-regressor"], REGRESSOR_INPUTS, expected)
    assert result.rows == len(pairs) == 5
    assert got[["account_id", "shop_code"]].values.tolist() == pairs.values.tolist()
    assert expected.loc[expected["account_id"] == 999, "account_stats__spend_30d"].tolist() == [1.5]
    assert (got["label"] == 0).all()
    np.testing.assert_array_equal(got["score"].to_numpy(), out["variable"][:, 0].astype(np.float64))

    view = score_view("pair-regressor", repo.model_entities("pair-regressor"),
                      timedelta(seconds=settings.fallback.max_age_s))
    keys = {"account_id": got["account_id"].tolist(), "shop_code": got["shop_code"].tolist()}
    read, live = read_back(settings, view, keys)
    assert read.present.all()
    np.testing.assert_array_equal(read.records["score"], got["score"].to_numpy())
    assert live.extra["outputs"] == REGRESSOR and live.extra["model_version"] == result.version


def test_only_the_inputs_the_graph_reads_cross_to_python_already_as_the_graph_takes_them(spark, world, models):
    settings, repo, tables, root = world
    job = plan(settings, parse_ref("shop-classifier@champion"), repo)
    scoring = job.scoring
    table = expected_frame(tables, repo, pd.DataFrame({"shop_code": SHOPS})).assign(as_of_ms=1, unused=1.5)
    frame = model_columns(spark.createDataFrame(table), scoring)
    read = read_columns(scoring.worker_graph)
    names = [f.name for f in scoring.spec.inputs]
    assert scoring.graph is not None  # specialised to the request-time value every row gets
    assert frame.columns == ["shop_code", "as_of_ms", *scoring.shipped.values()]
    assert set(scoring.shipped) == {names[j] for j in read} and set(scoring.shipped) <= set(scoring.stored)
    assert {t for c, t in frame.dtypes if c in scoring.stored.values()} == {"float"}  # a float32 graph


def test_the_arrow_setting_lasts_only_for_the_scoring_job(spark):
    before = spark.conf.get(MAX_BYTES)
    with arrow_for_scoring(spark):
        assert spark.conf.get(MAX_BYTES) == str(2**31 - 1)
    assert spark.conf.get(MAX_BYTES) == before
    records = spark.conf.get(MAX_RECORDS)
    spark.conf.set(MAX_RECORDS, "0")  # no record limit: the byte limit is the only bound, kept
    try:
        with arrow_for_scoring(spark):
            assert spark.conf.get(MAX_BYTES) == before
    finally:
        spark.conf.set(MAX_RECORDS, records)
