"""The gateway replica's own gRPC server (``protocols.grpc``, ``reuseport`` ingress).

Like the replica's HTTP server (serving/http/server.py), every replica on a node binds the same
port with ``SO_REUSEPORT`` (``grpc.so_reuseport``) and the kernel spreads connections over them;
the server runs on the replica's event loop, the one the pipeline lives on. It serves HTTPS's
certificate when ``http.tls_certfile`` is set: a bearer token must not travel in clear text on one
port when it is protected on the other.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from serving.rpc.proto import SERVICE
from serving.rpc.service import InferenceService

log = logging.getLogger(__name__)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """A ``grpc.aio`` server of :class:`InferenceService` on a shared port."""

    def __init__(self, service: InferenceService, host: str, port: int, max_message_bytes: int,
                 drain_s: float = 2.0, tls_certfile: Path | None = None, tls_keyfile: Path | None = None,
                 reflection: bool = True) -> None:
        """``reflection``: also serve gRPC server reflection (when grpcio-reflection is
        installed), so that ``grpcurl`` and the like need no copy of the proto."""
        self.service, self.host, self.port = service, host, port
        self.max_message_bytes, self.drain_s = max_message_bytes, drain_s
        self.tls = (tls_certfile, tls_keyfile) if tls_certfile is not None else None
        self.reflection = reflection
        self._server: grpc.aio.Server | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        """Bind and serve; raise if the address cannot be bound."""
        server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ])
        server.add_generic_rpc_handlers((self.service.handler(),))
        if self.reflection:
            self._add_reflection(server)
        where = address(self.host, self.port)
        if self.tls is not None:
            certfile, keyfile = self.tls
            credentials = grpc.ssl_server_credentials([(Path(keyfile).read_bytes(), Path(certfile).read_bytes())])
            port = server.add_secure_port(where, credentials)
        else:
            port = server.add_insecure_port(where)
        if port == 0:  # grpcio >= 1.60 raises instead; older ones answer 0
            raise RuntimeError(f"gRPC server could not bind {where}")
        await server.start()
        self._server, self.bound_port = server, port
        log.info("serving OIP v2 gRPC on %s (shared port)", where)

    def _add_reflection(self, server: grpc.aio.Server) -> None:
        try:
            from grpc_reflection.v1alpha import reflection
        except ImportError:  # an optional extra (grpcio-reflection)
            return
        reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME), server,
                                            pool=self.service.proto.pool)

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def alive(self) -> bool:
        # grpc.aio has no public "still serving" flag: once started, it serves until stopped
        return self._server is not None

    async def stop(self) -> None:
        """Refuse new calls, let those in flight finish (up to the drain time), close."""
        if self._server is None:
            return
        server, self._server = self._server, None
        await server.stop(grace=self.drain_s)
