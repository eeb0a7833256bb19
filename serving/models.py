"""The models a gateway serves: every variant of each, which are ready, how to reach each one.

A :class:`ModelTable` loads every configured variant in the background, so the HTTP server
answers ``/healthz`` at once and ``/readyz`` turns ready only when every model's champion has a
validated version. A variant that fails to load is retried with backoff; a champion not loaded
answers 503, a canary not loaded leaves its traffic with the champion.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping, Protocol

import numpy as np

from observability.metrics import GatewayMetrics
from serving.errors import ModelNotFound, ModelNotReady, ModelValidationError, RegistryUnavailable, VariantNotFound
from serving.routing import CANARY, CHAMPION
from serving.runtime.base import NUMPY_DTYPES, ModelRuntime, ModelSpec, predict_async
from serving.settings import ModelSettings, RoutingSettings, Settings, VariantRef

log = logging.getLogger(__name__)


class ModelBackend(Protocol):
    """Something that scores decoded columns for one model version."""

    spec: ModelSpec

    async def predict(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class InProcessModel:
    """A runtime living in the gateway's own process: no hop between request and model."""

    def __init__(self, runtime: ModelRuntime, metrics: GatewayMetrics) -> None:
        self.runtime = runtime
        self.spec = runtime.spec
        self._rows = metrics.batch_size.labels(self.spec.name, self.spec.version)

    async def predict(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(columns.values())))
        self._rows.observe(rows)
        return await predict_async(self.runtime, columns, rows)

    def close(self) -> None:
        self.runtime.close()


@dataclass(eq=False)
class Variant:
    """One variant of a model (champion, canary or a shadow) and the version it serves now."""

    model: str
    name: str
    settings: ModelSettings  # the reference (alias or version) this variant follows
    backend: ModelBackend | None = None
    error: str | None = None
    rejected: set[str] = field(default_factory=set)  # versions refused by validation
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None

    @property
    def version(self) -> str | None:
        return self.backend.spec.version if self.backend is not None else None


BackendFactory = Callable[[ModelSettings], ModelBackend]
"""Builds a ready backend for one model, blocking; raises ModelValidationError to refuse it
(for good), anything else (RegistryUnavailable: the registry did not answer) to have it retried."""
Resolver = Callable[[ModelSettings], str]
"""The registered version a reference points at now, blocking; raises ModelValidationError if
it points nowhere (alias unset, model deleted)."""


def variant_refs(model: ModelSettings) -> dict[str, ModelSettings]:
    """Every variant of a model, by name, as the reference it follows."""
    refs = {CHAMPION: model}
    if model.placement == "deployment":  # its replicas follow the alias when they start
        return refs
    routing = model.routing
    if routing.canary is not None:
        refs[CANARY] = _ref(model, routing.canary)
    for shadow in routing.shadows:
        refs[shadow.name] = _ref(model, shadow)
    return refs


def _ref(model: ModelSettings, ref: VariantRef) -> ModelSettings:
    return model.model_copy(update={"alias": ref.alias, "version": ref.version})


