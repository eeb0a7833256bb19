"""The admin API: rollout state of each model (read it, change canary weight and shadow shares),
and who may use it or force a variant."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Any, Callable

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from serving import schemas
from serving.errors import Forbidden, InvalidRequest, Unauthorized, UnsupportedMediaType
from serving.http.errors import is_json_media, json_response
from serving.http.openapi import errors
from serving.rollout import Rollouts
from serving.settings import AdminSettings, HttpSettings

LOOPBACK = frozenset({"127.0.0.1", "::1"})
LOOPBACK_NAMES = frozenset({"127.0.0.1", "::1", "localhost"})
# A loopback peer that sends one of these is a proxy relaying someone else's call.
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
# Ingress modes whose replicas see the caller's own connection (the others see a local proxy).
DIRECT_INGRESS = ("reuseport", "direct")

audit_log = logging.getLogger("mlgate.audit")

AdminChange = Callable[[str, str, dict[str, Any]], None]
"""Records an admin change on a model version (model, version, the audit record); blocking."""


def host_name(host: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8000`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class AdminGuard:
    """Who may use the admin API and force a variant.

    With ``admin.token``: a bearer token compared in constant time (and, if ``admin.allowed_hosts``
    is set, a ``Host`` from it). Without one, loopback trust for the local demo, and only where it
    means something: the gateway bound to a loopback address, behind no proxy of its own (``haproxy``
    and ``proxy`` ingress connect from 127.0.0.1 for everyone), a direct loopback peer that relays
    nobody (no forwarding headers) and a loopback ``Host`` (a browser tricked by DNS rebinding
    sends the attacker's name there)."""

    def __init__(self, admin: AdminSettings, http: HttpSettings) -> None:
        self.admin = admin
        self.loopback_trusted = http.host in LOOPBACK_NAMES and http.ingress in DIRECT_INGRESS

    def check(self, authorization: str, client_host: str | None, host: str, relayed: bool) -> str:
        """Who the caller is (``token`` or ``loopback``), or Unauthorized (401) / Forbidden (403)."""
        name = host_name(host)
        if self.admin.allowed_hosts and name not in self.admin.allowed_hosts:
            raise Forbidden("admin calls must name an allowed host (admin.allowed_hosts)")
        if self.admin.token is None:
            if not (self.loopback_trusted and client_host in LOOPBACK and not relayed
                    and name in LOOPBACK_NAMES):
                raise Forbidden("admin calls need admin.token on the gateway, or a direct loopback caller "
                                "of a gateway bound to loopback")
            return "loopback"
        scheme, _, given = authorization.partition(" ")
        expected = self.admin.token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise Unauthorized()
        return "token"

    def authorize(self, request: Request) -> str:
        return self.check(request.headers.get("authorization", ""),
                          request.client.host if request.client else None, request.headers.get("host", ""),
                          relayed=any(h in request.headers for h in FORWARDING_HEADERS))


def admin_router(rollouts: Rollouts, guard: AdminGuard, on_change: AdminChange | None = None) -> APIRouter:
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.get("/rollouts", responses=errors(401, 403))
    async def list_rollouts(request: Request) -> Response:
        """Rollout state of every model: weights, halts, variants and the canary analysis."""
        guard.authorize(request)
        await rollouts.refresh()  # the shared state, not this replica's copy of up to refresh_s ago
        return json_response({"rollouts": [rollouts.describe(name) for name in rollouts.names()]})

    @router.get("/rollouts/{model}", responses=errors(401, 403, 404))
    async def get_rollout(model: str, request: Request) -> Response:
        """Rollout state of one model."""
        guard.authorize(request)
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
        who = guard.authorize(request)
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
