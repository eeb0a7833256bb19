"""The request pipeline, in one place: decode -> features -> model -> encode, the deadline, the
fallback decision and the metrics.

Transport-free: it takes the raw JSON body and returns a plain dict or raises an
:class:`~serving.errors.MlgateError`. The HTTP layer only adapts it.

Fallback chain (entity-keyed requests): the online answer, unless the model is not ready, the
feature store fails, the row's features are missing/stale under a ``fallback`` policy, the model
raises, or the online path would pass the deadline (minus ``fallback.reserve_ms``); then the
entity's precomputed batch score if it is younger than ``fallback.max_age_s``; otherwise 503.
Bad input is never "fallen back": it is the caller's error and gets its 4xx. Which rows need a
fallback is decided by :func:`stored_inputs` (the feature policies); whether they get one or the
request fails, by :func:`fallback_or_fail` alone.

Variants: the rollout controller picks champion or canary first (sticky, serving/routing.py).
A canary that raises or uses up half the deadline is counted against it (canary analysis) and
the champion answers the request instead, so a bad canary costs latency, never an answer.
Shadows get the request after the answer is ready (serving/shadow.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

import numpy as np

from features_online.definitions import (REGRESSOR_OUTPUTS, Entity, EntityKey, FeatureView, score_view,
                                         scored_entity)
from features_online.errors import StoreUnavailable
from features_online.layout import RowKeys
from features_online.reader import ViewRead, ViewReader
from features_online.settings import FeatureSettings
from observability.metrics import UNKNOWN_MODEL, GatewayMetrics
from serving import codec, routing
from serving.codec import FeatureBinding
from serving.errors import (
    DeadlineExceeded,
    DependencyUnavailable,
    FallbackUnavailable,
    InternalError,
    MlgateError,
    ModelNotReady,
    StoredFeaturesMissing,
    StoredFeaturesStale,
    VariantNotFound,
)
from serving.catalog import Catalog, catalog_of
from serving.inference_log.recorder import InferenceLog
from serving.models import ModelBackend, ModelTable
from serving.rollout import Rollouts
from serving.routing import CANARY, CHAMPION
from serving.runtime.base import FeatureSpec, ModelSpec
from serving.settings import Settings
from serving.shadow import Mirror, ShadowMirror

log = logging.getLogger(__name__)

# Fallback reasons that are the answering variant's fault (canary analysis counts them as errors).
MODEL_FAILURES = frozenset({"model_error", "deadline_exceeded"})
# A canary gets this share of the request's deadline; if it fails, the champion has the rest.
CANARY_DEADLINE_SHARE = 0.5


@dataclass(frozen=True)
class RouteHints:
    """What the transport knows about routing: the routing-key header's value, and a variant an
    authorised caller forces."""

    key: str | None = None
    variant: str | None = None


NO_HINTS = RouteHints()


class Pipeline:
    def __init__(self, settings: Settings, models: ModelTable, metrics: GatewayMetrics,
                 store: ViewReader | None = None, scores: ViewReader | None = None,
                 rollouts: Rollouts | None = None, mirror: ShadowMirror | None = None,
                 catalog: Catalog | None = None, inference_log: InferenceLog | None = None) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics
        self.store = store
        self.scores = scores if scores is not None else store  # batch scores: the fallback
        # Which variant answers (without shared state: this process's own) and where shadows go.
        self.rollouts = rollouts if rollouts is not None else Rollouts(settings, models, metrics)
        self.mirror = mirror
        self.log = inference_log  # what each answered request saw and said (serving/inference_log)
        self.catalog = catalog if catalog is not None else catalog_of(settings, None)
        self._bindings: dict[tuple[str, str], FeatureBinding] = {}
        self._score_views: dict[str, FeatureView] = {}
        secret = settings.routing_secret
        self._routing_secret = secret.get_secret_value().encode() if secret is not None else b""

    def set_catalog(self, catalog: Catalog) -> None:
        """Serve a newly applied repository's views: bindings are made again on next use."""
        self.catalog = catalog
        self._bindings = {}
        self._score_views = {}

    def binding(self, spec: ModelSpec) -> FeatureBinding:
        key = (spec.name, spec.version)
        binding = self._bindings.get(key)
        if binding is None:
            binding = self._bindings[key] = codec.bind(spec, self.catalog.newest)
            self._score_view(spec.name, binding.entities)
        return binding

    def _score_view(self, model: str, entities: tuple[Entity, ...]) -> FeatureView | None:
        """The model's batch-score view: keyed by the entities the repository declares for it,
        else by those of the views it reads (known once it has loaded); read from then on."""
        entities = self.catalog.entities.get(model) or entities
        if not entities:
            return self._score_views.get(model)
        view = self._score_views.get(model)
        if view is None or view.entity.keys != scored_entity(model, entities).keys:
            view = score_view(model, entities, timedelta(seconds=self.settings.fallback.max_age_s))
            self._score_views[model] = view
            if self.scores is not None:
                self.scores.add_view(view)
        return view

    def inputs_of(self, name: str) -> tuple[tuple[EntityKey, ...], tuple[FeatureSpec, ...] | None]:
        """What a caller may send ``name``: its entities' key columns, and its request-time inputs
        (None while no version is loaded: then the keys are those the repository declares)."""
        backend = self.models.state(name).backend  # ModelNotFound
        if backend is None:
            return tuple(k for e in self.catalog.entities.get(name, ()) for k in e.keys), None
        binding = self.binding(backend.spec)
        return binding.key_columns, binding.request_spec.inputs

    async def predict(self, name: str, body: bytes, request_id: str,
                      hints: RouteHints = NO_HINTS, payload: Any = None, client: str | None = None) -> dict[str, Any]:
        """The answer to one request: ``body`` (mlgate's own JSON), or a ``payload`` a protocol
        codec has already decoded into the same shape. ``client``: who called (the inference
        log's ``client``)."""
        started = time.perf_counter()
        label, version, rows = (name if name in self.models else UNKNOWN_MODEL), "", 0
        variant: str | None = None  # until routed, a failure is no variant's
        # the model's inputs as the model got them, when this request is recorded
        trace: dict[str, Any] | None = {} if self.log is not None and label != UNKNOWN_MODEL and \
            self.log.sampled(name) else None
        try:
            version = self.models.state(name).version or ""  # ModelNotFound: 404 before anything else
            if payload is None:
                payload = codec.parse_json(body)
            deadline = started + codec.timeout_s(payload, self._default_timeout_s)
            if hints.variant and hints.variant not in self.models.variants(name):
                raise VariantNotFound(f"model {name!r} has no variant {hints.variant!r}")
            if hints.variant:
                variant = hints.variant
            else:
                variant = routing.assign(name, routing.routing_key(payload, hints.key),
                                         self.rollouts.canary_weight(name), self._routing_secret)
                if variant == CANARY and self.models.backend(name, CANARY) is None:
                    variant = CHAMPION  # the canary is not serving (yet): its keys stay with the champion
            if variant == CANARY and not hints.variant:
                answer = await self._try_canary(name, payload, started, deadline, trace)
                if answer is None:  # the canary failed: the champion answers instead
                    variant = CHAMPION
            if variant != CANARY or hints.variant:
                answer = await self._answer(name, variant, payload, started, deadline, forced=bool(hints.variant),
                                            trace=trace)
            predictions, spec = answer
            rows = len(predictions)
            version = spec.version if spec else predictions[0]["model_version"] or ""
        except MlgateError as exc:
            self._observe(label, variant, version, exc.code, started, rows, failed=exc.status >= 500,
                          judged=not hints.variant)
            if trace is not None and exc.status >= 500:  # the platform's failures, not callers' mistakes
                self._record(name, request_id, variant, version, payload, trace, [], started, client, exc.code)
            raise
        except Exception:
            log.exception("predict failed", extra={"request_id": request_id, "model": name})
            self._observe(label, variant, version, InternalError.code, started, rows, failed=True,
                          judged=not hints.variant)
            raise InternalError() from None
        model_failed = any(p.get("fallback_reason") in MODEL_FAILURES for p in predictions)
        first = predictions[0] if predictions else {}
        self._observe(name, variant, version, "ok", started, rows, failed=model_failed, judged=not hints.variant,
                      score=codec.score_of(first) if first.get("source") == "online" else None)
        if trace is not None:
            self._record(name, request_id, variant, version, payload, trace, predictions, started, client)
        if self.mirror is not None and not hints.variant:
            for shadow in self.rollouts.shadows_for(name):
                self.mirror.submit(Mirror(name, shadow, payload, predictions, request_id))
        return {"predictions": predictions, "model": name, "version": version, "variant": variant,
                "alias": spec.alias if spec else None, "request_id": request_id}

    def _record(self, name: str, request_id: str, variant: str | None, version: str, payload: Any,
                trace: dict[str, Any], predictions: list[dict[str, Any] | None], started: float,
                client: str | None, status: str = "ok") -> None:
        """Hand the request to the inference log: objects the pipeline already holds, unencoded."""
        keys = payload.get("entities") if isinstance(payload, dict) else None
        self.log.record(name, {"id": request_id, "t": time.time_ns() // 1000 - int((time.perf_counter() - started) * 1e6),
                               "ms": round((time.perf_counter() - started) * 1000, 3), "ver": version, "var": variant,
                               "cl": client, "st": status, "keys": keys if isinstance(keys, list) else None,
                               "in": trace.get("in"), "out": predictions}, len(predictions))

    async def _answer(self, name: str, variant: str, payload: Any, started: float, deadline: float,
                      forced: bool = False, strict: bool = False, trace: dict[str, Any] | None = None
                      ) -> tuple[list[dict[str, Any]], ModelSpec | None]:
        """The variant's answer, with the fallback chain (``strict``: model failures raise;
        ``trace``: receives the model's input columns)."""
        try:
            backend: ModelBackend | None = self.models.get(name, variant)
        except ModelNotReady as exc:  # entity-keyed requests may still get batch scores
            if forced:
                raise
            backend, not_ready = None, exc
        if codec.is_entity_keyed(payload):
            return await self._entity_predictions(name, backend, payload, started, deadline,
                                                  model_failures_raise=strict, trace=trace)
        if backend is None:
            raise not_ready
        spec = backend.spec
        instances = codec.instances_of(payload, self.settings.limits.max_instances)
        columns = codec.decode(instances, spec)
        if trace is not None:
            trace["in"] = columns
        self.metrics.observe_stage(name, "decode", time.perf_counter() - started)
        predictions = await self._infer(backend, columns, deadline)
        for p in predictions:
            p.update(source="online", model_version=spec.version)
        return predictions, spec

    async def _try_canary(self, name: str, payload: Any, started: float, deadline: float,
                          trace: dict[str, Any] | None = None
                          ) -> tuple[list[dict[str, Any]], ModelSpec | None] | None:
        """The canary's answer, or None when it failed (raised, or used up its share of the
        deadline): the failure counts against the canary and the champion answers in time."""
        canary_deadline = started + (deadline - started) * CANARY_DEADLINE_SHARE
        try:
            return await self._answer(name, CANARY, payload, started, canary_deadline, strict=True, trace=trace)
        except MlgateError as exc:
            if exc.status < 500:
                raise  # the caller's mistake: the champion would refuse it too
            reason = exc.code
        except Exception:
            log.exception("canary of %s failed: the champion answers", name)
            reason = "model_error"
        self.rollouts.observe(name, CANARY, False, time.perf_counter() - started, None)
        self.metrics.variant_requests.labels(name, CANARY, reason).inc()
        return None

    def _observe(self, model: str, variant: str | None, version: str, outcome: str, started: float, rows: int,
                 failed: bool, judged: bool = True, score: float | None = None) -> None:
        """Request metrics; and, for routed requests (``judged``: not forced to a variant), the
        canary analysis sample (the caller's own mistakes say nothing of the variant, nor does a
        request that failed before it was routed: ``variant`` None)."""
        seconds = time.perf_counter() - started
        self.metrics.observe_request(model, version, outcome, seconds, rows)
        if model != UNKNOWN_MODEL and variant is not None:
            self.metrics.child(self.metrics.variant_requests, model, variant, outcome).inc()
            if judged and (outcome == "ok" or failed):
                self.rollouts.observe(model, variant, not failed, seconds, score)

    async def replay(self, name: str, shadow: str, payload: Any, request_id: str | None = None
                     ) -> list[dict[str, Any] | None]:
        """A mirrored request on a shadow variant: the online path only, no fallback, no
        request metrics. Rows the shadow could not answer online are None. Recorded in the
        inference log (variant: the shadow's name) when ``request_id`` is given and sampled."""
        backend = self.models.get(name, shadow)
        started = time.perf_counter()
        deadline = started + codec.timeout_s(payload, self._default_timeout_s)
        trace: dict[str, Any] | None = {} if (request_id is not None and self.log is not None
                                              and self.log.sampled(name)) else None
        if codec.is_entity_keyed(payload):
            predictions, _ = await self._entity_predictions(name, backend, payload, started, deadline,
                                                            allow_fallback=False, trace=trace)
        else:
            columns = codec.decode(codec.instances_of(payload, self.settings.limits.max_instances), backend.spec)
            if trace is not None:
                trace["in"] = columns
            predictions = await self._infer(backend, columns, deadline, stages=False)
            for p in predictions:
                p.update(source="online", model_version=backend.spec.version)
        if trace is not None:
            self._record(name, request_id, shadow, backend.spec.version, payload, trace, predictions, started, None)
        return predictions

    @property
    def _default_timeout_s(self) -> float:
        return self.settings.limits.deadline_ms / 1000

    async def _infer(self, backend: ModelBackend, columns: dict[str, np.ndarray],
                     deadline: float, stages: bool = True) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(deadline - t0):
                outputs = await backend.predict(columns)
        except TimeoutError:
            raise DeadlineExceeded() from None
        t1 = time.perf_counter()
        predictions = codec.encode(outputs)
        if stages:
            self.metrics.observe_stage(backend.spec.name, "inference", t1 - t0)
            self.metrics.observe_stage(backend.spec.name, "encode", time.perf_counter() - t1)
        return predictions

    async def _entity_predictions(self, name: str, backend: ModelBackend | None, payload: dict[str, Any],
                                  started: float, deadline: float, allow_fallback: bool = True,
                                  model_failures_raise: bool = False, trace: dict[str, Any] | None = None
                                  ) -> tuple[list[dict[str, Any]], ModelSpec | None]:
        """Online answers for entity-keyed rows, with batch scores for the rows that need them
        (without ``allow_fallback``, those rows are None and failures raise;
        ``model_failures_raise``: a failing or slow model raises instead of falling back)."""
        scores = self.scores if allow_fallback and self.settings.fallback.enabled else None
        online_deadline = deadline - (self.settings.fallback.reserve_ms / 1000 if scores is not None else 0)
        limit = self.settings.limits.max_instances
        if backend is None:  # the model is not ready: batch scores need only the entity keys
            not_ready = ModelNotReady(f"model {name!r} is not loaded yet")
            view = self._score_view(name, ())
            if view is None:  # no entities declared: nothing to key a batch score by
                raise not_ready
            rows = codec.entity_keys(payload, view.entity.keys, limit)
            return await self._fallback(name, rows, dict.fromkeys(range(rows.n), "model_not_ready"),
                                        [None] * rows.n, deadline, scores, not_ready), None
        spec = backend.spec
        binding = self.binding(spec)
        rows, request_rows = codec.entity_rows(payload, binding, limit)
        request_columns = codec.decode(request_rows, binding.request_spec)
        if trace is not None:  # until the stored features are in (the store may be down)
            trace["in"] = request_columns
        ids_by_view = {view.name: rows.keys(view.entity) for view in binding.views}
        n = rows.n
        t_decoded = time.perf_counter()
        self.metrics.observe_stage(name, "decode", t_decoded - started)
        try:
            if self.store is None:
                raise StoreUnavailable("no online feature store is configured")
            reads = await self.store.read(ids_by_view, timeout_s=max(online_deadline - t_decoded, 0.001))
        except StoreUnavailable as exc:
            return await self._fallback(name, rows, dict.fromkeys(range(n), "feature_store_unavailable"),
                                        [None] * n, deadline, scores, DependencyUnavailable(exc.message),
                                        binding.entities), spec
        stored, provenance, to_fallback = stored_inputs(binding, reads, self.settings.features, self.metrics)
        self.metrics.observe_stage(name, "features", time.perf_counter() - t_decoded)
        online = [i for i in range(n) if i not in to_fallback]
        answers: list[dict[str, Any] | None] = [None] * n
        if online:
            columns = codec.merge(stored, request_columns, spec.feature_names)
            if trace is not None:
                trace["in"] = columns
            if len(online) < n:
                columns = {k: v[online] for k, v in columns.items()}
            try:
                for row, prediction in zip(online, await self._infer(backend, columns, online_deadline)):
                    answers[row] = {**prediction, "source": "online", "model_version": spec.version}
            except Exception as exc:  # a slow or failing model: its rows fall back, if they may
                if model_failures_raise or scores is None:
                    raise
                reason = "deadline_exceeded" if isinstance(exc, DeadlineExceeded) else "model_error"
                if reason == "model_error":
                    log.exception("model %s v%s failed: serving batch scores", name, spec.version)
                to_fallback.update(dict.fromkeys(online, reason))
        if to_fallback and allow_fallback:
            answers = await self._fallback(name, rows, to_fallback, answers, deadline, scores, None,
                                           binding.entities)
        for answer, origin in zip(answers, provenance):
            if answer is not None:
                answer["features"] = origin
        return answers, spec

    async def _fallback(self, name: str, rows: codec.EntityRows, reasons: dict[int, str],
                        answers: list[dict[str, Any] | None], deadline: float, scores: ViewReader | None,
                        cause: MlgateError | None, entities: tuple[Entity, ...] = ()) -> list[dict[str, Any]]:
        """``entities``: those of the views the loaded model reads (its scores' keys when the
        repository declares none for it; none while it has not loaded)."""
        t0 = time.perf_counter()
        view = self._score_view(name, entities) if scores is not None else None
        if scores is not None and view is None:  # entities unknown: no batch score to look up
            scores = None
        keys = rows.keys(view.entity) if view is not None else []
        found = await fallback_or_fail(scores, self.metrics, name, keys, reasons, cause,
                                       max(deadline - t0, 0.001))
        self.metrics.observe_stage(name, "fallback", time.perf_counter() - t0)
        return [found.get(i, answer) for i, answer in enumerate(answers)]

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
                keys = dict(entity)
                for other in binding.views[1:]:  # a second entity: one of its stored keys too
                    if not set(other.entity.key_names) <= keys.keys():
                        try:
                            keys.update(await self.store.sample_entity(other.name) or {})
                        except Exception:
                            pass
                if set(keys) == {k.name for k in binding.key_columns}:
                    request = {f.name: row.get(f.name) for f in binding.request_spec.inputs}
                    return {"entities": [keys], "features": request}
        return {"instances": [row]}

    def reject(self, name: str, error: MlgateError, started: float) -> None:
        """Count a request the transport refused before it reached the pipeline."""
        label = name if name in self.models else UNKNOWN_MODEL
        self.metrics.observe_request(label, "", error.code, time.perf_counter() - started)


