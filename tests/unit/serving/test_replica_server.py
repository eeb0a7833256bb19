"""The replica's own HTTP server: real uvicorn on a real socket, called over real HTTP."""

import asyncio
import socket

import httpx
import pytest
from fastapi import FastAPI, Request

from serving.http.server import ReplicaServer, shared_socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_named(name: str) -> FastAPI:
    app = FastAPI()

    @app.get("/who")
    async def who() -> dict:
        return {"server": name}

    @app.get("/slow")
    async def slow() -> dict:
        await asyncio.sleep(0.3)
        return {"server": name, "slow": True}

    return app


def test_two_listeners_may_share_one_port():
    port = free_port()
    first = shared_socket("127.0.0.1", port)
    second = shared_socket("127.0.0.1", port)
    try:
        assert first.getsockname()[1] == second.getsockname()[1] == port
    finally:
        first.close()
        second.close()


def test_a_port_held_without_reuseport_is_refused():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            shared_socket("127.0.0.1", taken.getsockname()[1])


def test_servers_on_a_shared_port_both_answer_then_stop_cleanly():
    asyncio.run(_shared_port())


async def _shared_port():
    port = free_port()
    servers = [ReplicaServer(app_named(n), "127.0.0.1", port, drain_s=1.0) for n in ("a", "b")]
    for server in servers:
        await server.start()
    try:
        assert all(s.alive for s in servers)
        seen = set()
        for _ in range(60):  # a new connection each time: the kernel picks a listener
            async with httpx.AsyncClient() as client:
                seen.add((await client.get(f"http://127.0.0.1:{port}/who")).json()["server"])
            if seen == {"a", "b"}:
                break
        assert seen == {"a", "b"}
    finally:
        for server in servers:
            await server.stop()
    assert not any(s.alive for s in servers)
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{port}/who")


def test_stop_lets_a_request_in_flight_finish():
    asyncio.run(_in_flight())


async def _in_flight():
    port = free_port()
    server = ReplicaServer(app_named("a"), "127.0.0.1", port, drain_s=2.0)
    await server.start()
    async with httpx.AsyncClient() as client:
        pending = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/slow"))
        await asyncio.sleep(0.1)
        await server.stop()
        response = await pending
    assert response.status_code == 200 and response.json() == {"server": "a", "slow": True}


def test_the_callers_address_is_the_sockets_not_a_forwarded_header():
    asyncio.run(_forwarded())


async def _forwarded():
    app = FastAPI()

    @app.get("/client")
    async def client(request: Request) -> dict:
        return {"host": request.client.host}

    port = free_port()
    server = ReplicaServer(app, "127.0.0.1", port, drain_s=0.5)
    await server.start()
    try:
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"http://127.0.0.1:{port}/client", headers={"x-forwarded-for": "203.0.113.9"})
    finally:
        await server.stop()
    assert answer.json() == {"host": "127.0.0.1"}