class ModelTable:
    """Every variant of every configured model, each kept on the version its reference names.

    One supervisor task per variant loads it (retrying with backoff), then, when a resolver is
    given, asks the registry every ``registry.poll_s`` where the reference points. When an alias
    moves, the new version is loaded, validated and warmed off the event loop, then swapped in
    with one assignment: requests in flight finish on the version they started with, and a
    version that fails validation is never swapped in (the old one keeps serving).
    """

    def __init__(self, settings: Settings, metrics: GatewayMetrics, factory: BackendFactory,
                 resolver: Resolver | None = None, retry_initial_s: float | None = None,
                 retry_max_s: float | None = None, models: Iterable[ModelSettings] | None = None) -> None:
        registry = settings.registry
        self._metrics = metrics
        self._factory = factory
        self._resolver = resolver
        self._retry = (retry_initial_s or registry.retry_initial_s, retry_max_s or registry.retry_max_s)
        self._poll_s = registry.poll_s
        self._models: dict[str, dict[str, Variant]] = {}
        self._started = False
        for model in settings.models if models is None else models:
            self.add(model)

    def add(self, model: ModelSettings) -> None:
        """Serve one more model (a newly applied repository's): its variants start loading."""
        if model.name in self._models:
            raise ValueError(f"model {model.name!r} is served already")
        self._models[model.name] = {name: Variant(model.name, name, ref) for name, ref in variant_refs(model).items()}
        self._metrics.model_ready.labels(model.name).set(0)
        if self._started:
            for variant in self._models[model.name].values():
                self._supervise(variant)

    def remove(self, name: str) -> None:
        """Stop serving a model: its variants retire (calls in flight finish on them)."""
        for variant in self._models.pop(name, {}).values():
            self._retire(variant)
        self._metrics.model_ready.labels(name).set(0)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def start(self) -> None:
        """Start every variant's supervisor (call from the serving event loop)."""
        self._started = True
        for variants in self._models.values():
            for variant in variants.values():
                self._supervise(variant)

    def _supervise(self, variant: Variant) -> None:
        variant.task = asyncio.create_task(self._keep_current(variant),
                                           name=f"model-{variant.model}-{variant.name}")

    async def wait_ready(self) -> None:
        await asyncio.gather(*(v[CHAMPION].loaded.wait() for v in self._models.values()))

    def configure(self, model: str, routing: RoutingSettings) -> None:
        """Canary and shadows of ``model`` as ``routing`` names them: variants whose reference
        changed are reloaded, removed ones retired, new ones started."""
        variants = self._models[model]
        champion = variants[CHAMPION].settings
        wanted = variant_refs(champion.model_copy(update={"routing": routing}))
        for name in [n for n in variants if n != CHAMPION]:
            old = variants[name]
            if name not in wanted or (old.settings.alias, old.settings.version) != (
                    wanted[name].alias, wanted[name].version):
                self._retire(variants.pop(name))
        for name, ref in wanted.items():
            if name not in variants:
                variants[name] = Variant(model, name, ref)
                if self._started:
                    self._supervise(variants[name])

    def _retire(self, variant: Variant) -> None:
        if variant.task is not None:
            variant.task.cancel()
        if variant.backend is not None:
            self._close_later(variant.backend)
            variant.backend = None

    async def _keep_current(self, variant: Variant) -> None:
        delay, max_delay = self._retry
        while True:
            try:
                target = await self._target(variant)
            except ModelValidationError as exc:  # the reference points nowhere (yet)
                self._note(variant, str(exc), level=logging.INFO)
                await asyncio.sleep(self._poll_s)
                continue
            except Exception as exc:  # registry unreachable...: keep serving what we have
                self._note(variant, str(exc) if isinstance(exc, RegistryUnavailable)
                           else f"registry check failed: {type(exc).__name__}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
                continue
            if target is not None and target == variant.version:
                variant.error = None  # the reference points at what is served: all is well
            if target is None or target == variant.version or target in variant.rejected:
                if target is None:
                    return  # loaded, and nothing to watch
                await asyncio.sleep(self._poll_s)
                continue
            if await self._load(variant, target):
                delay = self._retry[0]
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)

    async def _target(self, variant: Variant) -> str | None:
        """The version the variant should serve, or None when only the factory can tell."""
        if self._resolver is None or variant.settings.placement == "deployment":
            return None if variant.backend is not None else ""
        return await asyncio.to_thread(self._resolver, variant.settings)

    async def _load(self, variant: Variant, version: str) -> bool:
        """Load, validate, warm and swap in ``version`` ("" = whatever the reference names)."""
        ref = variant.settings if not version else variant.settings.model_copy(update={"version": version})
        try:
            backend = await asyncio.to_thread(self._build, ref, variant.settings.alias)
        except ModelValidationError as exc:  # a verdict on the version: refused for good
            if version:
                variant.rejected.add(version)
            self._failed(variant, str(exc))
            return bool(version)  # a refused version waits for the reference to move
        except RegistryUnavailable as exc:  # no verdict: retry with backoff, reject nothing
            self._failed(variant, str(exc))
            return False
        except Exception as exc:  # disk full, download cut...: retry with backoff
            log.exception("loading %s/%s failed unexpectedly", variant.model, variant.name)
            self._failed(variant, f"load failed: {type(exc).__name__}")
            return False
        old, variant.backend, variant.error = variant.backend, backend, None
        variant.loaded.set()
        spec = backend.spec
        self._metrics.model_loaded(variant.model, variant.name, spec.version, spec.load_seconds)
        if old is not None:
            log.info("%s/%s: swapped v%s -> v%s", variant.model, variant.name, old.spec.version, spec.version)
            self._metrics.model_swaps.labels(variant.model, variant.name).inc()
            self._close_later(old)
        return True

    def _build(self, ref: ModelSettings, alias: str | None) -> ModelBackend:
        backend = self._factory(ref)
        if ref.version and alias and backend.spec.alias != alias:
            backend.spec = replace(backend.spec, alias=alias)
        warm(backend)
        return backend

    def _failed(self, variant: Variant, error: str) -> None:
        self._note(variant, error, level=logging.ERROR)
        self._metrics.model_failed(variant.model, variant.name, serving=variant.backend is not None)

    def _note(self, variant: Variant, error: str, level: int = logging.WARNING) -> None:
        if error != variant.error:  # once per distinct problem, not once per poll
            log.log(level, "model %s/%s: %s", variant.model, variant.name, error)
        variant.error = error

    @staticmethod
    def _close_later(backend: ModelBackend, grace_s: float = 30.0) -> None:
        """Close a replaced backend once calls still running on it (in threads) are done."""
        asyncio.get_running_loop().call_later(grace_s, backend.close)

    def get(self, name: str, variant: str = CHAMPION) -> ModelBackend:
        variants = self._models.get(name)
        if variants is None:
            raise ModelNotFound(name)
        state = variants.get(variant)
        if state is None:
            raise VariantNotFound(f"model {name!r} has no variant {variant!r}")
        if state.backend is None:
            raise ModelNotReady(f"model {name!r} ({variant}) is not loaded yet")
        return state.backend

    def backend(self, name: str, variant: str) -> ModelBackend | None:
        """The variant's backend if it is serving, else None."""
        state = self._models[name].get(variant)
        return state.backend if state is not None else None

    def names(self) -> list[str]:
        return list(self._models)

    def state(self, name: str) -> Variant:
        variants = self._models.get(name)
        if variants is None:
            raise ModelNotFound(name)
        return variants[CHAMPION]

    def variants(self, name: str) -> dict[str, Variant]:
        if name not in self._models:
            raise ModelNotFound(name)
        return dict(self._models[name])

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        """Whether the gateway may take traffic, and which champions are loaded: ready only when
        at least one model is configured and every champion has a validated version."""
        loaded = {name: v[CHAMPION].backend is not None for name, v in self._models.items()}
        return bool(loaded) and all(loaded.values()), loaded

    def close(self) -> None:
        for variants in self._models.values():
            for variant in variants.values():
                if variant.task is not None:
                    variant.task.cancel()
                if variant.backend is not None:
                    variant.backend.close()
                    variant.backend = None


def warm(backend: ModelBackend, calls: int = 3) -> None:
    """Score the input example a few times so the first live request pays no first-call costs."""
    runtime = getattr(backend, "runtime", None)
    example = backend.spec.input_example
    if runtime is None or not example:
        return
    columns = {f.name: np.asarray([row.get(f.name) for row in example],
                                  dtype=NUMPY_DTYPES[f.dtype]) for f in backend.spec.inputs
               if all(f.name in row for row in example)}
    if len(columns) != len(backend.spec.inputs):
        return
    try:
        for _ in range(calls):
            runtime.predict(columns)
    except Exception:  # validation on load is the gate; warming is only an optimisation
        log.warning("warming %s v%s failed", backend.spec.name, backend.spec.version, exc_info=True)
