"""The models a gateway serves: which are ready, and how to reach each one.

A :class:`ModelTable` loads every configured model in the background, so the HTTP server answers
``/healthz`` at once and ``/readyz`` turns ready only when every model has a validated version.
A model that fails to load is retried with backoff; until then it answers 503.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

import numpy as np

from observability.metrics import GatewayMetrics
from serving.errors import ModelNotFound, ModelNotReady, ModelValidationError
from serving.runtime.base import ModelRuntime, ModelSpec
from serving.settings import ModelSettings, Settings

log = logging.getLogger(__name__)

# Rows up to this many are scored inline on the event loop (microseconds for tree models);
# larger batches go to a worker thread so they cannot stall other requests.
INLINE_MAX_ROWS = 64


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
        if rows <= INLINE_MAX_ROWS:
            return self.runtime.predict(columns)
        return await asyncio.to_thread(self.runtime.predict, columns)

    def close(self) -> None:
        self.runtime.close()


@dataclass
class ModelState:
    settings: ModelSettings
    backend: ModelBackend | None = None
    error: str | None = None


BackendFactory = Callable[[ModelSettings], ModelBackend]
"""Builds a ready backend for one model, blocking; raises ModelValidationError to refuse it."""


class ModelTable:
    def __init__(self, settings: Settings, metrics: GatewayMetrics, factory: BackendFactory,
                 retry_initial_s: float = 2.0, retry_max_s: float = 60.0) -> None:
        self._states = {m.name: ModelState(m) for m in settings.models}
        self._metrics = metrics
        self._factory = factory
        self._retry = (retry_initial_s, retry_max_s)
        self._tasks: list[asyncio.Task] = []
        for name in self._states:
            metrics.model_ready.labels(name).set(0)

    def start(self) -> None:
        """Start loading every model in the background (call from the serving event loop)."""
        self._tasks = [asyncio.create_task(self._load_until_ready(s), name=f"load-{s.settings.name}")
                       for s in self._states.values()]

    async def wait_ready(self) -> None:
        await asyncio.gather(*self._tasks)

    async def _load_until_ready(self, state: ModelState) -> None:
        delay, max_delay = self._retry
        name = state.settings.name
        while state.backend is None:
            try:
                backend = await asyncio.to_thread(self._factory, state.settings)
            except ModelValidationError as exc:
                state.error = str(exc)
            except Exception as exc:  # registry unreachable, disk full...: retry, never crash
                log.exception("loading model %s failed unexpectedly", name)
                state.error = f"load failed: {type(exc).__name__}"
            else:
                state.backend, state.error = backend, None
                self._metrics.model_loaded(name, backend.spec.version, backend.spec.load_seconds)
                return
            self._metrics.model_failed(name)
            log.error("model %s refused: %s (retrying in %.0fs)", name, state.error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)

    def get(self, name: str) -> ModelBackend:
        state = self._states.get(name)
        if state is None:
            raise ModelNotFound(name)
        if state.backend is None:
            raise ModelNotReady(f"model {name!r} is not loaded yet")
        return state.backend

    def names(self) -> list[str]:
        return list(self._states)

    def state(self, name: str) -> ModelState:
        state = self._states.get(name)
        if state is None:
            raise ModelNotFound(name)
        return state

    @property
    def ready(self) -> bool:
        return all(s.backend is not None for s in self._states.values())

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for state in self._states.values():
            if state.backend is not None:
                state.backend.close()
                state.backend = None