def stored_inputs(binding: FeatureBinding, reads: Mapping[str, ViewRead], policy: FeatureSettings,
                  metrics: GatewayMetrics) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], dict[int, str]]:
    """Model input columns from stored values (or defaults, by policy), per-row provenance, and
    the rows the policy sends to the batch-score fallback (row -> reason). Raises 422 under an
    ``error`` policy."""
    columns: dict[str, np.ndarray] = {}
    n = len(next(iter(reads.values())).present)
    provenance: list[dict[str, Any]] = [{} for _ in range(n)]
    fallback: dict[int, str] = {}
    for newest, features in zip(binding.views, binding.by_view.values()):
        name = newest.name
        read = reads[name]
        view = read.view  # the schema version served: an older one may lack newer features
        on_missing = newest.on_missing or policy.on_missing
        on_stale = newest.on_stale or policy.on_stale
        missing, stale = ~read.present, read.stale
        if on_missing == "error" and missing.any():
            raise StoredFeaturesMissing(f"entities[{int(np.argmax(missing))}]: no {name} features stored")
        if on_stale == "error" and stale.any():
            raise StoredFeaturesStale(f"entities[{int(np.argmax(stale))}]: {name} features older than "
                                      f"{int(view.ttl.total_seconds())}s")
        for reason, mask, rule in (("features_missing", missing, on_missing),
                                   ("features_stale", stale, on_stale)):
            if rule == "fallback":
                for row in np.flatnonzero(mask).tolist():
                    fallback.setdefault(row, reason)
        use_default = missing | (stale if on_stale == "default" else np.zeros(n, bool))
        any_default = bool(use_default.any())
        stored = set(view.feature_names)
        for feature in newest.features:
            if feature.name not in features:
                continue
            if feature.name in stored:
                values = read.records[feature.name]
                if any_default:
                    values = np.where(use_default, feature.default, values)
            else:  # added by the newest schema, not synced yet: its default
                values = np.full(n, feature.default)
            # In the signature's dtype: schema-enforcing runtimes check it.
            qualified = newest.qualified(feature.name)
            columns[qualified] = values.astype(binding.stored_dtypes[qualified], copy=False)
        for i in range(n):
            provenance[i][name] = _origin(bool(missing[i]), bool(stale[i]), bool(use_default[i]),
                                          float(read.age_s[i]))
        fresh = int(n - missing.sum() - stale.sum())
        for status, count in (("fresh", fresh), ("stale", int(stale.sum())), ("missing", int(missing.sum()))):
            if count:
                metrics.child(metrics.feature_rows, name, status).inc(count)
    return columns, provenance, fallback


