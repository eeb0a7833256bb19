"""The gateway replica's own HTTP server, for ``http.ingress: reuseport``.

Ray Serve's direct ingress wraps every request in Ray's own request handling (metadata, a task
per request for disconnect and timeout watching, Ray's request metrics) before the app sees it:
as much CPU per request as a whole bare uvicorn app doing the same work (loadtests/RESULTS.md).
Here the replica instead runs uvicorn itself, on its own event loop (the one the pipeline's Redis
client lives on), and hands requests straight to the app.

Every replica on a node listens on the same public port with ``SO_REUSEPORT``: the kernel spreads
new connections over the replicas, so a node takes as many replicas as it has cores without a
proxy hop. Ray Serve still owns the replicas' life (placement, health checks, restarts, rolling
updates, ``user_config``); only the HTTP path bypasses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import uvicorn

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the process (a Ray worker) owns its signals."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def shared_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket that other processes on this host may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ReplicaServer:
    """uvicorn serving ``app`` on a shared port, as a task of the running event loop."""

    def __init__(self, app: Any, host: str, port: int, drain_s: float,
                 keep_alive_s: float = 30.0) -> None:
        self.host, self.port = host, port
        # proxy_headers off: the caller's address is the socket's, never an X-Forwarded-For
        # header (it also drops one ASGI layer per request). Admin calls from loopback that carry
        # forwarding headers are refused (serving/http/admin.py): a local proxy relays others.
        config = uvicorn.Config(
            app, http="httptools", lifespan="off", access_log=False, log_config=None,
            proxy_headers=False, server_header=False,
            timeout_keep_alive=keep_alive_s, timeout_graceful_shutdown=max(drain_s, 0.1))
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task | None = None

    async def start(self, timeout_s: float = 10.0) -> None:
        """Bind and serve; return once the server accepts connections (raise if it cannot)."""
        sock = shared_socket(self.host, self.port)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="mlgate-http")
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped before it started")
            if asyncio.get_running_loop().time() > deadline:
                self._task.cancel()
                sock.close()
                raise TimeoutError(f"HTTP server on {self.host}:{self.port} not started after {timeout_s}s")
            await asyncio.sleep(0.01)
        log.info("serving HTTP on %s:%d (shared port)", self.host, self.port)

    @property
    def started(self) -> bool:
        """True once :meth:`start` was called (whether or not the server still runs)."""
        return self._task is not None

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the drain time), close."""
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._task
