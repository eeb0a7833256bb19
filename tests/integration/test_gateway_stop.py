"""The end of the session's demo gateway: its inference log under load, then its graceful stop.

The demo gateway records every request (the demo's default) and, in these tests, holds every
record until it stops (``flush_interval_ms`` of an hour: tests/integration/demo_gateway.py). So
when ``mlgate log compact`` finds every row of the load below in Redis after ``mlgate stop``, the
replica's graceful close wrote them: nothing answered is lost on a stop. Spark then reads them,
with the labels sent to the feedback endpoint joined. Runs after the gateway's other users
(test_gateway*.py, in file order), and stops it.
"""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from batch import log_table
from examples.fraud.train import REQUEST_NAMES
from tests.integration.conftest import run_cli
from tests.integration.demo_gateway import MODEL

pytestmark = pytest.mark.integration

LOAD, CONCURRENCY = 300, 16
SENT: dict[str, dict] = {}  # request id -> {"body", "answer"}


@pytest.fixture(scope="module")
def gateway(demo_gateway):
    return demo_gateway


def test_requests_under_load_are_answered_and_labelled(gateway):
    rows = gateway.table.sample(LOAD, random_state=3).reset_index(drop=True)

    async def load():
        gate = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(base_url=gateway.base, timeout=30) as client:
            async def one(i: int):
                row = rows.iloc[i]
                body = {"entities": [{"customer_id": int(row.customer_id)}],
                        "features": {k: row[k].item() for k in REQUEST_NAMES}}
                async with gate:
                    r = await client.post(f"/v1/models/{MODEL}/predict", content=orjson.dumps(body),
                                          headers={"content-type": "application/json", "x-request-id": f"load-{i}"})
                assert r.status_code == 200, r.text
                SENT[f"load-{i}"] = {"body": body, "answer": r.json()["predictions"][0]}

            await asyncio.gather(*(one(i) for i in range(LOAD)))
            labels = [{"request_id": f"load-{i}", "label": int(rows.label[i])} for i in range(0, LOAD, 2)]
            r = await client.post(f"/v1/models/{MODEL}/feedback", json={"feedback": labels})
            assert r.status_code == 202 and r.json()["accepted"] == len(labels), r.text

    asyncio.run(load())
    assert len(SENT) == LOAD


def test_stop_ends_the_gateway(gateway):
    """A graceful stop (SIGTERM: Ray Serve deletes the application, each replica closes)."""
    done = run_cli(["stop"], gateway.env, timeout=120)
    gateway.running = False  # its Redis stays up: the log is read below
    assert done.returncode == 0 and "stopped" in done.stdout
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{gateway.base}/healthz", timeout=2)


def test_nothing_answered_is_lost_on_stop_and_spark_reads_it(gateway, spark):
    if len(SENT) != LOAD:
        pytest.skip("the load above failed")
    try:
        done = run_cli(["log", "compact"], gateway.env, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"{MODEL}: " in done.stdout
        log = log_table.read(spark, gateway.settings.log_table, "log", MODEL)
        mine = log.where(log.request_id.startswith("load-")).toPandas()
        assert sorted(mine.request_id) == sorted(SENT) and len(mine) == LOAD  # each once
        stored = [c for c in mine.columns if c.startswith("in_customer_activity__")]
        assert stored and mine[stored].notna().all().all()  # the stored features the model got
        for _, row in mine.iterrows():
            sent = SENT[row.request_id]
            assert row.key_customer_id == sent["body"]["entities"][0]["customer_id"]
            assert row.in_amount == pytest.approx(sent["body"]["features"]["amount"])
            assert row.out_probability == pytest.approx(sent["answer"]["probability"], rel=1e-6)
            assert row.source == sent["answer"]["source"] and row.status == "ok"
        labels = log_table.read(spark, gateway.settings.log_table, "labels", MODEL)
        joined = log_table.labelled(log.where(log.request_id.startswith("load-")), labels).toPandas()
        assert len(joined) == (LOAD + 1) // 2
    finally:
        gateway.redis.stop()
