"""The admin API: rollout state of each model (read it, change canary weight and shadow shares),
and who may use it or force a variant."""

from __future__ import annotations

import hmac

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from serving import schemas
from serving.errors import Forbidden, InvalidRequest, Unauthorized, UnsupportedMediaType
from serving.http.errors import is_json_media, json_response
from serving.http.openapi import errors
from serving.rollout import Rollouts
from serving.settings import AdminSettings

LOOPBACK = frozenset({"127.0.0.1", "::1"})
# A loopback peer that sends one of these is a proxy relaying someone else's call.
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def authorize(request: Request, admin: AdminSettings) -> None:
    check_admin(request.headers.get("authorization", ""), request.client.host if request.client else None,
                admin, relayed=any(h in request.headers for h in FORWARDING_HEADERS))


def check_admin(authorization: str, client_host: str | None, admin: AdminSettings,
                relayed: bool = False) -> None:
    """Bearer ``admin.token`` when one is set; without one, loopback callers only (local demo),
    and not calls a local proxy relays for someone else (``relayed``: forwarding headers)."""
    if admin.token is None:
        if client_host not in LOOPBACK or relayed:
            raise Forbidden("admin calls need admin.token on the gateway, or a direct loopback caller")
        return
    scheme, _, given = authorization.partition(" ")
    expected = admin.token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise Unauthorized()


def admin_router(rollouts: Rollouts, admin: AdminSettings) -> APIRouter:
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.get("/rollouts", responses=errors(401, 403))
    async def list_rollouts(request: Request) -> Response:
        """Rollout state of every model: weights, halts, variants and the canary analysis."""
        authorize(request, admin)
        await rollouts.refresh()  # the shared state, not this replica's copy of up to refresh_s ago
        return json_response({"rollouts": [rollouts.describe(m.name) for m in rollouts.settings.models]})

    @router.get("/rollouts/{model}", responses=errors(401, 403, 404))
    async def get_rollout(model: str, request: Request) -> Response:
        """Rollout state of one model."""
        authorize(request, admin)
        rollouts.state(model)  # 404 for an unknown model
        await rollouts.refresh()
        return json_response(rollouts.describe(model))

    @router.patch("/rollouts/{model}", responses=errors(
        400, 401, 403, 404, 409, 415, 503, s404="Unknown model, or unknown shadow",
        s409="A canary weight above 0 for a model with no canary configured",
        s503="The rollout state store (Redis) is unavailable: nothing changed (see Retry-After)"),
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": schemas.RolloutChange.model_json_schema()}}}})
    async def change_rollout(model: str, request: Request) -> Response:
        """Change the canary weight and/or shadow shares, on every replica, without a restart."""
        authorize(request, admin)
        rollouts.state(model)  # 404 for an unknown model before looking at the body
        if not is_json_media(dict(request.scope["headers"]).get(b"content-type")):
            raise UnsupportedMediaType()
        change = parse_change(await request.body())
        await rollouts.set(model, change.canary_weight, change.shadow_shares)
        return json_response(rollouts.describe(model))

    return router


def parse_change(body: bytes) -> schemas.RolloutChange:
    try:
        return schemas.RolloutChange.model_validate(orjson.loads(body or b"null"))
    except orjson.JSONDecodeError:
        raise InvalidRequest("body is not valid JSON") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(f"{where}: {first['msg']}") from None
