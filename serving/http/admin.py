"""The admin API: rollout state of each model (read it, change canary weight and shadow shares)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from serving import schemas
from serving.auth.authenticator import Authenticator
from serving.errors import InvalidRequest, UnsupportedMediaType
from serving.codec import is_json_media
from serving.http.errors import json_response
from serving.http.openapi import errors
from serving.rollout import Rollouts

audit_log = logging.getLogger("mlgate.audit")

AdminChange = Callable[[str, str, dict[str, Any]], None]
"""Records an admin change on a model version (model, version, the audit record); blocking."""


class AdminGuard:
    """Who may use the admin API: an ``admin`` principal, or the demo's loopback caller
    (:meth:`serving.auth.authenticator.Authenticator.require_admin`)."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    async def authorize(self, request: Request) -> str:
        headers = dict(request.scope["headers"])
        principal = await self.auth.identify(headers)
        return self.auth.require_admin(principal, headers, request.client.host if request.client else None)


def admin_router(rollouts: Rollouts, guard: AdminGuard, on_change: AdminChange | None = None) -> APIRouter:
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.get("/rollouts", responses=errors(401, 403))
    async def list_rollouts(request: Request) -> Response:
        """Rollout state of every model: weights, halts, variants and the canary analysis."""
        await guard.authorize(request)
        await rollouts.refresh()  # the shared state, not this replica's copy of up to refresh_s ago
        return json_response({"rollouts": [rollouts.describe(name) for name in rollouts.names()]})

    @router.get("/rollouts/{model}", responses=errors(401, 403, 404))
    async def get_rollout(model: str, request: Request) -> Response:
        """Rollout state of one model."""
        await guard.authorize(request)
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
        """Change the canary weight and/or shadow shares, on every replica, without a restart.
        Every change is audited: the ``mlgate.audit`` log and a tag on the model version."""
        who = await guard.authorize(request)
        rollouts.state(model)  # 404 for an unknown model before looking at the body
        if not is_json_media(dict(request.scope["headers"]).get(b"content-type")):
            raise UnsupportedMediaType()
        change = parse_change(await request.body())
        await rollouts.refresh()
        before = _traffic(rollouts.describe(model))
        await rollouts.set(model, change.canary_weight, change.shadow_shares)
        after = rollouts.describe(model)
        await _audit(model, who, request, before, after, on_change)
        return json_response(after)

    return router


def _traffic(state: dict[str, Any]) -> dict[str, Any]:
    return {k: state[k] for k in ("canary_weight", "shadow_shares", "halted")}


async def _audit(model: str, who: str, request: Request, before: dict[str, Any], after: dict[str, Any],
                 on_change: AdminChange | None) -> None:
    """One audit record per change: who (the credential kind and the peer), what, before and after;
    to the ``mlgate.audit`` log and, on the version whose traffic it moves, as a registry tag."""
    record = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "who": who,
              "peer": request.client.host if request.client else None, "action": "rollout.change",
              "model": model, "before": before, "after": _traffic(after)}
    audit_log.info("%s", orjson.dumps(record).decode())
    variants = after["variants"]
    version = (variants.get("canary") or {}).get("version") or (variants.get("champion") or {}).get("version")
    if on_change is not None and version:
        try:
            await asyncio.to_thread(on_change, model, version, record)
        except Exception:  # the change is made and logged; the registry may be down for a while
            audit_log.warning("could not tag %s v%s with the admin change", model, version, exc_info=True)


def parse_change(body: bytes) -> schemas.RolloutChange:
    try:
        return schemas.RolloutChange.model_validate(orjson.loads(body or b"null"))
    except orjson.JSONDecodeError:
        raise InvalidRequest("body is not valid JSON") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(f"{where}: {first['msg']}") from None
