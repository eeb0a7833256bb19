"""Lineage of a registered model version: why and from what it was trained, recorded as MLflow
model version tags. ``mlgate retrain`` (batch/retrain.py) and ordinary training write them; the
gateway reads them back for ``GET /v1/models/{name}``. One module names them, for both sides.

Tags (values are strings; the structured ones compact JSON)::

    mlgate.lineage.trigger         "drift" | "manual" | "initial"
    mlgate.lineage.drift           {"version": ..., "computed_at": ..., "psi": {column: psi}}  (top columns)
    mlgate.lineage.data_snapshot   {"sources": {name: {"path": ..., "modified": ...}},
                                    "offline_tables": {view: as_of}}
    mlgate.lineage.feature_views   {view: schema version}
    mlgate.lineage.parent_version  the version the serving alias pointed at when training began
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "mlgate.lineage."
TRIGGER = PREFIX + "trigger"
DRIFT = PREFIX + "drift"
DATA_SNAPSHOT = PREFIX + "data_snapshot"
FEATURE_VIEWS = PREFIX + "feature_views"
PARENT_VERSION = PREFIX + "parent_version"
TRIGGERS = ("drift", "manual", "initial")
_JSON = (DRIFT, DATA_SNAPSHOT, FEATURE_VIEWS)


def tags(trigger: str, *, feature_views: Mapping[str, str], data_snapshot: Mapping[str, Any],
         parent_version: str | None = None, drift: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The lineage tags of one version (only those with a value)."""
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger {trigger!r}: one of {', '.join(TRIGGERS)}")
    values: dict[str, Any] = {TRIGGER: trigger, FEATURE_VIEWS: dict(feature_views),
                              DATA_SNAPSHOT: dict(data_snapshot), PARENT_VERSION: parent_version,
                              DRIFT: dict(drift) if drift else None}
    return {k: v if isinstance(v, str) else _compact(v) for k, v in values.items() if v is not None}


def read(version_tags: Mapping[str, str]) -> dict[str, Any]:
    """A version's lineage from its tags, by short name (``trigger``, ``drift``, ...); a missing
    or unreadable tag is None."""
    out: dict[str, Any] = {}
    for key in (TRIGGER, DRIFT, DATA_SNAPSHOT, FEATURE_VIEWS, PARENT_VERSION):
        raw = version_tags.get(key)
        if raw is not None and key in _JSON:
            try:
                raw = json.loads(raw)
            except ValueError:
                raw = None
        out[key[len(PREFIX):]] = raw
    return out


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


class LineageCache:
    """Each (model, version)'s lineage, fetched by the blocking ``fetch`` in a thread, kept for
    ``ttl_s`` (approval tags change after registration). A failed fetch answers None and is not
    kept. Only ``GET /v1/models/{name}`` asks: never the predict path."""

    def __init__(self, fetch: Callable[[str, str], dict[str, Any]], ttl_s: float = 60.0) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    async def get(self, model: str, version: str) -> dict[str, Any] | None:
        now = time.monotonic()
        hit = self._entries.get((model, version))
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            value = await asyncio.to_thread(self._fetch, model, version)
        except Exception:  # the registry is down or slow: describe without lineage
            log.warning("lineage of %s v%s unavailable", model, version, exc_info=True)
            return None
        if len(self._entries) > 1024:
            self._entries.clear()
        self._entries[(model, version)] = (now + self._ttl_s, value)
        return value
