"""Live rollout state: canary weight, shadow shares and halts, shared by every gateway replica.

Where a model's variants point (aliases, versions) comes from configuration only: settings, or
the Gateway's Serve ``user_config`` (``reconfigure``). How much traffic each gets is live state,
one immutable :class:`RolloutState` per model, swapped whole on every change:

- a configuration change (new routing, e.g. ``helm upgrade --set routing.canary.weight=25``)
  publishes its weights;
- the admin API (``mlgate rollout set``) changes them at run time;
- the canary analysis sets the weight to 0 and *halts* the rollout when the canary breaches a
  threshold; it stays halted until someone acts (sets a canary weight, or a new configuration).

The state lives in Redis under ``<prefix>:rollout:<model>`` so that all replicas agree: every
change is a compare-and-set on it, and each replica re-reads it every ``rollout.refresh_s`` and
adopts it if it was written under the same routing configuration (a replica still on an older
or newer configuration waits for its own ``reconfigure``). A replica that restarts under an
unchanged configuration adopts what is stored, so admin changes and halts survive restarts.
Without Redis each replica keeps its own state.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping

from observability.metrics import GatewayMetrics
from serving.canary import Breach, CanaryAnalysis
from serving.errors import DependencyUnavailable, ModelNotFound, RolloutConflict, VariantNotFound
from serving.models import ModelTable
from serving.routing import CANARY, mirrored
from serving.settings import ModelSettings, RoutingSettings, Settings

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 5
# Set KEYS[1] to ARGV[2] only if it still holds ARGV[1] ('' for absent): one key, Cluster-safe.
COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1]) or ''
if current == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end
return 0
"""

RollbackHook = Callable[[str, str, Breach], None]
"""(model, canary version, breach): records a rollback outside the gateway (blocking)."""


@dataclass(frozen=True)
class RolloutState:
    canary_weight: float = 0.0
    shadow_shares: Mapping[str, float] = field(default_factory=dict)
    halted: bool = False
    reason: str | None = None
    config_digest: str = ""
    updated_at: float = 0.0  # epoch seconds of the change
    updated_by: str = "config"  # config | admin | rollback

    @classmethod
    def from_routing(cls, routing: RoutingSettings, digest: str, now: float) -> RolloutState:
        weight = routing.canary.weight if routing.canary is not None else 0.0
        return cls(weight, {s.name: s.share for s in routing.shadows}, config_digest=digest, updated_at=now)

    @classmethod
    def from_json(cls, raw: bytes | str) -> RolloutState:
        data = json.loads(raw)
        return cls(float(data["canary_weight"]), {str(k): float(v) for k, v in data["shadow_shares"].items()},
                   bool(data["halted"]), data.get("reason"), str(data["config_digest"]),
                   float(data["updated_at"]), str(data["updated_by"]))

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "shadow_shares": dict(self.shadow_shares)})


def digest(routing: RoutingSettings) -> str:
    return hashlib.sha256(routing.model_dump_json().encode()).hexdigest()[:16]