def _origin(missing: bool, stale: bool, default: bool, age_s: float) -> dict[str, Any]:
    if missing:
        return {"source": "default", "status": "missing"}
    return {"source": "default" if default else "online_store",
            "status": "stale" if stale else "fresh", "age_s": round(age_s, 3)}


async def fallback_or_fail(scores: ViewReader | None, metrics: GatewayMetrics, model: str, keys: RowKeys,
                           reasons: dict[int, str], cause: MlgateError | None, timeout_s: float
                           ) -> dict[int, dict[str, Any]]:
    """The one decision "serve a fallback or fail", for the rows in ``reasons`` (row -> why the
    online path cannot answer it): each row's batch score, or an error. ``keys``: every row's
    key in the model's score view.

    - no score store (fallbacks off, a shadow's replay, no entities to key scores by): ``cause``,
      the error the online path met, is raised (a 4xx policy error never reaches here);
    - the scores cannot be read in time: 503 ``fallback_unavailable``, with why they were needed;
    - a row's score is missing or older than ``fallback.max_age_s``: 503 naming the first such row;
    - else every row's score under the model's own output names (``label`` and ``probability``
      for a classifier, ``prediction`` for a regressor, as the batch job recorded them), with its
      source, model version, reason and age.
    """
    if scores is None:
        raise cause or FallbackUnavailable(f"{_why(reasons)}, and fallbacks are off")
    rows = sorted(reasons)
    view_name = f"score.{model}"
    wanted = keys[rows] if isinstance(keys, np.ndarray) else [keys[r] for r in rows]
    try:
        read = (await scores.read({view_name: wanted}, timeout_s))[view_name]
    except StoreUnavailable as exc:
        raise FallbackUnavailable(f"{_why(reasons)}, and batch scores are unreachable: {exc.message}") from None
    usable = read.present & ~read.stale
    if not usable.all():
        first = int(np.argmin(usable))
        problem = "too old" if read.present[first] else "missing"
        raise FallbackUnavailable(f"entities[{rows[first]}]: {reasons[rows[first]]}, and its batch score is {problem}")
    live = scores.live(view_name)
    extra = live.extra if live else {}
    version = extra.get("model_version")
    regressor = extra.get("outputs") == REGRESSOR_OUTPUTS
    labels, values = read.records["label"].tolist(), read.records["score"].tolist()
    answers = {}
    for i, row in enumerate(rows):
        answer = {"prediction": values[i]} if regressor else {"label": labels[i], "probability": values[i]}
        answers[row] = {**answer, "source": "batch_fallback", "model_version": version,
                        "fallback_reason": reasons[row], "score_age_s": round(float(read.age_s[i]), 3)}
    for reason in set(reasons.values()):
        metrics.fallback_rows.labels(model, reason).inc(sum(1 for r in reasons.values() if r == reason))
    return answers


def _why(reasons: dict[int, str]) -> str:
    return ", ".join(sorted(set(reasons.values())))
