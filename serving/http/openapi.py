"""The OpenAPI document: every status each route answers, and request bodies as the server checks
them, so that a body the document allows is one the server takes (up to what only a model's
signature knows). Built once, on the first request for ``/openapi.json``; nothing here runs per
predict call."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serving import schemas
from serving.settings import Settings

ERROR_TEXT = {
    400: "Malformed JSON, wrong types, unknown features, NaN/Infinity",
    401: "A credential is required and was missing, invalid or expired (unauthorized, "
         "credentials_expired; WWW-Authenticate says how)",
    403: "The caller's scopes do not allow this; for the admin API without any credential "
         "configured, the caller is not a direct loopback caller of a loopback-bound gateway naming "
         "a loopback Host; or the Host is not allowed",
    404: "Unknown model",
    408: "Headers or body not received within their timeout; the connection is closed",
    409: "The change does not fit the model's configuration",
    413: "Body too large or too many instances",
    415: "Content-Type is not JSON",
    422: "Required features missing, or stored features missing/stale under an 'error' policy",
    429: "Over the caller's or the model's request-rate quota (see Retry-After)",
    500: "Unexpected failure: a masked message and the request id (the cause is in the log)",
    503: "Not ready, overloaded, or a dependency is down (see Retry-After)",
    504: "Deadline exceeded",
}


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "required": True,
                               "schema": {"type": "integer", "minimum": 0}}}


def errors(*statuses: int, model: type = schemas.ErrorResponse, **texts: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries with the ErrorResponse body (``model``: another protocol's error
    body); ``texts`` (``s404="..."``) replace the generic description of a status where a route
    means something narrower. Every 429 and 503 here is retryable and says when, in Retry-After."""
    return {status: {"model": model,
                     "description": texts.get(f"s{status}", ERROR_TEXT[status]),
                     **({"headers": RETRY_AFTER} if status in (429, 503) else {})} for status in statuses}


PREDICT_ERRORS = errors(
    400, 401, 403, 404, 408, 413, 415, 422, 429, 500, 503, 504,
    s401="Credentials required and missing, invalid or expired; or X-Mlgate-Variant without "
         "admin credentials where credentials are configured",
    s403="No predict scope for this model, or X-Mlgate-Variant without the admin scope",
    s404="Unknown model, or unknown forced variant",
    s503="Model not loaded yet, replica overloaded, the online feature store is down, or the "
         "identity provider's keys or the quota store are out of reach (see Retry-After)")
PREDICT_RESPONSES = {200: {"headers": {
    "X-Model-Version": {"description": "Registered model version that answered (callers with "
                        "the route or admin scope).", "required": False, "schema": {"type": "string"}},
    "X-Mlgate-Variant": {"description": "Variant that answered: champion or canary (callers with "
                         "the route or admin scope).", "required": False,
                         "schema": {"type": "string"}}}}, **PREDICT_ERRORS}
PREDICT_PARAMETERS = [{
    "in": "header", "name": "X-Mlgate-Variant", "required": False, "schema": {"type": "string"},
    "description": "Force a variant (champion, canary or a shadow's name) for testing: needs the "
                   "admin scope, or a direct loopback caller when no credential is configured."}, {
    "in": "header", "name": "X-Routing-Key", "required": False, "schema": {"type": "string"},
    "description": "The routing key (sticky canary assignment) instead of the first entity key: "
                   "callers with the route or admin scope only, ignored for others."}]
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "An API key (mlg_...), a JWT from the configured identity provider, "
                              "or the admin.token. Scopes: predict:<model>, predict:*, route, "
                              "metrics, admin."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "An API key, for clients that cannot send a bearer token."}}
# paths whose calls need a credential when auth is on
SCOPED = ("/v1/models", "/metrics", "/v2/models", "/invocations", "/serving-endpoints")
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve :func:`document` as ``app``'s OpenAPI document, built on first use."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of ``app``, with the predict body (the route reads raw bytes, so
    FastAPI cannot see it), the admin security scheme, and without FastAPI's default 422s (this
    API answers 400 for malformed parameters, and no route here has a parameter that can fail)."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    components = doc.setdefault("components", {})
    models = components.setdefault("schemas", {})
    for name in _FASTAPI_VALIDATION:
        models.pop(name, None)
    models.update(_predict_request(settings.limits.max_instances))
    infer = schemas.InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    models.update({**infer.pop("$defs"), "InferRequest": infer})
    components["securitySchemes"] = SECURITY_SCHEMES
    credentials = [{"bearer": []}, {"apiKey": []}]
    # Without credentials configured, anonymous calls do (the loopback check stands in for admin).
    open_data = not settings.auth.enabled or bool(settings.auth.anonymous_scopes)
    open_admin = not settings.auth.enabled and settings.admin.token is None
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            default = operation["responses"].get("422", {})
            if "HTTPValidationError" in str(default.get("content", "")):
                del operation["responses"]["422"]
            if path.startswith("/v1/admin/"):
                operation["security"] = credentials + ([{}] if open_admin else [])
            elif path.startswith(SCOPED):
                operation["security"] = credentials + ([{}] if open_data else [])
    return doc


def _predict_request(max_instances: int) -> dict[str, Any]:
    """PredictRequest and the two bodies it is exactly one of, with this gateway's row limit."""
    schema = schemas.PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    bodies = schema.pop("$defs")
    schema["oneOf"] = schema.pop("anyOf")  # the two forbid each other's fields: exactly one holds
    bodies["InstancesRequest"]["properties"]["instances"]["maxItems"] = max_instances
    bodies["EntitiesRequest"]["properties"]["entities"]["maxItems"] = max_instances
    return {**bodies, "PredictRequest": schema}