class Rollouts:
    """Routing decisions and rollout state of every model served by one gateway replica."""

    def __init__(self, settings: Settings, models: ModelTable, metrics: GatewayMetrics,
                 redis: Any = None, on_rollback: RollbackHook | None = None,
                 clock: Callable[[], float] = time.time, served: Iterable[ModelSettings] | None = None) -> None:
        self.settings = settings
        self._models = models
        self._metrics = metrics
        self._redis = redis  # asyncio client for the shared state; None: this replica only
        self._on_rollback = on_rollback
        self._clock = clock
        self._routing: dict[str, RoutingSettings] = {}
        self._states: dict[str, RolloutState] = {}
        self._analysis: dict[str, CanaryAnalysis] = {}
        self._applied: dict[str, str] = {}  # digest of the routing this replica runs
        self._unsaved: set[str] = set()  # models whose last local change Redis has not taken
        self._canary_seen: dict[str, str | None] = {}  # canary version the analysis window is about
        self._alerted: dict[str, set[tuple[str | None, str]]] = {}  # (canary version, check) reported
        self._tasks: list[asyncio.Task] = []
        for model in settings.models if served is None else served:
            self.add(model)

    def add(self, model: ModelSettings) -> None:
        """Route a newly served model by its configured routing (dated 0: anything stored or
        configured later wins; the next sync adopts the shared state)."""
        self._apply_routing(model.name, model.routing, 0.0)

    def remove(self, name: str) -> None:
        for table in (self._routing, self._states, self._analysis, self._applied, self._canary_seen, self._alerted):
            table.pop(name, None)
        self._unsaved.discard(name)

    def names(self) -> list[str]:
        return list(self._routing)

    # -- configuration --------------------------------------------------------------------------

    def _apply_routing(self, model: str, routing: RoutingSettings, now: float) -> None:
        self._routing[model] = routing
        self._applied[model] = digest(routing)
        self._analysis[model] = CanaryAnalysis(routing.analysis)
        self._adopt(model, RolloutState.from_routing(routing, digest(routing), now))

    async def configure(self, model: str, routing: RoutingSettings) -> None:
        """Apply a model's routing configuration (settings or the Serve ``user_config``)."""
        if model not in self._routing:
            raise ModelNotFound(model)
        if digest(routing) != self._applied[model]:
            self._models.configure(model, routing)
            self._apply_routing(model, routing, self._clock())
        # Stored under this configuration: admin changes and halts survive restarts. Stored under
        # another one (or nothing stored): this configuration's state replaces it.
        fresh = replace(self._states[model], updated_at=self._clock())
        await self._update(model, lambda base, stored: base if stored else fresh)

    def key_header(self, model: str) -> str:
        routing = self._routing.get(model)
        return routing.key_header if routing is not None else RoutingSettings().key_header

    def state(self, model: str) -> RolloutState:
        if model not in self._states:
            raise ModelNotFound(model)
        return self._states[model]

    # -- the hot path ---------------------------------------------------------------------------

    def canary_weight(self, model: str) -> float:
        """The canary's share of routing keys now, in percent (0 when it has none)."""
        state = self._states.get(model)
        return state.canary_weight if state is not None else 0.0

    def shadows_for(self, model: str) -> list[str]:
        """Shadows this request is mirrored to (each drawn at its share)."""
        state = self._states.get(model)
        if state is None or not state.shadow_shares:
            return []
        return [name for name, share in state.shadow_shares.items() if mirrored(share)]

    def observe(self, model: str, variant: str, ok: bool, seconds: float, score: float | None) -> None:
        state = self._states.get(model)
        if state is not None and state.canary_weight > 0:
            self._analysis[model].record(variant, ok, seconds, score)

    # -- changes --------------------------------------------------------------------------------

    async def set(self, model: str, canary_weight: float | None = None,
                  shadow_shares: Mapping[str, float] | None = None) -> RolloutState:
        """An operator's change, merged into the shared state atomically; a canary weight also
        lifts a halt. Refused (503) if it cannot be shared."""
        current, routing = self.state(model), self._routing[model]
        if canary_weight is not None and canary_weight > 0 and routing.canary is None:
            raise RolloutConflict(f"model {model!r} has no canary configured")
        unknown = set(shadow_shares or {}) - set(current.shadow_shares)
        if unknown:
            raise VariantNotFound(f"model {model!r} has no shadow named {sorted(unknown)[0]!r}")

        def change(base: RolloutState, stored: bool) -> RolloutState:
            new = replace(base, updated_at=self._clock(), updated_by="admin",
                          shadow_shares={**base.shadow_shares, **(shadow_shares or {})})
            if canary_weight is not None:
                new = replace(new, canary_weight=canary_weight, halted=False, reason=None)
            return new

        new = await self._update(model, change)
        if new is None:
            raise DependencyUnavailable("the rollout state store (Redis) is unavailable")
        log.info("rollout %s: canary weight %s%%, shadows %s (admin)", model, new.canary_weight,
                 dict(new.shadow_shares))
        return new

    async def rollback(self, model: str, breach: Breach) -> None:
        """Canary to 0 % and halted, everywhere; recorded in logs, metrics and the registry."""
        version = self._models.backend(model, CANARY)
        version = version.spec.version if version is not None else "?"
        reason = f"{breach.check}: {breach.detail} (canary v{version})"

        adopted = False  # decided by the compare-and-set attempt that succeeds, the last one

        def halt(base: RolloutState, stored: bool) -> RolloutState:
            nonlocal adopted
            adopted = stored and base.halted  # another replica saw the same breach first
            if adopted:
                return base
            return replace(base, canary_weight=0.0, halted=True, reason=reason,
                           updated_at=self._clock(), updated_by="rollback")

        if await self._update(model, halt) is None:  # Redis away: halt here, share it later
            self._adopt(model, halt(self._states[model], False))
            self._unsaved.add(model)
        elif adopted:
            return  # one rollback, counted and recorded once, by the replica that made it
        log.error("rollout %s: canary rolled back: %s", model, reason)
        self._metrics.canary_rollbacks.labels(model, breach.check).inc()
        if self._on_rollback is not None:
            try:
                await asyncio.to_thread(self._on_rollback, model, version, breach)
            except Exception:  # the rollback itself stands; the registry note is best effort
                log.exception("rollout %s: could not record the rollback in the registry", model)

    def _adopt(self, model: str, state: RolloutState) -> None:
        previous = self._states.get(model)
        self._states[model] = state
        if previous is None or (previous.canary_weight, previous.halted) != (state.canary_weight, state.halted):
            self._analysis[model].reset()
        self._metrics.rollout_changed(model, state.canary_weight, dict(state.shadow_shares), state.halted)

    def _known(self, model: str, stored: RolloutState) -> RolloutState:
        """A stored state limited to the shadows this replica's configuration has."""
        shadows = self._states[model].shadow_shares
        return replace(stored, shadow_shares={n: stored.shadow_shares.get(n, s) for n, s in shadows.items()})

    # -- shared state ---------------------------------------------------------------------------

    def _key(self, model: str) -> str:
        return f"{self.settings.redis.prefix}:rollout:{model}"

    async def _update(self, model: str, change: Callable[[RolloutState, bool], RolloutState]
                      ) -> RolloutState | None:
        """Apply ``change`` to the shared state atomically and adopt the result.

        ``change(base, stored)`` gets the stored state if it was written under this replica's
        configuration (``stored`` True), else this replica's own. The write is a compare-and-set
        on the exact value read, retried when another writer got in between, so concurrent
        changes from replicas and operators are never lost. Without Redis the change is local.
        Returns None if Redis could not take it."""
        if self._redis is None:
            new = change(self._states[model], False)
            self._adopt(model, new)
            return new
        key = self._key(model)
        try:
            for _ in range(CAS_ATTEMPTS):
                raw = await self._redis.get(key)
                stored = self._decode(model, raw)
                new = change(stored or self._states[model], stored is not None)
                if await self._redis.eval(COMPARE_AND_SET, 1, key, raw or b"", new.to_json()):
                    self._adopt(model, new)
                    self._unsaved.discard(model)
                    return new
        except Exception as exc:  # Redis down or slow
            log.warning("rollout %s: the shared state is unavailable: %s", model, type(exc).__name__)
        return None

    def _decode(self, model: str, raw: bytes | None) -> RolloutState | None:
        """A stored state if it belongs to this replica's configuration, else None."""
        if not raw:
            return None
        try:
            stored = RolloutState.from_json(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("rollout %s: ignoring an unreadable stored state", model)
            return None
        return self._known(model, stored) if stored.config_digest == self._applied[model] else None

    async def refresh(self) -> None:
        """Adopt what other replicas (or operators) stored under this configuration; push a
        local halt Redis could not take earlier."""
        if self._redis is None:
            return
        for model in list(self._states):
            if model in self._unsaved:
                local = self._states[model]
                await self._update(model, lambda base, stored: local)
                continue
            try:
                stored = self._decode(model, await self._redis.get(self._key(model)))
            except Exception as exc:
                log.debug("rollout %s: refresh failed: %s", model, type(exc).__name__)
                continue
            if stored is not None and model in self._states and stored != self._states[model]:
                self._adopt(model, stored)

    async def analyse(self) -> None:
        for model, state in list(self._states.items()):
            canary = self._models.backend(model, CANARY)
            version = canary.spec.version if canary is not None else None
            seen = self._canary_seen.setdefault(model, version)
            if seen != version:  # a new canary version is judged on its own traffic only
                self._canary_seen[model] = version
                self._analysis[model].reset()
                continue
            if state.canary_weight > 0 and not state.halted:
                breach = self._analysis[model].verdict()
                if breach is None:
                    continue
                if breach.check == "score_shift" and self._routing[model].analysis.score_shift_action == "alert":
                    self._alert(model, version, breach)
                else:
                    await self.rollback(model, breach)

    def _alert(self, model: str, version: str | None, breach: Breach) -> None:
        """A breach reported, not acted on: once per canary version and check."""
        if (version, breach.check) in self._alerted.setdefault(model, set()):
            return
        self._alerted[model].add((version, breach.check))
        log.warning("rollout %s: canary v%s %s: %s (alert only: no rollback)", model, version, breach.check,
                    breach.detail)
        self._metrics.canary_alerts.labels(model, breach.check).inc()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._every(self.settings.rollout.refresh_s, self.refresh)),
                       asyncio.create_task(self._every(self.settings.rollout.analysis_interval_s,
                                                       self.analyse))]

    @staticmethod
    async def _every(seconds: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:  # a background loop must outlive any one failure
                log.exception("rollout background job failed")

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    def describe(self, model: str) -> dict[str, Any]:
        state, routing = self.state(model), self._routing[model]
        variants = {}
        for name, variant in self._models.variants(model).items():
            ref = variant.settings
            variants[name] = {"alias": ref.alias if not ref.version else None, "version": variant.version,
                              "pinned_version": ref.version, "ready": variant.backend is not None,
                              "error": variant.error}
        return {"model": model, "canary_weight": state.canary_weight,
                "shadow_shares": dict(state.shadow_shares), "halted": state.halted,
                "reason": state.reason, "updated_at": state.updated_at, "updated_by": state.updated_by,
                "key_header": routing.key_header, "variants": variants,
                "analysis": self._analysis[model].summary()}
