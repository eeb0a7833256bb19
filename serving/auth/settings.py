"""The ``auth`` settings section: credentials the data plane accepts, and request quotas.

Composed into :class:`serving.settings.Settings` as ``auth`` (``MLGATE_AUTH__...``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from features_online.settings import RedisSettings, Section

SCOPE_PATTERN = r"^(predict:(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,127})|route|admin|metrics|feedback)$"
"""``predict:<model>``, ``predict:*``, ``route`` (choose the routing key with X-Routing-Key and
see which variant and version answered), ``admin`` (everything, the admin API included),
``metrics`` (``GET /metrics``), ``feedback`` (labels for logged predictions: ``POST
/v1/models/{name}/feedback``)."""
KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class QuotaRate(Section):
    """A request-rate limit: ``rate_per_s`` on average, up to ``burst`` at once."""

    rate_per_s: float = Field(gt=0)
    burst: int | None = Field(None, ge=1)
    """Requests that may come at once after a quiet spell (default: one second's worth)."""

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else max(1, math.ceil(self.rate_per_s))


class ApiKey(Section):
    """One API key, as the gateway stores it: its hash, never the key."""

    id: str = Field(pattern=KEY_ID_PATTERN)
    """Who holds the key (audit logs, quota buckets); not a secret."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """SHA-256 of the key, hex (``mlgate keys create`` prints the key once and stores this)."""
    scopes: tuple[str, ...] = Field(min_length=1)
    quota: QuotaRate | None = None
    """This key's own limit (default: ``auth.quotas.per_key``)."""

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, scopes: tuple[str, ...]) -> tuple[str, ...]:
        return _check_scopes(scopes)


class JwtSettings(Section):
    """Bearer JWTs signed by an identity provider (validated with PyJWT)."""

    jwks_url: str | None = None
    """The provider's JWKS document (``https://.../.well-known/jwks.json``): keys by ``kid``,
    fetched on first use, every ``jwks_refresh_s`` after (in the background: a key the provider
    retired stops verifying tokens), and for an unknown ``kid`` (at most every
    ``jwks_min_refresh_s``)."""
    key: SecretStr | None = None
    """A static verification key instead: a PEM public key, or the shared secret of HS256."""
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    """Signature algorithms accepted (``none`` never is)."""
    issuer: str | None = None
    """Required ``iss`` claim."""
    audience: str | None = None
    """Required ``aud`` claim."""
    subject_claim: str = "sub"
    """Claim naming the caller (audit, quota bucket)."""
    scopes_claim: str = "scope"
    """Claim holding the caller's scopes: a space-separated string (OAuth ``scope``) or a list
    (``scp``, ``roles``, ``groups``)."""
    scope_map: dict[str, tuple[str, ...]] = {}
    """Claim values mapped to mlgate scopes (``{"risk-team": ["predict:risk-model"]}``). With a
    map, only the values it maps grant scopes (a provider group that happens to be called
    ``admin`` grants nothing); without one, values that are mlgate scopes count as themselves."""
    leeway_s: float = Field(30.0, ge=0)
    """Clock skew allowed on ``exp`` and ``nbf``."""
    jwks_refresh_s: float = Field(300.0, gt=0)
    """How often the JWKS is fetched again while tokens come in."""
    jwks_min_refresh_s: float = Field(30.0, gt=0)
    """Least time between two JWKS fetches: tokens naming unknown keys cannot make the gateway
    hammer the provider."""

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtSettings:
        if bool(self.jwks_url) == bool(self.key):
            raise ValueError("auth.jwt needs exactly one of jwks_url or key")
        if "none" in {a.lower() for a in self.algorithms}:
            raise ValueError("auth.jwt.algorithms cannot accept unsigned tokens ('none')")
        for scopes in self.scope_map.values():
            _check_scopes(scopes)
        return self


class QuotaSettings(Section):
    """Request-rate limits that hold across every replica (a GCRA bucket per limit in Redis)."""

    per_key: QuotaRate | None = None
    """Each caller's limit over all models (an API key's own ``quota`` wins); callers are
    API keys, JWT subjects, and anonymous callers by client address."""
    per_model: dict[str, QuotaRate] = {}
    """Each named model's limit over all its callers together."""
    on_store_down: Literal["open", "closed"] = "open"
    """When the quota store cannot answer: ``open`` lets requests through (counted in
    ``mlgate_quota_store_unavailable_total``; authentication still holds) so that a limiter outage
    is not a serving outage; ``closed`` refuses them with 503 ``quota_unavailable``."""
    redis: RedisSettings | None = None
    """Where the buckets live; None: the feature store's Redis."""
    lease_max: int = Field(64, ge=1)
    """Most requests one replica admits from one Redis round trip. A replica takes what its recent
    traffic used (up to this and the bucket's burst) and serves them locally for ``lease_s``:
    a limit is never exceeded, but a busy replica pays one round trip per lease, not per request."""
    lease_s: float = Field(0.05, gt=0, le=1)
    """How long leased requests stay usable; unused ones lapse (they counted against the limit)."""

    @property
    def enabled(self) -> bool:
        return self.per_key is not None or bool(self.per_model)


class AuthSettings(Section):
    """Credentials the gateway accepts. With none configured (no API keys, no JWT), predictions
    need none: allowed only on a loopback address (the local demo) or with ``insecure``."""

    api_keys_file: Path | None = None
    """YAML or JSON file of hashed keys (``{"keys": [ApiKey, ...]}``), for example a mounted
    Kubernetes Secret; re-read when it changes (checked every ``reload_s``)."""
    api_keys: tuple[ApiKey, ...] = ()
    """Keys given inline (``MLGATE_AUTH__API_KEYS`` as JSON)."""
    jwt: JwtSettings | None = None
    anonymous_scopes: tuple[str, ...] = ()
    """Scopes of calls without credentials while authentication is on (``["metrics"]`` for a
    Prometheus without a token). With authentication off they get ``predict:*`` and
    ``metrics``, and ``route`` on a loopback-bound gateway."""
    insecure: bool = False
    """Serve predictions without credentials on a non-loopback address (``mlgate serve
    --insecure``): without it such a gateway refuses to start."""
    reload_s: float = Field(5.0, gt=0)
    """How often the API key file's modification time is checked."""
    quotas: QuotaSettings = QuotaSettings()

    @field_validator("anonymous_scopes")
    @classmethod
    def _known_scopes(cls, scopes: tuple[str, ...]) -> tuple[str, ...]:
        return _check_scopes(scopes)

    @field_validator("api_keys")
    @classmethod
    def _unique_ids(cls, keys: tuple[ApiKey, ...]) -> tuple[ApiKey, ...]:
        ids = [k.id for k in keys]
        if len(ids) != len(set(ids)):
            raise ValueError("API key ids must be unique")
        return keys

    @property
    def enabled(self) -> bool:
        """Whether the data plane asks for credentials."""
        return bool(self.api_keys_file or self.api_keys or self.jwt)

    @property
    def quotas_enabled(self) -> bool:
        """Whether any request may be rate-limited: a default or per-model limit, or an API key's
        own (a key file may gain one at any reload)."""
        return self.quotas.enabled or self.api_keys_file is not None or any(k.quota for k in self.api_keys)


def _check_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    import re

    for scope in scopes:
        if not re.match(SCOPE_PATTERN, scope):
            raise ValueError(f"unknown scope {scope!r}: predict:<model>, predict:*, route, admin, metrics or feedback")
    return scopes
