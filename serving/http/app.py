"""The FastAPI application factory: routes that adapt HTTP to the pipeline, nothing more."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from starlette.responses import Response

from serving import schemas
from serving.errors import (
    InvalidRequest,
    MlgateError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from serving.http.errors import (
    REQUEST_ID_HEADER,
    install_error_handlers,
    json_response,
    request_id,
)
from serving.http.admin import admin_router, authorize
from serving.pipeline import Pipeline, RouteHints

# Set by an authorised caller to force a variant (testing); always set on responses.
VARIANT_HEADER = "x-mlgate-variant"

_ERRORS = {status: {"model": schemas.ErrorResponse, "description": text} for status, text in {
    400: "Malformed JSON, wrong types, unknown features, NaN/Infinity",
    401: "X-Mlgate-Variant without a valid bearer token",
    403: "X-Mlgate-Variant from a non-loopback caller when no admin token is configured",
    404: "Unknown model, or unknown forced variant",
    413: "Body too large or too many instances",
    415: "Content-Type is not JSON",
    422: "Required features missing, or stored features missing/stale under an 'error' policy",
    503: "Model not loaded yet, or the online feature store is down (see Retry-After)",
    504: "Deadline exceeded",
}.items()}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing non-JSON media types and bodies over ``limit`` bytes."""
    ctype = request.headers.get("content-type")
    if ctype is not None:
        media = ctype.split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaType()
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body of {declared} bytes exceeds the {limit}-byte limit")
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked upload: count as it arrives
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(pipeline: Pipeline, echo_request_id: bool = True) -> FastAPI:
    """The HTTP API over ``pipeline``. Pass ``echo_request_id=False`` behind a server that already
    returns X-Request-ID (Ray Serve does), so the header is not sent twice."""
    settings, models = pipeline.settings, pipeline.models
    app = FastAPI(title="mlgate", version="1", description="Online inference gateway: "
                  "MLflow-registered models, served over HTTP.")
    install_error_handlers(app, echo_request_id)
    limit = settings.http.max_body_bytes

    @app.post("/v1/models/{name}/predict", response_model=schemas.PredictResponse,
              responses=_ERRORS, openapi_extra={"requestBody": {
                  "required": True, "content": {"application/json": {
                      "schema": {"$ref": "#/components/schemas/PredictRequest"}}}}})
    async def predict(name: str, request: Request) -> Response:
        """Score rows of named features with the model's current version."""
        started = time.perf_counter()
        rid = request_id(request)
        try:
            body = await read_body(request, limit)
        except MlgateError as exc:
            pipeline.reject(name, exc, started)
            raise
        result = await pipeline.predict(name, body, rid, route_hints(request, name))
        headers = {"x-model-version": result["version"], VARIANT_HEADER: result["variant"]}
        if echo_request_id:
            headers[REQUEST_ID_HEADER] = rid
        return json_response(result, headers=headers)

    def route_hints(request: Request, name: str) -> RouteHints:
        forced = request.headers.get(VARIANT_HEADER)
        if forced:
            authorize(request, settings.admin)
        return RouteHints(request.headers.get(pipeline.rollouts.key_header(name)), forced or None)

    @app.get("/v1/models", response_model=schemas.ModelList)
    async def list_models() -> Response:
        """Every configured model and whether it is serving."""
        return json_response({"models": [_summary(models.state(n)) for n in models.names()]})

    @app.get("/v1/models/{name}", response_model=schemas.ModelDetail, responses={404: _ERRORS[404]})
    async def describe_model(name: str) -> Response:
        """Version, alias, signature and a ready-to-send example request."""
        state = models.state(name)
        detail = _summary(state)
        if state.backend is not None:
            spec = state.backend.spec
            detail.update(
                uri=spec.uri, flavor=spec.flavor, outputs=list(spec.outputs),
                inputs=[{"name": f.name, "type": f.dtype, "required": f.required} for f in spec.inputs],
                feature_views=sorted(pipeline.binding(spec).by_view),
                example_request=await pipeline.example_request(spec))
        return json_response(detail)

    @app.get("/healthz", response_model=schemas.Health)
    async def healthz() -> Response:
        """Liveness: the process answers."""
        return json_response({"status": "ok"})

    @app.get("/readyz", response_model=schemas.Health, responses={503: {"model": schemas.Health}})
    async def readyz() -> Response:
        """Readiness: 200 only when every configured model has a validated version loaded."""
        status = {n: models.state(n).backend is not None for n in models.names()}
        ready = all(status.values())
        return json_response({"status": "ok" if ready else "not_ready", "models": status},
                             200 if ready else 503)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        """Prometheus metrics of this gateway process."""
        return Response(pipeline.metrics.render(), media_type=pipeline.metrics.content_type)

    app.include_router(admin_router(pipeline.rollouts, settings.admin))
    _document_request_body(app)
    return app


def _summary(state) -> dict:
    backend = state.backend
    return {"name": state.settings.name, "ready": backend is not None,
            "version": backend.spec.version if backend else None,
            "alias": backend.spec.alias if backend else state.settings.alias,
            "error": state.error}


def _document_request_body(app: FastAPI) -> None:
    """Put PredictRequest into the schema: the route reads raw bytes for speed and exact errors."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            extra = schemas.PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(extra.pop("$defs", {}))
            components["PredictRequest"] = extra
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
