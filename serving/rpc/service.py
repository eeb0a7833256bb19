"""The six RPCs of OIP v2's ``GRPCInferenceService`` over the gateway's predict route.

``ModelInfer`` is answered by :meth:`PredictRoute.respond`, the method that answers every HTTP
protocol, with the gRPC codec: admission (credential, scope, quota), the in-flight limit,
routing, features, fallbacks, the request metrics and ``mlgate_protocol_requests_total``
(``protocol="v2-grpc"``) are the same code as REST's. The invocation metadata are its headers, so
``authorization: Bearer ...`` and ``x-api-key`` work as they do over HTTP.

Errors: mlgate's HTTP status as a gRPC status code, its message as the details, and its stable
error code in the trailing metadata ``mlgate-code`` (with ``x-request-id`` and, for retryable
refusals, ``retry-after``), so that a client branches on the same codes over both transports.

The request message is parsed once, here, for its model name (admission is by model); the codec
gets it already parsed (:meth:`OipGrpc.bind`). Unlike HTTP, gRPC has read the whole message
before any handler runs: ``protocols.grpc.max_message_bytes`` is what bounds it.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Mapping, NoReturn

import grpc
import orjson

from serving.errors import MlgateError
from serving.http.errors import REQUEST_ID_HEADER, new_request_id
from serving.http.predict_route import PredictRoute
from serving.protocols.grpc_codec import OipGrpc
from serving.protocols.metadata import Describer, mlgate_version
from serving.rpc.proto import SERVICE, OipProto

# HTTP statuses of mlgate's errors as gRPC status codes (anything else: INTERNAL).
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
    504: grpc.StatusCode.DEADLINE_EXCEEDED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
CODE_METADATA = "mlgate-code"
# Response headers of the predict route that mean something to a gRPC caller.
FORWARDED_HEADERS = frozenset({REQUEST_ID_HEADER, "retry-after", "x-model-version", "x-mlgate-variant"})


def status_code(status: int) -> grpc.StatusCode:
    return STATUS_CODES.get(status, grpc.StatusCode.INTERNAL)


def headers_of(context: grpc.aio.ServicerContext) -> dict[bytes, bytes]:
    """The invocation metadata as the predict route's headers (lowercase bytes keys)."""
    headers = {}
    for key, value in context.invocation_metadata() or ():
        headers[key.lower().encode("latin-1")] = value if isinstance(value, bytes) else value.encode("latin-1")
    return headers


def peer_host(peer: str | None) -> str | None:
    """The caller's address of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``)."""
    if not peer:
        return None
    kind, _, address = peer.partition(":")
    if kind == "ipv6":
        return address[1:].split("]", 1)[0] if address.startswith("[") else address.rsplit(":", 1)[0]
    if kind == "ipv4":
        return address.rsplit(":", 1)[0]
    return None


class InferenceService:
    """The servicer: ``handler()`` is the generic handler a ``grpc.aio`` server serves."""

    def __init__(self, route: PredictRoute, proto: OipProto) -> None:
        self.route = route
        self.auth = route.auth
        self.pipeline = route.pipeline
        self.proto = proto
        self.codec = OipGrpc(self.pipeline.settings.protocols.max_tensor_elements, proto)
        self.describer = Describer(self.pipeline)

    def handler(self) -> grpc.GenericRpcHandler:
        p = self.proto

        def unary(method: Callable[[Any, Any], Awaitable[Any]], request: Any, response: Any,
                  raw: bool = False) -> grpc.RpcMethodHandler:
            # ModelInfer takes and answers bytes: it parses the request itself (a garbled message
            # is mlgate's 400, not gRPC's INTERNAL) and the codec serialises the answer
            return grpc.unary_unary_rpc_method_handler(
                method, request_deserializer=None if raw else request.FromString,
                response_serializer=None if raw else response.SerializeToString)

        return grpc.method_handlers_generic_handler(SERVICE, {
            "ServerLive": unary(self.server_live, p.ServerLiveRequest, p.ServerLiveResponse),
            "ServerReady": unary(self.server_ready, p.ServerReadyRequest, p.ServerReadyResponse),
            "ModelReady": unary(self.model_ready, p.ModelReadyRequest, p.ModelReadyResponse),
            "ServerMetadata": unary(self.server_metadata, p.ServerMetadataRequest, p.ServerMetadataResponse),
            "ModelMetadata": unary(self.model_metadata, p.ModelMetadataRequest, p.ModelMetadataResponse),
            "ModelInfer": unary(self.model_infer, p.ModelInferRequest, p.ModelInferResponse, raw=True),
        })

    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.proto.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Ready when every configured model's champion is loaded (as ``/v2/health/ready``)."""
        ready, _ = self.pipeline.models.readiness()
        return self.proto.ServerReadyResponse(ready=ready)

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.proto.ServerMetadataResponse(name="mlgate", version=mlgate_version(), extensions=[])

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """As ``/v2/models/{name}/ready``, with the same auth; not ready is ``ready: false``."""
        headers = headers_of(context)
        try:
            principal = await self.auth.identify(headers)
            self.auth.require_predict(principal, request.name)
            ready = self.describer.ready(request.name, request.version or None, principal.trusted)
        except MlgateError as exc:
            await self._abort(context, exc, headers)
        return self.proto.ModelReadyResponse(ready=ready)

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """As ``/v2/models/{name}``, with the same auth (the caller must be allowed to predict)."""
        headers = headers_of(context)
        try:
            principal = await self.auth.identify(headers)
            self.auth.require_predict(principal, request.name)
            meta = await self.describer.model(request.name, request.version or None, principal.trusted)
        except MlgateError as exc:
            await self._abort(context, exc, headers)
        tensor = self.proto.ModelMetadataResponse.TensorMetadata
        return self.proto.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]])

    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        headers = headers_of(context)
        try:
            message = self.codec.parse(raw)
        except MlgateError as exc:
            self.pipeline.reject("", exc, started)
            metrics = self.pipeline.metrics
            metrics.child(metrics.protocol_requests, self.codec.name, exc.code).inc()
            await self._abort(context, exc, headers)

        async def body() -> bytes:
            return raw

        status, content, extra = await self.route.respond(
            message.model_name or None, headers, body, peer_host(context.peer()),
            self.codec.bind(message, self._deadline_s(context)), message.model_version or None)
        forwarded = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in extra
                          if k.decode("latin-1") in FORWARDED_HEADERS)
        if status == 200:  # as trailers: initial metadata of their own would cost the call a round of its own
            context.set_trailing_metadata(forwarded)
            return content
        error = orjson.loads(content)
        await context.abort(status_code(status), error["error"], ((CODE_METADATA, error["code"]), *forwarded))

    def _deadline_s(self, context: grpc.aio.ServicerContext) -> float | None:
        """The caller's gRPC deadline when it is sooner than the gateway's default deadline: the
        pipeline then answers (batch scores, or 504) before the caller gives up on the call."""
        remaining = context.time_remaining()
        if remaining is None or remaining * 1000 >= self.pipeline.settings.limits.deadline_ms:
            return None
        return remaining

    async def _abort(self, context: grpc.aio.ServicerContext, exc: MlgateError,
                     headers: Mapping[bytes, bytes]) -> NoReturn:
        rid = new_request_id(headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1"))
        trailing = ((CODE_METADATA, exc.code), (REQUEST_ID_HEADER, rid))
        if exc.retry_after_s is not None:
            trailing += (("retry-after", str(exc.retry_after_s)),)
        await context.abort(status_code(exc.status), exc.message, trailing)
