"""The request pipeline, in one place: decode -> features -> model -> encode, with deadline and
metrics.

Transport-free: it takes the raw JSON body and returns a plain dict or raises an
:class:`~serving.errors.MlgateError`. The HTTP layer only adapts it. Later stages (routing,
fallbacks) are added here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from features_online.reader import OnlineStore
from observability.metrics import UNKNOWN_MODEL, GatewayMetrics
from serving import codec, features
from serving.errors import DeadlineExceeded, DependencyUnavailable, InternalError, MlgateError
from serving.models import ModelTable
from serving.runtime.base import ModelSpec
from serving.settings import Settings

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, settings: Settings, models: ModelTable, metrics: GatewayMetrics,
                 store: OnlineStore | None = None) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics
        self.store = store
        self._deadline_s = settings.limits.deadline_ms / 1000
        self._bindings: dict[tuple[str, str], features.FeatureBinding] = {}

    def binding(self, spec: ModelSpec) -> features.FeatureBinding:
        key = (spec.name, spec.version)
        if key not in self._bindings:
            self._bindings[key] = features.bind(spec)
        return self._bindings[key]

    async def predict(self, name: str, body: bytes, request_id: str) -> dict[str, Any]:
        started = time.perf_counter()
        deadline = started + self._deadline_s
        label, version, rows = (name if self.settings.model(name) else UNKNOWN_MODEL), "", 0
        try:
            backend = self.models.get(name)
            spec = backend.spec
            version = spec.version
            payload = codec.parse_json(body)
            provenance = None
            if isinstance(payload, dict) and "entities" in payload:
                columns, provenance = await self._entity_inputs(payload, spec, deadline)
            else:
                instances = codec.instances_of(payload, self.settings.limits.max_instances)
                columns = codec.decode(instances, spec)
                self.metrics.observe_stage(name, "decode", time.perf_counter() - started)
            rows = len(next(iter(columns.values())))
            t_inputs = time.perf_counter()
            try:
                async with asyncio.timeout(deadline - t_inputs):
                    outputs = await backend.predict(columns)
            except TimeoutError:
                raise DeadlineExceeded() from None
            t_inferred = time.perf_counter()
            self.metrics.observe_stage(name, "inference", t_inferred - t_inputs)
            predictions = codec.encode(outputs)
            if provenance is not None:
                for prediction, origin in zip(predictions, provenance):
                    prediction["features"] = origin
            self.metrics.observe_stage(name, "encode", time.perf_counter() - t_inferred)
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
                "alias": spec.alias, "request_id": request_id}

    async def _entity_inputs(self, payload: dict[str, Any], spec: ModelSpec, deadline: float):
        """Model inputs for entity-keyed rows: stored features (one store round trip) plus the
        request-time values the caller sent."""
        t0 = time.perf_counter()
        binding = self.binding(spec)
        ids, request_rows = features.entity_rows(payload, binding, self.settings.limits.max_instances)
        request_columns = codec.decode(request_rows, binding.request_spec)
        t1 = time.perf_counter()
        self.metrics.observe_stage(spec.name, "decode", t1 - t0)
        if self.store is None:
            raise DependencyUnavailable("no online feature store is configured")
        reads = await self.store.read(ids, timeout_s=max(deadline - t1, 0.001))
        stored, provenance = features.assemble(binding, reads, self.settings.features, self.metrics)
        self.metrics.observe_stage(spec.name, "features", time.perf_counter() - t1)
        return features.merge(stored, request_columns, spec.feature_names), provenance

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
