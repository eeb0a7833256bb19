"""Who is calling (:meth:`Authenticator.identify`) and whether they may do what they ask.

Credentials: ``Authorization: Bearer <credential>`` (or ``X-API-Key: <key>``) holding an API
key (``mlg_...``), a JWT, or the admin token. Without credentials a caller is anonymous: with
authentication off (no API keys, no JWT) anonymous callers may predict and read metrics, and
choose their routing key on a loopback-bound gateway; with it on, they get ``anonymous_scopes``.

The admin API keeps its loopback trust for the local demo, only where it means something: no
credentials of any kind configured, the gateway bound to loopback behind no proxy of its own
(``haproxy`` and ``proxy`` ingress connect from 127.0.0.1 for everyone), a direct loopback peer
relaying nobody (no forwarding headers), naming a loopback ``Host`` (a browser tricked by DNS
rebinding sends the attacker's name there).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from serving.auth.keys import PREFIX, KeyStore
from serving.auth.principal import Principal
from serving.auth.settings import AuthSettings
from serving.auth.tokens import JwtVerifier
from serving.errors import Forbidden, Unauthorized

LOOPBACK = frozenset({"127.0.0.1", "::1"})
LOOPBACK_NAMES = frozenset({"127.0.0.1", "::1", "localhost"})
# A loopback peer that sends one of these is a proxy relaying someone else's call.
FORWARDING_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")
# Ingress modes whose replicas see the caller's own connection (the others see a local proxy).
DIRECT_INGRESS = ("reuseport", "direct")
MAX_CREDENTIAL = 8192

ADMIN_TOKEN = Principal("admin-token", "token", frozenset({"admin"}))


class InsecureExposure(ValueError):
    """A gateway bound to a non-loopback address without authentication, not told ``insecure``."""


def check_exposure(host: str, auth: AuthSettings) -> None:
    """Refuse to serve predictions without credentials beyond this machine, unless told to."""
    if host not in LOOPBACK_NAMES and not auth.enabled and not auth.insecure:
        raise InsecureExposure(
            f"refusing to serve on {host} without authentication: configure API keys "
            "(auth.api_keys_file, MLGATE_AUTH__API_KEYS_FILE) or JWT (auth.jwt), or pass --insecure "
            "(MLGATE_AUTH__INSECURE=true) to serve anyone who can reach the port")


def host_name(host: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8000`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def relayed(headers: Mapping[bytes, bytes]) -> bool:
    return any(h in headers for h in FORWARDING_HEADERS)


class Authenticator:
    def __init__(self, auth: AuthSettings, admin_token: str | None, host: str, ingress: str,
                 allowed_hosts: tuple[str, ...] = ()) -> None:
        """``host``/``ingress``: where and how the gateway listens (``HttpSettings``);
        ``allowed_hosts``: ``Host`` names admin calls may carry (empty: any)."""
        self.enabled = auth.enabled
        self.keys = KeyStore(auth.api_keys, auth.api_keys_file, auth.reload_s) if (
            auth.api_keys or auth.api_keys_file) else None
        self.jwt = JwtVerifier(auth.jwt) if auth.jwt is not None else None
        self._admin_token = admin_token.encode() if admin_token else None
        self.credentials_exist = self.enabled or self._admin_token is not None
        loopback_bound = host in LOOPBACK_NAMES
        self.loopback_trusted = loopback_bound and ingress in DIRECT_INGRESS and not self.credentials_exist
        if self.enabled:
            scopes = frozenset(auth.anonymous_scopes)
        else:
            scopes = frozenset({"predict:*", "metrics", "feedback", *(("route",) if loopback_bound else ())})
        self.anonymous = Principal("anonymous", "anonymous", scopes)
        self.allowed_hosts = allowed_hosts

    async def identify(self, headers: Mapping[bytes, bytes]) -> Principal:
        """The caller's principal; 401 for a credential that proves nothing."""
        authorization = headers.get(b"authorization")
        if authorization is None:
            given = headers.get(b"x-api-key")
            if given is None:
                return self.anonymous
            credential = given.strip()
        else:
            scheme, _, credential = authorization.partition(b" ")
            if scheme.lower() != b"bearer":
                raise Unauthorized()
            credential = credential.strip()
        if not credential or len(credential) > MAX_CREDENTIAL:
            raise Unauthorized()
        if self._admin_token is not None and hmac.compare_digest(credential, self._admin_token):
            return ADMIN_TOKEN
        token = credential.decode("latin-1")
        if token.startswith(PREFIX):
            principal = self.keys.lookup(token) if self.keys is not None else None
            if principal is None:
                raise Unauthorized()
            return principal
        if self.jwt is not None:
            return await self.jwt.verify(token)
        raise Unauthorized()

    def denied(self, principal: Principal, what: str) -> Unauthorized | Forbidden:
        """401 for an anonymous caller where credentials exist, else 403."""
        if principal.anonymous and self.credentials_exist:
            return Unauthorized()
        return Forbidden(f"this caller may not {what}")

    def require_predict(self, principal: Principal, model: str) -> None:
        if not principal.may_predict(model):
            raise self.denied(principal, "call this model")

    def require(self, principal: Principal, scope: str) -> None:
        if not principal.may(scope):
            raise self.denied(principal, f"use this endpoint (needs the {scope} scope)")

    def require_admin(self, principal: Principal, headers: Mapping[bytes, bytes], client_host: str | None) -> str:
        """Who the admin caller is (a principal id, or ``loopback``); 401/403 otherwise."""
        name = host_name(headers.get(b"host", b"").decode("latin-1"))
        if self.allowed_hosts and name not in self.allowed_hosts:
            raise Forbidden("admin calls must name an allowed host (admin.allowed_hosts)")
        if principal.admin:
            return principal.id
        if (principal.anonymous and self.loopback_trusted and client_host in LOOPBACK
                and not relayed(headers) and name in LOOPBACK_NAMES):
            return "loopback"
        if principal.anonymous and self.credentials_exist:
            raise Unauthorized()
        raise Forbidden("admin calls need the admin scope (an admin API key, JWT or admin.token), "
                        "or a direct loopback caller of a gateway bound to loopback without credentials")
