"""``POST /v1/models/{name}/predict`` as a bare ASGI handler, in front of FastAPI.

The predict route reads raw bytes and answers raw bytes (the pipeline owns parsing and
validation), so FastAPI's routing, dependency solving, Request objects and middleware layers only
cost time there: a py-spy profile of the gateway at 32 concurrent requests put ~17% of its CPU in
FastAPI and Starlette (loadtests/RESULTS.md). :class:`GatewayApp` answers that one route here and
hands every other request to FastAPI, which still declares the route for the OpenAPI schema and
serves it through the same :meth:`PredictRoute.respond` when called directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Mapping, NamedTuple

import orjson
from fastapi import FastAPI

from serving.errors import (InternalError, InvalidRequest, MlgateError, ModelNotFound, Overloaded, PayloadTooLarge,
                            RequestTimeout, UnsupportedMediaType)
from serving.auth.authenticator import Authenticator
from serving.auth.principal import Principal
from serving.auth.quota import Limiter
from serving.codec import is_json_media
from serving.http.errors import REQUEST_ID_HEADER, new_request_id, render_error
from serving.pipeline import Pipeline, RouteHints
from serving.protocols.base import ModelInputs, ProtocolCodec, pinned_variant
from serving.protocols.invocations import KServeV1, MlflowInvocations
from serving.protocols.oip import OipRest

# Set by an authorised caller to force a variant (testing); always set on responses.
VARIANT_HEADER = "x-mlgate-variant"
PREFIX, SUFFIX = "/v1/models/", "/predict"

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")


class ClientGone(Exception):
    """The caller disconnected before its body arrived: nobody is left to answer."""


class Call(NamedTuple):
    """A predict call the fast path answers: the model (None: the default model), the protocol
    codec (None: mlgate's own) and a version the path names."""

    name: str | None
    codec: ProtocolCodec | None = None
    version: str | None = None


class PredictRoute:
    def __init__(self, pipeline: Pipeline, auth: Authenticator, limiter: Limiter | None = None,
                 echo_request_id: bool = True) -> None:
        self.pipeline = pipeline
        self.oip = OipRest(pipeline.settings.protocols.max_tensor_elements)
        self.mlflow, self.databricks, self.kserve = MlflowInvocations(), MlflowInvocations("databricks"), KServeV1()
        self.limit = pipeline.settings.http.max_body_bytes
        self.max_in_flight = pipeline.settings.http.max_in_flight
        self.in_flight = 0
        self.auth = auth
        self.limiter = limiter
        self.body_timeout_s = pipeline.settings.http.body_timeout_s
        self.max_buffered = pipeline.settings.http.max_body_buffer_bytes
        self.buffered = 0  # bytes held by bodies still arriving in pieces (read_body)
        self.echo_request_id = echo_request_id

    def match(self, scope: Mapping[str, Any]) -> Call | None:
        """The call when ``scope`` is a predict call of any protocol, else None."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if path.startswith(PREFIX):
            rest = path[len(PREFIX):]
            for suffix, codec in ((SUFFIX, None), ("/invocations", self.mlflow), (":predict", self.kserve)):
                if rest.endswith(suffix):
                    name = rest[:-len(suffix)]
                    return Call(name, codec) if name and "/" not in name and ":" not in name else None
            return None
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            parts = path[len("/v2/models/"):-len("/infer")].split("/")
            if len(parts) == 1 and parts[0]:
                return Call(parts[0], self.oip)
            if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
                return Call(parts[0], self.oip, parts[2])
            return None
        if path == "/invocations":
            return Call(None, self.mlflow)
        if path.startswith("/serving-endpoints/") and path.endswith("/invocations"):
            name = path[len("/serving-endpoints/"):-len("/invocations")]
            return Call(name, self.databricks) if name and "/" not in name else None
        return None

    def default_model(self) -> str:
        """The model ``/invocations`` answers for: ``protocols.default_model``, else the only one."""
        name = self.pipeline.settings.protocols.default_model
        if name is not None:
            return name
        names = self.pipeline.models.names()
        if len(names) == 1:
            return names[0]
        raise ModelNotFound.no_default()

    async def __call__(self, call: Call, scope: Mapping[str, Any], receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        headers = dict(scope["headers"])

        async def body() -> bytes:
            return await self.read_body(headers, receive, call.codec)

        client = scope.get("client")
        try:
            status, content, extra = await self.respond(call.name, headers, body, client[0] if client else None,
                                                        call.codec, call.version)
        except ClientGone:
            return
        typed = extra if call.codec is not None else [_JSON, *extra]  # a codec names its content type
        await send({"type": "http.response.start", "status": status,
                    "headers": [*typed, (b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})

    async def respond(self, name: str | None, headers: Mapping[bytes, bytes], body: Callable[[], Awaitable[bytes]],
                      client_host: str | None, codec: ProtocolCodec | None = None,
                      version: str | None = None) -> tuple[int, bytes, Headers]:
        """Status, JSON body and extra headers of one predict call (errors included).

        Admission before the body is read: the caller's credential (401), its scope for the model
        (403) and its quota (429). The in-flight slot is taken once the body is in: a caller
        still sending holds none."""
        started = time.perf_counter()
        rid = new_request_id(headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1"))
        extra: Headers = [(REQUEST_ID_HEADER.encode(), rid.encode())] if self.echo_request_id else []
        try:
            if name is None:
                name = self.default_model()
            principal = await self.auth.identify(headers)
            self.auth.require_predict(principal, name)
            if self.limiter is not None:
                await self.limiter.admit(principal, name, client_host)
            raw = await body()
        except MlgateError as exc:
            self.pipeline.reject(name or "", exc, started)
            self._count(codec, exc.code)
            return self._error(exc, rid, extra, codec)
        if self.in_flight >= self.max_in_flight:
            refused = Overloaded()
            self.pipeline.reject(name, refused, started)
            return self._error(refused, rid, extra, codec)
        self.in_flight += 1
        try:
            if codec is None:
                return await self._respond(name, headers, raw, principal, client_host, rid, extra)
            return await self._respond_in(codec, name, version, headers, raw, principal, client_host, rid,
                                          extra, started)
        finally:
            self.in_flight -= 1

    async def _respond(self, name: str, headers: Mapping[bytes, bytes], raw: bytes, principal: Principal,
                       client_host: str | None, rid: str, extra: Headers) -> tuple[int, bytes, Headers]:
        try:
            result = await self.pipeline.predict(name, raw, rid, self._hints(name, headers, principal, client_host),
                                                 client=principal.id)
        except MlgateError as exc:
            self._count(None, exc.code)
            return self._error(exc, rid, extra)
        except Exception:
            log.exception("predict route failed", extra={"request_id": rid, "model": name})
            self._count(None, InternalError.code)
            return self._error(InternalError(), rid, extra)
        self._count(None, "ok")
        if not principal.trusted:  # which variant answered is what steering traffic needs
            return 200, orjson.dumps(undisclosed(result)), extra
        extra += [(b"x-model-version", result["version"].encode()), (VARIANT_HEADER.encode(), result["variant"].encode())]
        return 200, orjson.dumps(result), extra

    async def _respond_in(self, codec: ProtocolCodec, name: str, version: str | None, headers: Mapping[bytes, bytes],
                          raw: bytes, principal: Principal, client_host: str | None, rid: str, extra: Headers,
                          started: float) -> tuple[int, bytes, Headers]:
        """One call of another protocol: its codec decodes the body into the pipeline's payload
        and encodes the answer; routing, features, fallbacks and metrics are the pipeline's."""
        outcome = "ok"
        try:
            try:
                keys, request = self.pipeline.inputs_of(name)
                decoded = codec.decode(raw, headers, ModelInputs(keys, request), self.pipeline.settings.limits.max_instances)
                hints = self._hints(name, headers, principal, client_host)
                if version is not None:
                    hints = RouteHints(hints.key, pinned_variant(self.pipeline.models, name, version, principal.trusted))
            except MlgateError as exc:
                self.pipeline.reject(name, exc, started)
                raise
            result = await self.pipeline.predict(name, b"", rid, hints, payload=decoded.payload, client=principal.id)
            content, typed = codec.encode(result, decoded, principal.trusted)
        except MlgateError as exc:
            outcome = exc.code
            return self._error(exc, rid, extra, codec)
        except Exception:
            log.exception("%s call failed", codec.name, extra={"request_id": rid, "model": name})
            outcome = InternalError.code
            return self._error(InternalError(), rid, extra, codec)
        finally:
            self._count(codec, outcome)
        if principal.trusted:
            extra += [(b"x-model-version", result["version"].encode()), (VARIANT_HEADER.encode(), result["variant"].encode())]
        return 200, content, [*typed, *extra]

    def _count(self, codec: ProtocolCodec | None, outcome: str) -> None:
        metrics = self.pipeline.metrics
        metrics.child(metrics.protocol_requests, codec.name if codec is not None else "mlgate", outcome).inc()

    @staticmethod
    def _error(exc: MlgateError, rid: str, extra: Headers, codec: ProtocolCodec | None = None
               ) -> tuple[int, bytes, Headers]:
        status, body, headers = render_error(exc, rid)
        if codec is not None:  # the protocol's error shape, with the same status, code and headers
            body = codec.error(exc, rid)
            extra = [(b"content-type", b"application/json"), *extra]
        extra = extra + [(k.encode(), v.encode()) for k, v in headers.items()]
        if isinstance(exc, RequestTimeout):  # the rest of the body may still come: drop the connection
            extra.append(_CLOSE)
        return status, body, extra

    def _hints(self, name: str, headers: Mapping[bytes, bytes], principal: Principal,
               client_host: str | None) -> RouteHints:
        """Routing asked for by the caller: a forced variant (admins only) and a routing key
        (callers with the ``route`` scope; others are routed by their entity key)."""
        forced = headers.get(VARIANT_HEADER.encode(), b"").decode("latin-1")
        if forced:
            self.auth.require_admin(principal, headers, client_host)
        if not principal.trusted:
            return RouteHints(None, forced or None)
        key = headers.get(self.pipeline.rollouts.key_header(name).lower().encode())
        return RouteHints(key.decode("latin-1") if key is not None else None, forced or None)

    async def read_body(self, headers: Mapping[bytes, bytes], receive: Callable[[], Awaitable[dict]],
                        codec: ProtocolCodec | None = None) -> bytes:
        """The body, refusing media types the protocol does not read (mlgate's own: JSON) and
        bodies over the limit (declared or sent)."""
        if not (codec.accepts(headers) if codec is not None else is_json_media(headers.get(b"content-type"))):
            raise UnsupportedMediaType()
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                raise InvalidRequest("invalid Content-Length header")
            if int(declared) > self.limit:
                raise PayloadTooLarge(f"body of {declared.decode()} bytes exceeds the {self.limit}-byte limit")
        try:
            async with asyncio.timeout(self.body_timeout_s):
                return await self._receive(receive)
        except TimeoutError:
            raise RequestTimeout(f"the body was not received within {self.body_timeout_s:g} s") from None

    async def _receive(self, receive: Callable[[], Awaitable[dict]]) -> bytes:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if len(chunk) > self.limit:
            raise PayloadTooLarge(f"body exceeds the {self.limit}-byte limit")
        if not message.get("more_body", False):  # the usual case: the whole body in one message
            return chunk
        chunks, size = [chunk], len(chunk)
        self.buffered += size
        try:  # a body in pieces is held across awaits: it counts against the replica's budget
            while True:
                if self.buffered > self.max_buffered:
                    raise Overloaded("too many request bodies are arriving at once; retry shortly")
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                self.buffered += len(chunk)
                if size > self.limit:  # chunked upload, or more bytes than declared: count as it arrives
                    raise PayloadTooLarge(f"body exceeds the {self.limit}-byte limit")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        finally:
            self.buffered -= size


def undisclosed(result: dict[str, Any]) -> dict[str, Any]:
    """A predict answer without what tells variants apart (variant, alias, versions)."""
    answer = {k: v for k, v in result.items() if k not in ("version", "variant", "alias")}
    answer["predictions"] = [{k: v for k, v in p.items() if k != "model_version"} for p in result["predictions"]]
    return answer


class GatewayApp(FastAPI):
    """FastAPI with the predict route answered before FastAPI's own machinery (see module doc)."""

    predict_route: PredictRoute | None = None

    async def __call__(self, scope, receive, send) -> None:
        route = self.predict_route
        call = route.match(scope) if route is not None else None
        if call is None:
            await super().__call__(scope, receive, send)
            return
        if "app" not in scope:
            scope["app"] = self
        await route(call, scope, receive, send)
