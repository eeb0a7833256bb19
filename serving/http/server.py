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

Slow and abusive clients. uvicorn (0.55, httptools) times out only idle keep-alive connections
(``timeout_keep_alive``, armed after a response): a connection that sends nothing, or its headers
a byte at a time, is held forever, and httptools bounds no header size (uvicorn's
``h11_max_incomplete_event_size`` applies to its h11 parser only). :class:`_GuardedHttpTools`
adds both: the headers of a request must be in within ``header_timeout_s`` of its first byte (of
the connection, for a new one), else 408 and close; past ``max_header_bytes`` of headers, 431
and close. Body timeouts are the predict route's (serving/http/predict_route.py), which knows
which requests have bodies worth waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serving.errors import HeadersTooLarge, MlgateError, RequestTimeout
from serving.http.errors import new_request_id, render_error

log = logging.getLogger(__name__)


class _GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout and a header size limit (module doc).

    Costs nothing per request whose headers come in one read: the timer is armed only for a new
    connection and for headers split over reads."""

    header_timeout_s = 5.0
    max_header_bytes = 32_768
    _header_timer: asyncio.TimerHandle | None = None
    _in_headers = False  # between a request's first byte and the end of its headers
    _header_bytes = 0  # bytes read since then, counted per read after the first (a bound, not exact)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(HeadersTooLarge(f"request headers exceed {self.max_header_bytes} bytes"))
                return
        super().data_received(data)
        if self._in_headers and self._header_timer is None and not self.transport.is_closing():
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._in_headers:
            self._refuse(RequestTimeout(f"the request headers were not received within {self.header_timeout_s:g} s"))
        elif self.cycle is None:  # a new connection that sent nothing: no request to answer
            self.transport.close()

    def _refuse(self, error: MlgateError) -> None:
        """Answer ``error`` before any request reached the app, and close the connection."""
        self._disarm()
        self._in_headers = False
        status, body, headers = render_error(error, new_request_id(None))
        head = [STATUS_LINE[status], b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body), b"connection: close\r\n"]
        head += [b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items()]
        self.transport.write(b"".join(head) + b"\r\n" + body)
        self.transport.close()


def guarded_protocol(header_timeout_s: float, max_header_bytes: int) -> type[_GuardedHttpTools]:
    """The protocol class uvicorn builds per connection, with these limits."""
    return type("GuardedHttpTools", (_GuardedHttpTools,),
                {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes})


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

    def __init__(self, app: Any, host: str, port: int, drain_s: float, keep_alive_s: float = 30.0,
                 header_timeout_s: float = 5.0, max_header_bytes: int = 32_768,
                 max_connections: int | None = 4096, backlog: int = 2048,
                 tls_certfile: Path | None = None, tls_keyfile: Path | None = None) -> None:
        """Limits and HTTPS files as :class:`serving.settings.HttpSettings` documents them."""
        self.host, self.port, self.backlog = host, port, backlog
        # proxy_headers off: the caller's address is the socket's, never an X-Forwarded-For
        # header (it also drops one ASGI layer per request). Admin calls from loopback that carry
        # forwarding headers are refused (serving/http/admin.py): a local proxy relays others.
        config = uvicorn.Config(
            app, http=guarded_protocol(header_timeout_s, max_header_bytes), lifespan="off",
            access_log=False, log_config=None, proxy_headers=False, server_header=False,
            timeout_keep_alive=keep_alive_s, timeout_graceful_shutdown=max(drain_s, 0.1),
            limit_concurrency=max_connections, backlog=backlog,
            ssl_certfile=str(tls_certfile) if tls_certfile else None,
            ssl_keyfile=str(tls_keyfile) if tls_keyfile else None)
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task | None = None

    async def start(self, timeout_s: float = 10.0) -> None:
        """Bind and serve; return once the server accepts connections (raise if it cannot)."""
        sock = shared_socket(self.host, self.port, self.backlog)
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
