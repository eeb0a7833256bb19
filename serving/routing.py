"""Which variant answers a request: pure functions, no I/O.

Sticky canary assignment: a routing key hashes to a point in [0, 10000) (basis points), salted
with the model name so different models split customers independently. The canary answers keys
whose point is below ``weight * 100``. Raising the weight only adds points to the canary's side
and lowering it only removes them, so a customer moves at most once per change, in the direction
of the change, and never flips back and forth while the weight stays put.

A request is routed as a whole: by the routing-key header if present, else by its first entity
key, else (instance requests without the header) at random.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

BASIS_POINTS = 10_000
CHAMPION = "champion"
CANARY = "canary"


def point(model: str, key: str, secret: bytes = b"") -> int:
    """A stable, uniform point in [0, 10000) for a routing key of a model. With a ``secret``
    (``routing_secret``, the same on every replica) nobody outside can compute which keys land on
    the canary, so nobody can pick keys to steer traffic into it."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=model.encode()[:16], key=secret).digest()
    return int.from_bytes(digest, "little") % BASIS_POINTS


def assign(model: str, key: str | None, canary_weight: float, secret: bytes = b"") -> str:
    """``canary`` or ``champion`` for a key (None: a random draw) at a weight in percent."""
    if canary_weight <= 0:
        return CHAMPION
    if canary_weight >= 100:
        return CANARY
    p = point(model, key, secret) if key is not None else random.randrange(BASIS_POINTS)
    return CANARY if p < canary_weight * (BASIS_POINTS // 100) else CHAMPION


def routing_key(payload: Any, header_value: str | None) -> str | None:
    """The header's key, else the first entity's key value, else None."""
    if header_value:
        return header_value
    if isinstance(payload, dict):
        entities = payload.get("entities")
        if isinstance(entities, list) and entities and isinstance(entities[0], dict) and entities[0]:
            key = next(iter(entities[0].values()))
            # Only a scalar id: str() of a nested value recurses (a 1,000-deep one raised a 500),
            # and the codec refuses anything but an integer id anyway.
            if type(key) in (int, str):
                return str(key)
    return None


def mirrored(share: float) -> bool:
    """Whether one request is mirrored to a shadow taking ``share`` percent of traffic."""
    return share > 0 and (share >= 100 or random.random() * 100 < share)
