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
from typing import Any, Awaitable, Callable, Mapping

import orjson
from fastapi import FastAPI

from serving.errors import (InternalError, InvalidRequest, MlgateError, Overloaded, PayloadTooLarge,
                            RequestTimeout, UnsupportedMediaType)
from serving.auth.authenticator import Authenticator
from serving.auth.principal import Principal
from serving.auth.quota import Limiter
from serving.http.errors import REQUEST_ID_HEADER, is_json_media, new_request_id, render_error
from serving.pipeline import Pipeline, RouteHints

# Set by an authorised caller to force a variant (testing); always set on responses.
VARIANT_HEADER = "x-mlgate-variant"
PREFIX, SUFFIX = "/v1/models/", "/predict"

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")


class ClientGone(Exception):
    """The caller disconnected before its body arrived: nobody is left to answer."""


class PredictRoute:
    def __init__(self, pipeline: Pipeline, auth: Authenticator, limiter: Limiter | None = None,
                 echo_request_id: bool = True) -> None:
        self.pipeline = pipeline
        self.limit = pipeline.settings.http.max_body_bytes
        self.max_in_flight = pipeline.settings.http.max_in_flight
        self.in_flight = 0
        self.auth = auth
        self.limiter = limiter
        self.body_timeout_s = pipeline.settings.http.body_timeout_s
        self.max_buffered = pipeline.settings.http.max_body_buffer_bytes
        self.buffered = 0  # bytes held by bodies still arriving in pieces (read_body)
        self.echo_request_id = echo_request_id

    @staticmethod
    def model_of(scope: Mapping[str, Any]) -> str | None:
        """The model name when ``scope`` is a predict call, else None."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
            return None
        name = path[len(PREFIX):-len(SUFFIX)]
        return name if name and "/" not in name else None

    async def __call__(self, name: str, scope: Mapping[str, Any], receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        headers = dict(scope["headers"])

        async def body() -> bytes:
            return await self.read_body(headers, receive)

        client = scope.get("client")
        try:
            status, content, extra = await self.respond(name, headers, body, client[0] if client else None)
        except ClientGone:
            return
        await send({"type": "http.response.start", "status": status,
                    "headers": [_JSON, (b"content-length", str(len(content)).encode()), *extra]})
        await send({"type": "http.response.body", "body": content})

    async def respond(self, name: str, headers: Mapping[bytes, bytes], body: Callable[[], Awaitable[bytes]],
                      client_host: str | None) -> tuple[int, bytes, Headers]:
        """Status, JSON body and extra headers of one predict call (errors included).

        Admission before the body is read: the caller's credential (401), its scope for the model
        (403) and its quota (429). The in-flight slot is taken once the body is in: a caller
        still sending holds none."""
        started = time.perf_counter()
        rid = new_request_id(headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1"))
        extra: Headers = [(REQUEST_ID_HEADER.encode(), rid.encode())] if self.echo_request_id else []
        try:
            principal = await self.auth.identify(headers)
            self.auth.require_predict(principal, name)
            if self.limiter is not None:
                await self.limiter.admit(principal, name, client_host)
            raw = await body()
        except MlgateError as exc:
            self.pipeline.reject(name, exc, started)
            return self._error(exc, rid, extra)
        if self.in_flight >= self.max_in_flight:
            refused = Overloaded()
            self.pipeline.reject(name, refused, started)
            return self._error(refused, rid, extra)
        self.in_flight += 1
        try:
            return await self._respond(name, headers, raw, principal, client_host, rid, extra)
        finally:
            self.in_flight -= 1

    async def _respond(self, name: str, headers: Mapping[bytes, bytes], raw: bytes, principal: Principal,
                       client_host: str | None, rid: str, extra: Headers) -> tuple[int, bytes, Headers]:
        try:
            result = await self.pipeline.predict(name, raw, rid, self._hints(name, headers, principal, client_host))
        except MlgateError as exc:
            return self._error(exc, rid, extra)
        except Exception:
            log.exception("predict route failed", extra={"request_id": rid, "model": name})
            return self._error(InternalError(), rid, extra)
        if not principal.trusted:  # which variant answered is what steering traffic needs
            return 200, orjson.dumps(undisclosed(result)), extra
        extra += [(b"x-model-version", result["version"].encode()), (VARIANT_HEADER.encode(), result["variant"].encode())]
        return 200, orjson.dumps(result), extra

    @staticmethod
    def _error(exc: MlgateError, rid: str, extra: Headers) -> tuple[int, bytes, Headers]:
        status, body, headers = render_error(exc, rid)
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

    async def read_body(self, headers: Mapping[bytes, bytes], receive: Callable[[], Awaitable[dict]]) -> bytes:
        """The body, refusing non-JSON media types and bodies over the limit (declared or sent)."""
        if not is_json_media(headers.get(b"content-type")):
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
        name = route.model_of(scope) if route is not None else None
        if name is None:
            await super().__call__(scope, receive, send)
            return
        if "app" not in scope:
            scope["app"] = self
        await route(name, scope, receive, send)
