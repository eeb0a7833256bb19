"""The inference log end to end without Ray: the real HTTP app over a toy model, the recorder
writing to a real redis-server, ``mlgate log compact``'s code, and Spark reading the Parquet table.

Under concurrent load every answered row is in the table exactly once, with what the model was
given and what it said; a graceful close writes what was still held; labels sent to the feedback
endpoint join their rows; Redis down loses nothing within the buffer; a compactor that dies
half way leaves neither a gap nor a duplicate.
"""

from __future__ import annotations

import asyncio
import secrets

import httpx
import numpy as np
import orjson
import pytest

from batch import compact as compaction
from batch import log_table
from features_online.redis_client import connect, connect_async
from features_online.settings import RedisSettings
from observability.metrics import GatewayMetrics
from serving.http.app import build_app
from serving.inference_log import stream
from serving.inference_log.recorder import InferenceLog
from serving.models import InProcessModel, ModelTable
from serving.pipeline import Pipeline
from serving.settings import Settings
from tests.integration.conftest import RedisServer
from tests.unit.conftest import ToyRuntime

REQUESTS, CONCURRENCY = 600, 32


def sample(metrics: GatewayMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("mlgate_inference_log_rows_total",
                                             {"model": "toy", "outcome": outcome}) or 0.0


def gateway(redis_url: str, prefix: str, scenario, **log_settings):
    """Run ``scenario(client, recorder, metrics)`` on the app with the inference log on; the
    recorder is closed (a graceful stop) after it."""
    settings = Settings(models=[{"name": "toy"}], redis={"url": redis_url, "prefix": prefix},
                        inference_log={"enabled": True, "batch_rows": 64, "flush_interval_ms": 50, **log_settings})
    metrics = GatewayMetrics()

    async def main():
        table = ModelTable(settings, metrics, lambda m: InProcessModel(ToyRuntime(), metrics), retry_initial_s=0.01)
        table.start()
        await asyncio.wait_for(table.wait_ready(), 5)
        recorder = InferenceLog(settings.inference_log, connect_async(settings.redis), prefix, metrics)
        recorder.start()
        app = build_app(Pipeline(settings, table, metrics, inference_log=recorder))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await scenario(client, recorder, metrics)
        finally:
            await recorder.close()
            table.close()

    return asyncio.run(main())


def body(i: int) -> bytes:
    rows = [{"amount": float(i * 10 + r), "count": r, "is_online": bool(i % 2), "score": 0.25}
            for r in range(1 + i % 3)]
    return orjson.dumps({"instances": rows})


def test_every_answered_row_is_in_the_table_once_with_its_inputs_outputs_and_labels(redis_server, spark, tmp_path):
    prefix = f"t{secrets.token_hex(4)}"
    answers: dict[str, dict] = {}

    async def load(client, recorder, metrics):
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int):
            async with gate:
                r = await client.post("/v1/models/toy/predict", content=body(i),
                                      headers={"content-type": "application/json", "x-request-id": f"req-{i}"})
                assert r.status_code == 200, r.text
                answers[f"req-{i}"] = r.json()

        await asyncio.gather(*(one(i) for i in range(REQUESTS)))
        labels = {"feedback": [{"request_id": f"req-{i}", "label": i % 2} for i in range(0, REQUESTS, 3)]}
        r = await client.post("/v1/models/toy/feedback", json=labels)
        assert r.status_code == 202 and r.json() == {"accepted": REQUESTS // 3, "model": "toy"}
        r = await client.post("/v1/models/toy/feedback", json={"request_id": "req-1", "row": 0, "value": 7.5})
        assert r.status_code == 202
        return metrics

    metrics = gateway(redis_server.url, prefix, load)  # returns after the graceful close
    rows_sent = sum(1 + i % 3 for i in range(REQUESTS))
    assert sample(metrics, "written") == rows_sent and sample(metrics, "dropped_buffer") == 0

    client = redis_server.client()
    done = compaction.compact(client, prefix, str(tmp_path / "table"))
    assert done.rows[("log", "toy")] == rows_sent and done.rows[("labels", "toy")] == REQUESTS // 3 + 1
    assert client.xlen(stream.stream_key(prefix, "log", "toy")) == 0  # compacted entries leave Redis

    log = log_table.read(spark, str(tmp_path / "table"), "log", "toy")
    got = log.toPandas()
    assert len(got) == rows_sent
    assert not got.duplicated(["request_id", "row"]).any()
    assert set(got.request_id) == set(answers)
    assert set(got.client) == {"anonymous"} and set(got.variant) == {"champion"} and set(got.status) == {"ok"}
    assert set(got.source) == {"online"} and set(got.version) == {"3"} and (got.latency_ms > 0).all()
    for _, row in got.sample(50, random_state=1).iterrows():  # what the model got and said
        i, r = int(row.request_id.split("-")[1]), int(row.row)
        assert row.in_amount == i * 10 + r and row.in_count == r and row.in_is_online == float(i % 2)
        answer = answers[row.request_id]["predictions"][r]
        assert row.out_probability == pytest.approx(answer["probability"], rel=1e-6)
        assert row.out_label == answer["label"]
    log.createOrReplaceTempView("inference_log")
    counted = spark.sql("SELECT count(DISTINCT request_id) AS n FROM inference_log WHERE date IS NOT NULL").first().n
    assert counted == REQUESTS

    labels = log_table.read(spark, str(tmp_path / "table"), "labels", "toy")
    joined = log_table.labelled(log, labels).toPandas()
    expected = REQUESTS // 3 + 1  # requests i % 3 == 0 have one row; req-1 gets one row's label
    assert len(joined) == expected
    by_id = joined.set_index(["request_id", "row"]).label
    assert by_id[("req-3", 0)] == 1.0 and by_id[("req-6", 0)] == 0.0 and by_id[("req-1", 0)] == 7.5


def test_redis_down_loses_nothing_within_the_buffer_and_overflow_is_counted(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    prefix = "down"
    settings = Settings(redis={"url": server.url, "prefix": prefix},
                        inference_log={"enabled": True, "buffer_rows": 30, "batch_rows": 4})
    metrics = GatewayMetrics()

    async def main():
        recorder = InferenceLog(settings.inference_log, connect_async(settings.redis), prefix, metrics)
        server.stop()
        for i in range(40):  # 30 fit, 10 do not
            recorder.record("toy", {"id": f"r{i}", "t": 1_700_000_000_000_000 + i, "st": "ok",
                                    "in": {"x": np.array([float(i)])}, "out": [{"y": i}]}, 1)
        with pytest.raises(Exception):
            await recorder.flush()  # Redis is down: the records stay held
        assert recorder.held_rows == 30
        server.start()
        await recorder.close()

    asyncio.run(main())
    assert sample(metrics, "dropped_buffer") == 10 and sample(metrics, "written") == 30
    assert sample(metrics, "dropped_shutdown") == 0
    client = server.client()
    entries = client.xrange(stream.stream_key(prefix, "log", "toy"))
    ids = [r["id"] for _, fields in entries for r in stream.decode(fields)]
    assert ids == [f"r{i}" for i in range(30)]  # in order, once each
    server.stop()


def test_a_full_stream_drops_new_batches_and_keeps_the_oldest(redis_server):
    prefix = f"t{secrets.token_hex(4)}"
    settings = Settings(redis={"url": redis_server.url, "prefix": prefix},
                        inference_log={"enabled": True, "batch_rows": 1, "max_stream_entries": 2})
    metrics = GatewayMetrics()

    async def main():
        recorder = InferenceLog(settings.inference_log, connect_async(settings.redis), prefix, metrics)
        for round_ in range(3):
            for i in range(2):
                recorder.record("toy", {"id": f"r{round_}-{i}", "t": 1, "out": [{"y": 1}]}, 1)
            await recorder.flush()
        await recorder.close()

    asyncio.run(main())
    assert sample(metrics, "written") == 2 and sample(metrics, "dropped_backlog") == 4
    entries = redis_server.client().xrange(stream.stream_key(prefix, "log", "toy"))
    assert [r["id"] for _, f in entries for r in stream.decode(f)] == ["r0-0", "r0-1"]


def test_a_compactor_that_dies_part_way_leaves_no_gap_and_no_duplicate(redis_server, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    prefix = f"t{secrets.token_hex(4)}"
    client = redis_server.client()
    key = stream.stream_key(prefix, "log", "toy")
    client.sadd(stream.models_key(prefix), "toy")
    day = 1_700_000_000_000_000
    for entry in range(5):
        client.xadd(key, stream.encode([{"id": f"e{entry}-{i}", "t": day + entry * 86_400_000_000, "st": "ok",
                                         "out": [{"y": float(i)}]} for i in range(3)]))
    root = str(tmp_path / "table")
    real = compaction._write_page

    def dies_after_writing(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("killed")

    monkeypatch.setattr(compaction, "_write_page", dies_after_writing)
    with pytest.raises(RuntimeError):
        compaction.compact(client, prefix, root, page=2)
    monkeypatch.setattr(compaction, "_write_page", real)
    client.delete(stream.checkpoint_key(prefix, "log", "toy") + ":lease")  # the dead run's lease
    compaction.compact(client, prefix, root, page=2)
    table = pq.read_table(f"{root}/log").to_pandas()
    assert sorted(table.request_id) == sorted(f"e{e}-{i}" for e in range(5) for i in range(3))
    assert client.xlen(key) == 0
    assert compaction.compact(client, prefix, root).rows == {}  # nothing left, nothing written twice


def test_feedback_refusals(redis_server):
    prefix = f"t{secrets.token_hex(4)}"

    async def refusals(client, recorder, metrics):
        post = lambda content, model="toy", **h: client.post(  # noqa: E731
            f"/v1/models/{model}/feedback", content=content, headers={"content-type": "application/json", **h})
        cases = [
            (b"{", 400), (b'{"request_id": "a"}', 400), (b'{"request_id": "a", "label": 1, "value": 2}', 400),
            (b'{"request_id": "", "label": 1}', 400), (b'{"request_id": "a", "label": "1"}', 400),
            (b'{"request_id": "a", "label": 1, "extra": 1}', 400), (b'{"feedback": []}', 400),
            (b'{"request_id": "a b", "label": 1}', 400), (b'{"request_id": "a", "label": 1e300}', 400),
            (orjson.dumps({"feedback": [{"request_id": "a", "label": 1}] * 1001}), 400),
        ]
        for content, status in cases:
            r = await post(content)
            assert r.status_code == status, (content[:60], r.text)
            assert r.json()["error"]["code"] == "invalid_request"
        assert (await post(b'{"request_id": "a", "label": 1}', model="nope")).json()["error"]["code"] == "model_not_found"
        r = await client.post("/v1/models/toy/feedback", content=b"x", headers={"content-type": "text/plain"})
        assert r.status_code == 415
        return None

    gateway(redis_server.url, prefix, refusals)
    assert redis_server.client().xlen(stream.stream_key(prefix, "labels", "toy")) == 0


def test_feedback_without_an_inference_log_is_404():
    from tests.unit.serving.test_http_api import run

    async def scenario(client, metrics):
        r = await client.post("/v1/models/toy/feedback", json={"request_id": "a", "label": 1})
        assert r.status_code == 404 and r.json()["error"]["code"] == "inference_log_disabled"

    run(scenario)


def test_the_compact_and_labels_commands(redis_server, tmp_path):
    from tests.integration.conftest import run_cli

    prefix = f"t{secrets.token_hex(4)}"
    client = connect(RedisSettings(url=redis_server.url))
    client.xadd(stream.stream_key(prefix, "log", "m-1"), stream.encode([{"id": "a", "t": 1_700_000_000_000_000,
                                                                           "out": [{"p": 0.5}]}]))
    client.sadd(stream.models_key(prefix), "m-1")
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label,time\na,1,1700000000\nb,0,2023-11-14T22:13:20Z\n")
    env = {"MLGATE_STATE_DIR": str(tmp_path / "state"), "MLGATE_REDIS__URL": redis_server.url,
           "MLGATE_REDIS__PREFIX": prefix}
    done = run_cli(["log", "compact"], env, timeout=60)
    assert done.returncode == 0 and "m-1: 1 prediction rows" in done.stdout, done.stderr
    done = run_cli(["log", "labels", str(labels), "--model", "m-1"], env, timeout=60)
    assert done.returncode == 0 and "2 labels of m-1" in done.stdout, done.stderr
    labels.write_text("request_id,label\na,not-a-number\n")
    done = run_cli(["log", "labels", str(labels), "--model", "m-1"], env, timeout=60)
    assert done.returncode == 2 and "line 1" in done.stderr
