"""The request pipeline, in one place: decode -> model -> encode, with deadline and metrics.

Transport-free: it takes the raw JSON body and returns a plain dict or raises an
:class:`~serving.errors.MlgateError`. The HTTP layer only adapts it. Later stages (online
features, routing, fallbacks) are added here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from observability.metrics import UNKNOWN_MODEL, GatewayMetrics
from serving import codec
from serving.errors import DeadlineExceeded, InternalError, MlgateError
from serving.models import ModelTable
from serving.settings import Settings

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, settings: Settings, models: ModelTable, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics
        self._deadline_s = settings.limits.deadline_ms / 1000

    async def predict(self, name: str, body: bytes, request_id: str) -> dict[str, Any]:
        started = time.perf_counter()
        label, version, rows = (name if self.settings.model(name) else UNKNOWN_MODEL), "", 0
        try:
            backend = self.models.get(name)
            spec = backend.spec
            version = spec.version
            instances = codec.instances_of(codec.parse_json(body), self.settings.limits.max_instances)
            rows = len(instances)
            columns = codec.decode(instances, spec)
            t_decoded = time.perf_counter()
            self.metrics.observe_stage(name, "decode", t_decoded - started)
            try:
                async with asyncio.timeout(self._deadline_s - (t_decoded - started)):
                    outputs = await backend.predict(columns)
            except TimeoutError:
                raise DeadlineExceeded() from None
            t_inferred = time.perf_counter()
            self.metrics.observe_stage(name, "inference", t_inferred - t_decoded)
            predictions = codec.encode(outputs)
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

    def reject(self, name: str, error: MlgateError, started: float) -> None:
        """Count a request the transport refused before it reached the pipeline."""
        label = name if self.settings.model(name) else UNKNOWN_MODEL
        self.metrics.observe_request(label, "", error.code, time.perf_counter() - started)
