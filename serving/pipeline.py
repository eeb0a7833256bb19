"""The request pipeline, in one place: decode -> features -> model -> encode, the deadline, the
fallback decision and the metrics.

Transport-free: it takes the raw JSON body and returns a plain dict or raises an
:class:`~serving.errors.MlgateError`. The HTTP layer only adapts it.

Fallback chain (entity-keyed requests): the online answer, unless the model is not ready, the
feature store fails, the row's features are missing/stale under a ``fallback`` policy, the model
raises, or the online path would pass the deadline (minus ``fallback.reserve_ms``); then the
entity's precomputed batch score if it is younger than ``fallback.max_age_s``; otherwise 503.
Bad input is never "fallen back": it is the caller's error and gets its 4xx.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from features_online.reader import OnlineStore
from observability.metrics import UNKNOWN_MODEL, GatewayMetrics
from serving import codec, fallback, features
from serving.errors import (
    DeadlineExceeded,
    DependencyUnavailable,
    InternalError,
    InvalidRequest,
    MlgateError,
    ModelNotReady,
)
from serving.models import ModelBackend, ModelTable
from serving.runtime.base import ModelSpec
from serving.settings import Settings

log = logging.getLogger(__name__)

MAX_TIMEOUT_MS = 60_000


class Pipeline:
    def __init__(self, settings: Settings, models: ModelTable, metrics: GatewayMetrics,
                 store: OnlineStore | None = None, scores: OnlineStore | None = None) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics
        self.store = store
        self.scores = scores if scores is not None else store  # batch scores: the fallback
        self._bindings: dict[tuple[str, str], features.FeatureBinding] = {}

    def binding(self, spec: ModelSpec) -> features.FeatureBinding:
        key = (spec.name, spec.version)
        if key not in self._bindings:
            self._bindings[key] = features.bind(spec)
        return self._bindings[key]

    async def predict(self, name: str, body: bytes, request_id: str) -> dict[str, Any]:
        started = time.perf_counter()
        label, version, rows = (name if self.settings.model(name) else UNKNOWN_MODEL), "", 0
        try:
            try:
                backend: ModelBackend | None = self.models.get(name)  # ModelNotFound: 404
                version = backend.spec.version
            except ModelNotReady as exc:  # entity-keyed requests may still get batch scores
                backend, not_ready = None, exc
            payload = codec.parse_json(body)
            deadline = started + self._timeout_s(payload)
            if isinstance(payload, dict) and "entities" in payload:
                predictions, spec = await self._entity_predictions(name, backend, payload, started, deadline)
            else:
                if backend is None:
                    raise not_ready
                spec = backend.spec
                instances = codec.instances_of(payload, self.settings.limits.max_instances)
                columns = codec.decode(instances, spec)
                self.metrics.observe_stage(name, "decode", time.perf_counter() - started)
                predictions = await self._infer(backend, columns, deadline)
                for p in predictions:
                    p.update(source="online", model_version=spec.version)
            rows = len(predictions)
            version = spec.version if spec else predictions[0]["model_version"] or ""
        except MlgateError as exc:
            self.metrics.observe_request(label, version, exc.code, time.perf_counter() - started, rows)
            raise
        except Exception:
            log.exception("predict failed", extra={"request_id": request_id, "model": name})
            self.metrics.observe_request(label, version, InternalError.code,
                                         time.perf_counter() - started, rows)
            raise InternalError() from None
        self.metrics.observe_request(name, version, "ok", time.perf_counter() - started, rows)
        return {"predictions": predictions, "model": name, "version": version,
                "alias": spec.alias if spec else None, "request_id": request_id}

    def _timeout_s(self, payload: Any) -> float:
        """The request's own ``timeout_ms`` if it sent one, else the configured deadline."""
        given = payload.get("timeout_ms") if isinstance(payload, dict) else None
        if given is None:
            return self.settings.limits.deadline_ms / 1000
        if type(given) is not int or not 1 <= given <= MAX_TIMEOUT_MS:
            raise InvalidRequest(f"timeout_ms: expected an integer from 1 to {MAX_TIMEOUT_MS}")
        return given / 1000

    async def _infer(self, backend: ModelBackend, columns: dict[str, np.ndarray],
                     deadline: float) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(deadline - t0):
                outputs = await backend.predict(columns)
        except TimeoutError:
            raise DeadlineExceeded() from None
        t1 = time.perf_counter()
        self.metrics.observe_stage(backend.spec.name, "inference", t1 - t0)
        predictions = codec.encode(outputs)
        self.metrics.observe_stage(backend.spec.name, "encode", time.perf_counter() - t1)
        return predictions

    async def _entity_predictions(self, name: str, backend: ModelBackend | None, payload: dict[str, Any],
                                  started: float, deadline: float
                                  ) -> tuple[list[dict[str, Any]], ModelSpec | None]:
        """Online answers for entity-keyed rows, with batch scores for the rows that need them."""
        use_fallback = self.settings.fallback.enabled and self.scores is not None
        online_deadline = deadline - (self.settings.fallback.reserve_ms / 1000 if use_fallback else 0)
        if backend is None:
            if not use_fallback:
                self.models.get(name)  # raises ModelNotReady again
            ids = features.entity_ids(payload, self.settings.limits.max_instances)
            return await self._fallback(name, ids, dict.fromkeys(range(len(ids)), "model_not_ready"),
                                        [None] * len(ids), deadline), None
        spec = backend.spec
        binding = self.binding(spec)
        ids_by_view, request_rows = features.entity_rows(payload, binding, self.settings.limits.max_instances)
        request_columns = codec.decode(request_rows, binding.request_spec)
        ids = next(iter(ids_by_view.values()))
        t_decoded = time.perf_counter()
        self.metrics.observe_stage(name, "decode", t_decoded - started)
        if self.store is None:
            raise DependencyUnavailable("no online feature store is configured")
        n = len(ids)
        try:
            reads = await self.store.read(ids_by_view, timeout_s=max(online_deadline - t_decoded, 0.001))
        except DependencyUnavailable:
            if not use_fallback:
                raise
            return await self._fallback(name, ids, dict.fromkeys(range(n), "feature_store_unavailable"),
                                        [None] * n, deadline), spec
        stored, provenance, to_fallback = features.assemble(binding, reads, self.settings.features, self.metrics)
        self.metrics.observe_stage(name, "features", time.perf_counter() - t_decoded)
        online = [i for i in range(n) if i not in to_fallback]
        answers: list[dict[str, Any] | None] = [None] * n
        if online:
            columns = features.merge(stored, request_columns, spec.feature_names)
            if len(online) < n:
                columns = {k: v[online] for k, v in columns.items()}
            try:
                for row, prediction in zip(online, await self._infer(backend, columns, online_deadline)):
                    answers[row] = {**prediction, "source": "online", "model_version": spec.version}
            except DeadlineExceeded:
                if not use_fallback:
                    raise
                to_fallback.update(dict.fromkeys(online, "deadline_exceeded"))
            except Exception:
                if not use_fallback:
                    raise
                log.exception("model %s v%s failed: serving batch scores", name, spec.version)
                to_fallback.update(dict.fromkeys(online, "model_error"))
        if to_fallback:
            answers = await self._fallback(name, ids, to_fallback, answers, deadline)
        for answer, origin in zip(answers, provenance):
            answer["features"] = origin
        return answers, spec

    async def _fallback(self, name: str, ids: np.ndarray, reasons: dict[int, str],
                        answers: list[dict[str, Any] | None], deadline: float) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        scores = await fallback.batch_scores(self.scores, self.metrics, name, ids, reasons,
                                             max(deadline - t0, 0.001))
        self.metrics.observe_stage(name, "fallback", time.perf_counter() - t0)
        return [scores.get(i, answer) for i, answer in enumerate(answers)]

    async def example_request(self, spec: ModelSpec) -> dict[str, Any]:
        """A ready-to-send body: entity-keyed with a real stored entity when the model uses
        feature views and the store has one, else the logged input example's first row."""
        binding = self.binding(spec)
        row = dict(spec.input_example[0]) if spec.input_example else {}
        if binding.by_view and self.store is not None:
            view = binding.views[0]
            try:
                entity = await self.store.sample_entity(view.name)
            except Exception:  # the example is a convenience: never fail describe on it
                entity = None
            if entity is not None:
                request = {f.name: row.get(f.name) for f in binding.request_spec.inputs}
                return {"entities": [{view.entity.key: entity}], "features": request}
        return {"instances": [row]}

    def reject(self, name: str, error: MlgateError, started: float) -> None:
        """Count a request the transport refused before it reached the pipeline."""
        label = name if self.settings.model(name) else UNKNOWN_MODEL
        self.metrics.observe_request(label, "", error.code, time.perf_counter() - started)
