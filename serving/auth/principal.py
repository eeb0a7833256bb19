"""Who is calling: the identity a credential proves, and what its scopes allow."""

from __future__ import annotations

from dataclasses import dataclass, field

from serving.auth.settings import QuotaRate


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    """``key:<id>``, ``jwt:<subject>``, ``admin-token`` or ``anonymous``: audit logs, quota buckets."""
    kind: str
    """``key``, ``jwt``, ``token`` or ``anonymous``."""
    scopes: frozenset[str]
    quota: QuotaRate | None = None
    """This caller's own rate limit (an API key's), over the gateway's default."""
    admin: bool = field(init=False)
    trusted: bool = field(init=False)
    """May choose its routing key and see which variant and version answered."""
    every_model: bool = field(init=False)

    def __post_init__(self) -> None:
        admin = "admin" in self.scopes
        object.__setattr__(self, "admin", admin)
        object.__setattr__(self, "trusted", admin or "route" in self.scopes)
        object.__setattr__(self, "every_model", admin or "predict:*" in self.scopes)

    @property
    def anonymous(self) -> bool:
        return self.kind == "anonymous"

    def may_predict(self, model: str) -> bool:
        return self.every_model or f"predict:{model}" in self.scopes

    def may(self, scope: str) -> bool:
        return self.admin or scope in self.scopes
