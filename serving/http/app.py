"""The FastAPI application factory: routes that adapt HTTP to the pipeline, nothing more."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from starlette.responses import Response

from serving import schemas
from serving.auth.authenticator import Authenticator
from serving.auth.principal import Principal
from serving.auth.quota import Limiter
from serving.drift_status import read_async
from serving.errors import Unauthorized
from serving.http.admin import AdminChange, AdminGuard, admin_router
from serving.http.errors import install_error_handlers, json_response
from serving.http.feedback import feedback_router
from serving.http.openapi import PREDICT_PARAMETERS, PREDICT_RESPONSES, errors, install_openapi
from serving.http.predict_route import GatewayApp, PredictRoute
from serving.http.protocol_routes import protocol_router
from serving.lineage import LineageCache
from serving.pipeline import Pipeline
from serving.settings import Settings

log = logging.getLogger(__name__)


def build_app(pipeline: Pipeline, echo_request_id: bool = True,
              on_admin_change: AdminChange | None = None, limiter: Limiter | None = None,
              admin_api: bool = True, host: str | None = None, lineage: LineageCache | None = None) -> FastAPI:
    """The HTTP API over ``pipeline``. Pass ``echo_request_id=False`` behind a server that already
    returns X-Request-ID (Ray Serve does), so the header is not sent twice; ``on_admin_change``
    records each admin change on its model version (the registry); ``limiter`` enforces
    request quotas (none: no quotas); ``admin_api=False`` leaves the admin API out (it has a
    port of its own); ``host``: the address this app is served on (default ``http.host``);
    ``lineage``: where ``GET /v1/models/{name}`` finds each serving version's lineage (none: null)."""
    settings, models = pipeline.settings, pipeline.models
    auth = authenticator(settings, host)
    app = GatewayApp(title="mlgate", version="1", description="Online inference gateway: "
                     "MLflow-registered models, served over HTTP. Every error answers with an "
                     "ErrorResponse body; a method a path does not list answers 405 with Allow.")
    route = app.predict_route = PredictRoute(pipeline, auth, limiter, echo_request_id)
    install_error_handlers(app, echo_request_id)

    @app.post("/v1/models/{name}/predict", response_model=schemas.PredictResponse,
              responses=PREDICT_RESPONSES, openapi_extra={"parameters": PREDICT_PARAMETERS, "requestBody": {
                  "required": True, "content": {"application/json": {
                      "schema": {"$ref": "#/components/schemas/PredictRequest"}}}}})
    async def predict(name: str, request: Request) -> Response:
        """Score rows of named features with the model's current version."""
        # Served by GatewayApp's fast path; reached only when this router is called directly.
        headers = dict(request.scope["headers"])
        status, content, extra = await route.respond(
            name, headers, lambda: route.read_body(headers, request.receive),
            request.client.host if request.client else None)
        return Response(content, status, {k.decode(): v.decode() for k, v in extra},
                        media_type="application/json")

    async def caller(request: Request) -> Principal:
        return await auth.identify(dict(request.scope["headers"]))

    @app.get("/v1/models", response_model=schemas.ModelList, responses=errors(401))
    async def list_models(request: Request) -> Response:
        """The models this caller may call, and whether each is serving."""
        principal = await caller(request)
        names = [n for n in models.names() if principal.may_predict(n)]
        if not names and principal.anonymous and auth.credentials_exist:
            raise Unauthorized()
        return json_response({"models": [_summary(models.state(n)) for n in names]})

    @app.get("/v1/models/{name}", response_model=schemas.ModelDetail, responses=errors(401, 403, 404))
    async def describe_model(name: str, request: Request) -> Response:
        """Version, alias, signature and a ready-to-send example request; for callers with the
        route or admin scope, each serving variant's lineage and the model's latest drift status."""
        principal = await caller(request)
        auth.require_predict(principal, name)
        state = models.state(name)
        detail = _summary(state)
        if state.backend is not None:
            spec = state.backend.spec
            detail.update(
                uri=spec.uri, flavor=spec.flavor, outputs=list(spec.outputs),
                inputs=[{"name": f.name, "type": f.dtype, "required": f.required} for f in spec.inputs],
                feature_views=sorted(pipeline.binding(spec).by_view),
                example_request=await pipeline.example_request(spec))
        if principal.trusted:  # versions are what steering traffic needs (see predict's `undisclosed`)
            detail.update(variants=await _variants(models.variants(name), lineage),
                          drift=await _drift(pipeline, name))
        return json_response(detail)

    @app.get("/healthz", response_model=schemas.Health)
    async def healthz() -> Response:
        """Liveness: the process answers."""
        return json_response({"status": "ok"})

    @app.get("/readyz", response_model=schemas.Health, responses={503: {"model": schemas.Health}})
    async def readyz() -> Response:
        """Readiness: 200 only when every configured model has a validated version loaded."""
        ready, status = models.readiness()
        return json_response({"status": "ok" if ready else "not_ready", "models": status},
                             200 if ready else 503)

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}}, **errors(401, 403)})
    async def metrics(request: Request) -> Response:
        """Prometheus metrics: of every replica on this node when they share a port, else of this
        one (the ``metrics`` scope)."""
        auth.require(await caller(request), "metrics")
        return Response(pipeline.metrics.render(), media_type=pipeline.metrics.content_type)

    app.include_router(protocol_router(route, auth))
    app.include_router(feedback_router(route, auth))
    if admin_api:
        app.include_router(admin_router(pipeline.rollouts, AdminGuard(auth), on_admin_change))
    install_openapi(app, settings)
    return app


def authenticator(settings: Settings, host: str | None = None) -> Authenticator:
    """The gateway's authenticator, from its settings, for an app served on ``host``."""
    token = settings.admin.token.get_secret_value() if settings.admin.token is not None else None
    return Authenticator(settings.auth, token, host or settings.http.host, settings.http.ingress,
                         settings.admin.allowed_hosts)


async def _variants(variants: dict, lineage: LineageCache | None) -> list[dict]:
    out = []
    for name, variant in variants.items():
        backend = variant.backend  # one read: a swap may replace it meanwhile
        if backend is None:
            continue
        spec = backend.spec
        found = await lineage.get(variant.model, spec.version) if lineage is not None else None
        out.append({"variant": name, "version": spec.version, "alias": spec.alias, **(found or {})})
    return out


async def _drift(pipeline: Pipeline, name: str) -> dict | None:
    if pipeline.store is None:
        return None
    try:
        return await read_async(pipeline.store.client, pipeline.settings.redis.prefix, name)
    except Exception:  # Redis down: describe without it
        log.warning("drift status of %s unavailable", name, exc_info=True)
        return None


def _summary(state) -> dict:
    backend = state.backend
    return {"name": state.settings.name, "ready": backend is not None,
            "version": backend.spec.version if backend else None,
            "alias": backend.spec.alias if backend else state.settings.alias,
            "error": state.error}

