"""Maps the error taxonomy onto HTTP responses, and framework errors onto the taxonomy."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Iterable

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import compile_path

from serving.errors import (
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    MlgateError,
    RouteNotFound,
)

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_request_id(given: str | None) -> str:
    """The caller's X-Request-ID when it is safe to echo, else a new one."""
    return given if given and SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex


def request_id(request: Request) -> str:
    """:func:`new_request_id` of a FastAPI request, stable for the request's life."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = new_request_id(request.headers.get(REQUEST_ID_HEADER))
    return rid


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


def render_error(error: MlgateError, rid: str) -> tuple[int, bytes, dict[str, str]]:
    """The one mapping of an error onto HTTP, for the bare predict route and FastAPI alike: its
    status, the JSON body and the headers it adds (``Retry-After`` for the retryable 503s)."""
    # Messages are written to be shown (InternalError's is fixed): never str() of a cause.
    body = orjson.dumps({"error": {"code": error.code, "message": error.message, "request_id": rid,
                                   "retryable": error.retryable}})
    headers = {"retry-after": str(error.retry_after_s)} if error.retry_after_s is not None else {}
    if error.status == 401:  # RFC 6750: how to authenticate
        headers["www-authenticate"] = 'Bearer realm="mlgate"'
    return error.status, body, headers


def allowed_methods(routes: Iterable[tuple[re.Pattern, set[str], int]], scope: dict,
                    given: str | None) -> str:
    """The ``Allow`` header of a 405: every method of the requested path. Starlette's own header
    (``given``) names only the methods of the first route on the path, and this API declares one
    route per method; ``routes`` (:func:`documented_routes`) add the others. Where several
    documented paths match (``/v1/models/{name}`` and ``/v1/models/{name}:predict``), the most
    specific one's methods are the path's."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    matched = [(literal, verbs) for pattern, verbs, literal in routes if pattern.match(path)]
    if not matched:
        return ", ".join(sorted({m.strip() for m in (given or "").split(",") if m.strip()}))
    best = max(literal for literal, _ in matched)
    return ", ".join(sorted(set().union(*(verbs for literal, verbs in matched if literal == best))))


def documented_routes(app: FastAPI) -> list[tuple[re.Pattern, set[str], int]]:
    """Each path of the OpenAPI document as a pattern, with its methods and how many of its
    characters are literal (not parameters): the more, the more specific."""
    return [(compile_path(path)[0], {method.upper() for method in operations}, len(re.sub(r"\{[^}]*\}", "", path)))
            for path, operations in app.openapi()["paths"].items()]


def error_response(error: MlgateError, rid: str, echo_request_id: bool = True,
                   headers: dict[str, str] | None = None) -> Response:
    status, body, extra = render_error(error, rid)
    headers = {**extra, **(headers or {})}
    if echo_request_id:
        headers[REQUEST_ID_HEADER] = rid
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def install_error_handlers(app: FastAPI, echo_request_id: bool = True) -> None:
    """``echo_request_id=False`` when a middleware in front (Ray Serve's) already sets the header."""

    routes: list[tuple[re.Pattern, set[str], int]] = []

    def respond(error: MlgateError, request: Request, headers: dict[str, str] | None = None) -> Response:
        return error_response(error, request_id(request), echo_request_id, headers)

    async def on_mlgate_error(request: Request, exc: MlgateError) -> Response:
        return respond(exc, request)

    async def on_http_exception(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            error: MlgateError = RouteNotFound()
        elif exc.status_code == 405:
            if not routes:  # built on the first 405, from the document built once
                routes.extend(documented_routes(app))
            allow = allowed_methods(routes, request.scope, (exc.headers or {}).get("Allow"))
            return respond(MethodNotAllowed(), request, {"allow": allow})
        elif exc.status_code < 500:
            error = InvalidRequest()
            error.status = exc.status_code
        else:
            error = InternalError()
        return respond(error, request)

    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return respond(InvalidRequest(f"{where}: {first.get('msg', 'invalid')}"), request)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"request_id": request_id(request)})
        return respond(InternalError(), request)

    app.add_exception_handler(MlgateError, on_mlgate_error)
    app.add_exception_handler(HTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
