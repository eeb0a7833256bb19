"""The routes of the other protocols: Open Inference Protocol v2 (health, metadata, infer), MLflow's
scoring server (``/invocations``, ``/ping``, ``/health``, ``/version``), Databricks serving
endpoints and KServe v1 ``:predict``.

Their predict calls are answered by :class:`~serving.http.predict_route.PredictRoute`'s fast
path; the POST routes here declare them for the OpenAPI document and serve them the same way
when FastAPI is called directly. Errors answer in each protocol's own shape.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import orjson
from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from serving import schemas
from serving.auth.authenticator import Authenticator
from serving.errors import MlgateError
from serving.http.errors import render_error, request_id
from serving.http.openapi import errors
from serving.http.predict_route import PredictRoute
from serving.protocols.base import ProtocolCodec
from serving.protocols.metadata import Describer, mlgate_version

OIP_EXTENSIONS = ["binary_tensor_data"]
_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
_V1_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}
_CSV_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object"}}, "text/csv": {"schema": {"type": "string"}}}}}
_STATUSES = (400, 401, 403, 404, 408, 413, 415, 422, 429, 500, 503, 504)
_OIP_ERRORS = errors(*_STATUSES, model=schemas.ProtocolErrorResponse)
_MLFLOW_ERRORS = errors(*_STATUSES, model=schemas.MlflowErrorResponse)
_OIP_META_ERRORS = errors(401, 403, 404, 503, model=schemas.ProtocolErrorResponse)
_OIP_READY = {**errors(401, 403, 404, model=schemas.ProtocolErrorResponse),
              503: {"description": "Not loaded: the body says ready false"}}


def protocol_router(route: PredictRoute, auth: Authenticator) -> APIRouter:
    router = APIRouter()
    pipeline = route.pipeline
    describer = Describer(pipeline)

    async def answer(request: Request, codec: ProtocolCodec, name: str | None, version: str | None = None) -> Response:
        headers = dict(request.scope["headers"])
        status, content, extra = await route.respond(
            name, headers, lambda: route.read_body(headers, request.receive, codec),
            request.client.host if request.client else None, codec, version)
        return Response(content, status, {k.decode(): v.decode() for k, v in extra})

    async def oip(request: Request, work: Callable[[], Awaitable[Response]]) -> Response:
        """``work``'s response, or its error in the protocol's shape."""
        try:
            return await work()
        except MlgateError as exc:
            status, _, headers = render_error(exc, request_id(request))
            return Response(route.oip.error(exc, request_id(request)), status, headers, media_type="application/json")

    def json(body: object, status: int = 200) -> Response:
        return Response(orjson.dumps(body), status, media_type="application/json")

    @router.get("/v2", tags=["v2"])
    async def server_metadata() -> Response:
        """Open Inference Protocol v2: the server's name, version and extensions."""
        return json({"name": "mlgate", "version": mlgate_version(), "extensions": OIP_EXTENSIONS})

    @router.get("/v2/health/live", tags=["v2"])
    async def live() -> Response:
        return json({"live": True})

    @router.get("/v2/health/ready", tags=["v2"], responses={503: {"description": "Not every model is loaded"}})
    async def ready() -> Response:
        """Ready when every configured model's champion is loaded (as /readyz)."""
        is_ready, _ = pipeline.models.readiness()
        return json({"ready": is_ready}, 200 if is_ready else 503)

    async def metadata(request: Request, name: str, version: str | None) -> Response:
        async def work() -> Response:
            principal = await auth.identify(dict(request.scope["headers"]))
            auth.require_predict(principal, name)
            return json(await describer.model(name, version, principal.trusted))
        return await oip(request, work)

    async def model_ready(request: Request, name: str, version: str | None) -> Response:
        async def work() -> Response:
            principal = await auth.identify(dict(request.scope["headers"]))
            auth.require_predict(principal, name)
            is_ready = describer.ready(name, version, principal.trusted)
            return json({"name": name, "ready": is_ready}, 200 if is_ready else 503)
        return await oip(request, work)

    @router.get("/v2/models/{name}", tags=["v2"], responses=_OIP_META_ERRORS)
    async def model_metadata(name: str, request: Request) -> Response:
        """Inputs (the entity keys and request-time inputs) and outputs, with datatype and shape."""
        return await metadata(request, name, None)

    @router.get("/v2/models/{name}/versions/{version}", tags=["v2"], responses=_OIP_META_ERRORS)
    async def version_metadata(name: str, version: str, request: Request) -> Response:
        return await metadata(request, name, version)

    @router.get("/v2/models/{name}/ready", tags=["v2"], responses=_OIP_READY)
    async def is_model_ready(name: str, request: Request) -> Response:
        return await model_ready(request, name, None)

    @router.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"], responses=_OIP_READY)
    async def is_version_ready(name: str, version: str, request: Request) -> Response:
        return await model_ready(request, name, version)

    @router.post("/v2/models/{name}/infer", tags=["v2"], responses=_OIP_ERRORS, openapi_extra=_BODY)
    async def infer(name: str, request: Request) -> Response:
        """OIP v2 inference: one tensor per input column (or one 2-D tensor), JSON or binary."""
        return await answer(request, route.oip, name)

    @router.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], responses=_OIP_ERRORS,
                 openapi_extra=_BODY)
    async def infer_version(name: str, version: str, request: Request) -> Response:
        return await answer(request, route.oip, name, version)

    @router.post("/v1/models/{name}/invocations", tags=["mlflow"], responses=_MLFLOW_ERRORS,
                 openapi_extra=_CSV_BODY)
    async def invocations(name: str, request: Request) -> Response:
        """MLflow's scoring protocol: dataframe_split, dataframe_records, instances, inputs or CSV."""
        return await answer(request, route.mlflow, name)

    @router.post("/invocations", tags=["mlflow"], responses=_MLFLOW_ERRORS, openapi_extra=_CSV_BODY)
    async def default_invocations(request: Request) -> Response:
        """MLflow's scoring protocol for the default model (protocols.default_model)."""
        return await answer(request, route.mlflow, None)

    @router.post("/serving-endpoints/{name}/invocations", tags=["databricks"], responses=_MLFLOW_ERRORS,
                 openapi_extra=_CSV_BODY)
    async def serving_endpoint(name: str, request: Request) -> Response:
        """Databricks Model Serving's path, with MLflow's payloads."""
        return await answer(request, route.databricks, name)

    @router.post("/v1/models/{name}:predict", tags=["kserve-v1"], responses=_OIP_ERRORS,
                 openapi_extra=_V1_BODY)
    async def kserve_predict(name: str, request: Request) -> Response:
        """KServe's v1 protocol: {"instances": [...]} in, {"predictions": [...]} out."""
        return await answer(request, route.kserve, name)

    async def default_ready(request: Request) -> Response:
        try:
            name = route.default_model()
            pipeline.models.get(name)
        except MlgateError as exc:
            status, body, headers = render_error(exc, request_id(request))
            return Response(body, status, headers, media_type="application/json")
        return json({"status": "ok", "model": name})

    @router.get("/ping", tags=["mlflow"], responses=errors(404, 503))
    async def ping(request: Request) -> Response:
        """MLflow's health check: 200 once the default model is loaded."""
        return await default_ready(request)

    @router.get("/health", tags=["mlflow"], responses=errors(404, 503))
    async def health(request: Request) -> Response:
        return await default_ready(request)

    @router.get("/version", tags=["mlflow"], response_class=PlainTextResponse)
    async def server_version() -> Response:
        return PlainTextResponse(mlgate_version())

    return router
