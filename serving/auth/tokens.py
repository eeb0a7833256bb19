"""Bearer JWTs from an identity provider, checked with PyJWT.

Keys come from a static PEM / shared secret, or from the provider's JWKS document (fetched with
httpx off the request path's blocking calls, again for an unknown ``kid`` at most every
``jwks_min_refresh_s``). A checked token is remembered until it expires, so a client that reuses
its token pays the signature check once, not per request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import httpx
import jwt

from serving.auth.principal import Principal
from serving.auth.settings import SCOPE_PATTERN, JwtSettings
from serving.errors import AuthUnavailable, CredentialsExpired, Unauthorized

log = logging.getLogger(__name__)

CACHE_SIZE = 10_000
_SCOPE = re.compile(SCOPE_PATTERN)


class JwtVerifier:
    def __init__(self, settings: JwtSettings) -> None:
        self.settings = settings
        self.algorithms = frozenset(settings.algorithms)
        self._static: dict[str, Any] = {}  # algorithm -> prepared key
        self._jwks: dict[str, jwt.PyJWK] = {}  # kid -> key
        self._fetched_at = float("-inf")
        self._fetch_failed = False
        self._fetching: asyncio.Lock | None = None
        self._background: asyncio.Task | None = None
        self._cache: dict[str, tuple[Principal, float]] = {}
        if settings.key is not None:
            secret = settings.key.get_secret_value()
            for name in settings.algorithms:
                try:
                    self._static[name] = jwt.get_algorithm_by_name(name).prepare_key(secret)
                except (jwt.InvalidKeyError, ValueError, TypeError, NotImplementedError) as exc:
                    raise ValueError(f"auth.jwt.key is not a key for {name}: {type(exc).__name__}") from None

    async def start(self) -> None:
        """Fetch the JWKS once (a provider down at start is retried on the first token)."""
        if self.settings.jwks_url:
            await self._refresh(force=True)

    async def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if self.settings.jwks_url and time.monotonic() - self._fetched_at >= self.settings.jwks_refresh_s:
            self._refresh_soon()  # keys the provider retired stop verifying tokens
        if cached is not None:
            principal, expires = cached
            if time.time() < expires + self.settings.leeway_s:
                return principal
            del self._cache[token]
            raise CredentialsExpired()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized() from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:  # ["HS256"]: unhashable
            raise Unauthorized()
        key = await self._key(header, algorithm)
        s = self.settings
        try:
            claims = jwt.decode(token, key, algorithms=[algorithm], audience=s.audience, issuer=s.issuer,
                                leeway=s.leeway_s, options={"require": ["exp"], "verify_aud": s.audience is not None})
        except jwt.ExpiredSignatureError:
            raise CredentialsExpired() from None
        except jwt.PyJWTError:
            raise Unauthorized() from None
        principal = self._principal(claims)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[token] = (principal, float(claims["exp"]))
        return principal

    def _principal(self, claims: dict[str, Any]) -> Principal:
        s = self.settings
        subject = claims.get(s.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise Unauthorized()
        values = claims.get(s.scopes_claim, ())
        if isinstance(values, str):
            values = values.split()
        if not isinstance(values, list | tuple):
            values = ()
        scopes: set[str] = set()
        for value in values:
            if not isinstance(value, str):
                continue
            if value in s.scope_map:
                scopes.update(s.scope_map[value])
            elif not s.scope_map and _SCOPE.match(value):  # with a map, only what it maps counts
                scopes.add(value)
        return Principal(f"jwt:{subject[:128]}", "jwt", frozenset(scopes))

    async def _key(self, header: dict[str, Any], algorithm: str) -> Any:
        if self._static:
            return self._static[algorithm]
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthorized()
        found = self._jwks.get(kid)
        if found is None:
            await self._refresh()
            found = self._jwks.get(kid)
        if found is None:
            if self._fetch_failed:
                raise AuthUnavailable()
            raise Unauthorized()
        if found.algorithm_name and found.algorithm_name != algorithm:
            raise Unauthorized()
        return found.key

    def _refresh_soon(self) -> None:
        """Re-fetch the JWKS in the background (requests go on with the keys held)."""
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(self._refresh(force=True))

    async def _refresh(self, force: bool = False) -> None:
        """Fetch the JWKS, unless it was fetched less than ``jwks_min_refresh_s`` ago."""
        if self._fetching is None:
            self._fetching = asyncio.Lock()
        async with self._fetching:  # concurrent unknown kids share one fetch
            if not force and time.monotonic() - self._fetched_at < self.settings.jwks_min_refresh_s:
                return
            self._fetched_at = time.monotonic()
            try:
                async with httpx.AsyncClient(timeout=5.0) as client:
                    response = await client.get(self.settings.jwks_url)
                    response.raise_for_status()
                    keys = jwt.PyJWKSet.from_dict(response.json())
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                self._fetch_failed = True  # an unknown kid now gets 503, not 401
                retry_s = min(2.0, self.settings.jwks_min_refresh_s)
                self._fetched_at = time.monotonic() - self.settings.jwks_min_refresh_s + retry_s
                log.warning("could not fetch the JWKS from %s: %s", self.settings.jwks_url, type(exc).__name__)
                return
            self._fetch_failed = False
            fresh = {k.key_id: k for k in keys.keys if k.key_id}
            if set(fresh) != set(self._jwks):
                self._cache.clear()  # tokens of a retired key are checked again (and refused)
            self._jwks = fresh
            log.info("JWKS: %d keys from %s", len(self._jwks), self.settings.jwks_url)
