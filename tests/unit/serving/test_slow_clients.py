"""Slow and abusive clients against the replica's real HTTP server (uvicorn on a 127.0.0.1 socket):
hundreds of callers that send a request's start and then nothing must not slow real predictions,
and are answered 408 or dropped once their time is up."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson

from observability.metrics import GatewayMetrics
from serving.http.app import build_app
from serving.http.server import ReplicaServer
from serving.models import InProcessModel, ModelTable
from serving.pipeline import Pipeline
from serving.settings import Settings
from tests.unit.conftest import ToyRuntime
from tests.unit.serving.test_replica_server import free_port

ROW = {"amount": 250.0, "count": 3, "is_online": True, "score": 0.5}
TIMEOUT_S = 3.0
SLOW_BODIES, SLOW_HEADERS = 300, 50


async def serving(scenario, **http):
    """Run ``scenario(port)`` against a real replica server over the toy model."""
    settings = Settings(models=[{"name": "toy"}], http={"body_timeout_s": TIMEOUT_S, **http})
    metrics = GatewayMetrics()
    table = ModelTable(settings, metrics, lambda m: InProcessModel(ToyRuntime(), metrics))
    table.start()
    await asyncio.wait_for(table.wait_ready(), 5)
    port = free_port()
    server = ReplicaServer(build_app(Pipeline(settings, table, metrics)), "127.0.0.1", port, drain_s=0.2,
                           header_timeout_s=TIMEOUT_S, max_header_bytes=4096)
    await server.start()
    try:
        return await scenario(port)
    finally:
        await server.stop()
        table.close()


async def open_slow(port: int, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    return reader, writer


async def answer_of(reader: asyncio.StreamReader, within_s: float) -> bytes:
    """What the server sends before closing (b"" when it closes without a word)."""
    try:
        return await asyncio.wait_for(reader.read(), within_s)
    except ConnectionResetError:
        return b""


def test_hundreds_of_slow_senders_leave_predictions_fast_then_get_408():
    body = orjson.dumps({"instances": [ROW]})
    slow_body = (b"POST /v1/models/toy/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n{" % len(body))
    slow_head = b"POST /v1/models/toy/predict HTTP/1.1\r\nhost: x\r\ncontent-le"

    async def scenario(port):
        opened = time.monotonic()
        slow = []
        for head, count in ((slow_body, SLOW_BODIES), (slow_head, SLOW_HEADERS)):
            for _ in range(0, count, 50):
                slow += await asyncio.gather(*(open_slow(port, head) for _ in range(50)))
        latencies = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(20):  # while every slow sender is still inside its timeout
                started = time.monotonic()
                r = await client.post("/v1/models/toy/predict", content=body,
                                      headers={"content-type": "application/json"})
                latencies.append(time.monotonic() - started)
                assert r.status_code == 200, r.text
        assert time.monotonic() - opened < TIMEOUT_S, "too slow to test inside the timeout"
        assert max(latencies) < 0.5, latencies
        answers = await asyncio.gather(*(answer_of(r, TIMEOUT_S + 3) for r, _ in slow))
        for _, writer in slow:
            writer.close()
        assert time.monotonic() - opened < TIMEOUT_S + 3
        body_answers, head_answers = answers[:SLOW_BODIES], answers[SLOW_BODIES:]
        assert all(a.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in a
                   and b"connection: close" in a for a in body_answers), body_answers[0]
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in head_answers), head_answers[0]

    asyncio.run(serving(scenario))


def test_a_connection_that_sends_nothing_is_closed_and_oversized_headers_get_431():
    async def scenario(port):
        reader, writer = await open_slow(port, b"")
        started = time.monotonic()
        assert await answer_of(reader, TIMEOUT_S + 2) == b""
        assert TIMEOUT_S - 0.2 < time.monotonic() - started < TIMEOUT_S + 2
        writer.close()
        reader, writer = await open_slow(port, b"GET /healthz HTTP/1.1\r\nx-big: ")
        first = b""
        for _ in range(10):  # a KiB more header at a time, until the server answers
            writer.write(b"a" * 1024)
            await writer.drain()
            try:
                first = await asyncio.wait_for(reader.read(1), 0.1)
                break
            except TimeoutError:
                continue
        answer = first + await answer_of(reader, 2)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 431 ") and b'"headers_too_large"' in answer
        async with httpx.AsyncClient() as client:  # a normal caller is unaffected
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200

    asyncio.run(serving(scenario))
