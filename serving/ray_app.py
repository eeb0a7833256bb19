"""Ray Serve glue: the gateway ingress deployment, model deployments, and the app builder.

``build(args)`` is the import path for ``serve run`` / ``serve deploy`` / ``mlgate serve``
(see serving/config/serve.yaml). Everything here only adapts the transport-free pieces:
settings -> model table -> pipeline -> FastAPI app.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any, Mapping

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from features_online.errors import StoreUnavailable
from features_online.reader import ViewReader
from features_online.redis_client import connect_async
from features_online.repository import Repository
from observability.metrics import GatewayMetrics
from serving import codec
from serving.auth.authenticator import check_exposure
from serving.auth.quota import Limiter
from serving.catalog import Catalog, catalog_of, changes
from serving.drift_watch import DriftWatcher
from serving.http.app import authenticator, build_app
from serving.http.predict_route import PredictRoute
from serving.http.server import ReplicaServer
from serving.inference_log.recorder import InferenceLog
from serving.launcher import GATEWAY
from serving.lineage import LineageCache
from serving.models import InProcessModel, ModelBackend, ModelTable
from serving.pipeline import Pipeline
from serving.registry import Registry
from serving.repo_watch import RepositoryWatcher
from serving.rollout import Rollouts
from serving.rpc.proto import protocol
from serving.rpc.server import GrpcServer
from serving.rpc.service import InferenceService
from serving.runtime.base import ModelSpec, predict_async
from serving.runtime.loader import load_model
from serving.settings import BatchingSettings, ModelSettings, RoutingSettings, Settings
from serving.shadow import ShadowMirror

log = logging.getLogger(__name__)


def model_deployment_name(model: str) -> str:
    return f"model-{model}"


def _load(settings: Settings, model: ModelSettings):
    return load_model(model, tracking_uri=settings.tracking_uri,
                      cache_dir=settings.state_dir / "models", onnx=settings.onnx,
                      require_digest=settings.registry.require_digest)


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
class ModelDeployment:
    """One model in its own replicas; concurrent calls are merged by ``@serve.batch``."""

    def __init__(self, settings: dict[str, Any], model: str) -> None:
        self._settings = Settings(**settings)
        self._runtime = _load(self._settings, self._settings.model(model))
        self.reconfigure(self._settings.batching.model_dump())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live batching knobs from the Serve config's ``user_config`` (no restart)."""
        batching = BatchingSettings(**user_config)
        self.predict.set_max_batch_size(batching.max_batch_size)
        self.predict.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    def describe(self) -> ModelSpec:
        return self._runtime.spec

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.001)
    async def predict(self, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        merged = codec.concat(batches)
        sizes = [len(next(iter(b.values()))) for b in batches]
        return codec.split(await predict_async(self._runtime, merged, sum(sizes)), sizes)


class DeploymentModel:
    """A model reached through a Ray Serve handle (``placement: deployment``).

    Built in a loader thread: the handle is only called from the replica's event loop ``loop``,
    which Ray requires when its router shares that loop (``RAY_SERVE_THROUGHPUT_OPTIMIZED``)."""

    def __init__(self, handle: DeploymentHandle, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = handle
        self.spec: ModelSpec = asyncio.run_coroutine_threadsafe(self._describe(), loop).result()

    async def _describe(self) -> ModelSpec:
        return await self._handle.describe.remote()

    async def predict(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await self._handle.predict.remote(dict(columns))

    def close(self) -> None:
        pass


@serve.deployment(name=GATEWAY, max_ongoing_requests=256)
@serve.ingress()
class Gateway:
    """The HTTP ingress. In-process models are loaded here; the app is built after init.

    ``user_config`` (live, no restart): ``{"routing": {<model>: <RoutingSettings>}}``.
    """

    async def __init__(self, settings: dict[str, Any],
                       handles: dict[str, DeploymentHandle] | None = None) -> None:
        self._settings = Settings(**settings)
        logging.getLogger("serving").setLevel(self._settings.log_level)
        for host in self._settings.bind_hosts():  # a chart without credentials
            check_exposure(host, self._settings.auth)
        metrics = GatewayMetrics()
        handles = handles or {}
        registry = self._registry = Registry(self._settings.tracking_uri)
        self._lineage = LineageCache(registry.lineage)
        loop = asyncio.get_running_loop()

        def backend(model: ModelSettings) -> ModelBackend:
            if model.placement == "deployment":
                loaded: ModelBackend = DeploymentModel(handles[model.name], loop)
            else:
                loaded = InProcessModel(_load(self._settings, model), metrics)
            # refuses models asking for features no view of the applied repository provides
            codec.bind(loaded.spec, self._catalog.newest)
            return loaded

        self._store = ViewReader(self._settings.redis, self._settings.features, {}, metrics)
        self._scores = self._store
        if self._settings.fallback.redis is not None:
            self._scores = ViewReader(self._settings.fallback.redis, self._settings.features, {}, metrics)
        # the applied feature repository: its views and models, before anything loads
        self._catalog = catalog_of(self._settings, None)
        self._watcher = RepositoryWatcher(self._store.client, self._settings.redis.prefix,
                                          self._settings.features.repository_poll_s, self._adopt)
        await self._watcher.check()
        self._set_views(self._catalog)
        await self._store.start()
        if self._scores is not self._store:
            await self._scores.start()
        self._models = ModelTable(self._settings, metrics, backend, resolver=registry.resolve,
                                  models=self._catalog.models)
        self._models.start()
        self._rollouts = Rollouts(self._settings, self._models, metrics, self._store.client,
                                  on_rollback=registry.record_rollback, served=self._catalog.models)
        self._rollouts.start()  # routing comes in reconfigure(), which Ray calls right after
        self._pipeline = Pipeline(self._settings, self._models, metrics, self._store, self._scores,
                                  self._rollouts, catalog=self._catalog)
        self._watcher.start()
        self._drift = DriftWatcher(self._store.client, self._settings.redis.prefix, self._models.names, metrics)
        self._drift.start()
        rollout = self._settings.rollout
        self._pipeline.mirror = ShadowMirror(self._pipeline.replay, metrics, rollout.shadow_queue,
                                             rollout.shadow_concurrency)
        self._pipeline.mirror.start()
        self._pipeline.log = self._inference_log(metrics)
        self._limiter = self._quota_limiter(metrics)
        # Behind a load balancer (HAProxy ingress, several replicas, a rolling update) a replica
        # gets traffic as soon as this returns: answer from loaded models, not from fallbacks.
        try:
            await asyncio.wait_for(self._models.wait_ready(), self._settings.ray.replica_ready_timeout_s)
        except TimeoutError:
            log.warning("champions not loaded after %.0fs: serving anyway (see /readyz)",
                        self._settings.ray.replica_ready_timeout_s)
        self._server: ReplicaServer | None = None
        self._admin_server: ReplicaServer | None = None
        self._grpc_server: GrpcServer | None = None
        http, admin = self._settings.http, self._settings.admin
        if http.ingress == "reuseport":  # listens once Ray has passed the live routing: _serve_http
            self._server = self._replica_server(http.host, http.port, admin_api=admin.port is None)
            if admin.port is not None:
                self._admin_server = self._replica_server(admin.host or http.host, admin.port, admin_api=True)
        if self._settings.protocols.grpc.enabled:  # with any ingress: every replica binds the port
            self._grpc_server = self._rpc_server()  # itself (SO_REUSEPORT when several share a node)

    def _replica_server(self, host: str, port: int, admin_api: bool) -> ReplicaServer:
        http = self._settings.http
        app = build_app(self._pipeline, on_admin_change=self._registry.record_admin_change,
                        limiter=self._limiter, admin_api=admin_api, host=host, lineage=self._lineage)
        return ReplicaServer(app, host, port, http.drain_s, http.keep_alive_s, http.header_timeout_s,
                             http.max_header_bytes, http.max_connections, http.backlog,
                             http.tls_certfile, http.tls_keyfile)

    def _rpc_server(self) -> GrpcServer:
        """The OIP v2 gRPC server: a predict route of its own (an authenticator for its own bind
        address, an in-flight limit of its own) over the same pipeline and quota limiter."""
        settings, host = self._settings, self._settings.grpc_host
        route = PredictRoute(self._pipeline, authenticator(settings, host), self._limiter)
        return GrpcServer(InferenceService(route, protocol()), host, settings.protocols.grpc.port,
                          settings.protocols.grpc.max_message_bytes, settings.http.drain_s,
                          settings.http.tls_certfile, settings.http.tls_keyfile)

    def _inference_log(self, metrics: GatewayMetrics) -> InferenceLog | None:
        """The inference log's writer, on a Redis pool of its own (its writes must not queue
        behind or ahead of feature reads), when the log is on."""
        settings = self._settings.inference_log
        if not settings.enabled:
            return None
        redis = settings.redis or self._settings.redis
        recorder = InferenceLog(settings, connect_async(redis), redis.prefix, metrics)
        recorder.start()
        return recorder

    def _quota_limiter(self, metrics: GatewayMetrics) -> Limiter | None:
        """Request quotas, in the quota Redis if one is set, else the feature store's (own pool)."""
        quotas = self._settings.auth.quotas
        if not self._settings.auth.quotas_enabled:  # an API key's own limit counts too
            return None
        redis = quotas.redis or self._settings.redis
        # a pool of its own: many callers' leases at once must not starve feature reads, nor
        # feature reads make the quota store look down
        return Limiter(quotas, connect_async(redis), redis.prefix, metrics, self._models)

    def _set_views(self, catalog: Catalog) -> None:
        score_views = catalog.score_views(timedelta(seconds=self._settings.fallback.max_age_s))
        if self._scores is self._store:
            self._store.set_views({**catalog.views, **score_views})
        else:
            self._store.set_views(catalog.views)
            self._scores.set_views(score_views)

    async def _adopt(self, repo: Repository | None) -> None:
        """Serve a newly applied repository: its views (read from the next refresh, which runs
        now), then its models: new ones start loading, removed ones retire, changed ones reload,
        and a model whose routing alone changed is rerouted in place (no reload)."""
        old, new = self._catalog, catalog_of(self._settings, repo)
        self._catalog = new
        self._set_views(new)
        pipeline = getattr(self, "_pipeline", None)
        if pipeline is None:  # at start: the model table is built from the catalog next
            return
        pipeline.set_catalog(new)
        try:
            await self._store.refresh()
            if self._scores is not self._store:
                await self._scores.refresh()
        except StoreUnavailable:
            pass  # the refresh loop keeps trying
        change = changes(old, new)
        for name in change.removed:
            self._rollouts.remove(name)
            self._models.remove(name)
        for model in change.added:
            self._models.add(model)
            self._rollouts.add(model)
        for model in change.rerouted:  # the champion keeps serving; canary and shadows follow
            await self._rollouts.configure(model.name, model.routing)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live routing: validate every model's new routing first, then apply them."""
        routing = {name: RoutingSettings(**value) for name, value in (user_config.get("routing") or {}).items()}
        unknown = set(routing) - set(self._models.names())
        if unknown:
            raise ValueError(f"user_config routing names models not served here: {sorted(unknown)}")
        for name, value in routing.items():
            await self._rollouts.configure(name, value)
        await self._serve_http()

    async def _serve_http(self) -> None:
        """Start this replica's own HTTP server (``reuseport``) if it has not started: after the
        first ``reconfigure``, so that no request is routed with routing Ray has not passed yet."""
        for server in (self._server, self._admin_server, self._grpc_server):
            if server is not None and not server.started:
                await server.start()

    def __serve_build_asgi_app__(self):
        # Ray's middleware sets X-Request-ID
        return build_app(self._pipeline, echo_request_id=False, on_admin_change=self._registry.record_admin_change,
                         limiter=self._limiter, lineage=self._lineage)

    async def check_health(self) -> None:
        """Replica liveness for Ray Serve. Readiness (models loaded) is /readyz."""
        await self._serve_http()  # a deployment whose user_config Ray never passes
        for server in (self._server, self._admin_server, self._grpc_server):
            if server is not None and not server.alive:
                raise RuntimeError("the replica's HTTP or gRPC server stopped")

    async def __del__(self) -> None:
        for name in ("_server", "_admin_server", "_grpc_server"):
            server = getattr(self, name, None)
            if server is not None:
                await server.stop()  # first: no new requests reach a replica that is closing down
        pipeline = getattr(self, "_pipeline", None)
        if pipeline is not None and pipeline.mirror is not None:
            pipeline.mirror.close()
        if pipeline is not None and pipeline.log is not None:  # requests have stopped: write what is held
            await pipeline.log.close()
        for watcher in (getattr(self, "_watcher", None), getattr(self, "_drift", None)):
            if watcher is not None:
                watcher.close()
        for part in (getattr(self, "_rollouts", None), getattr(self, "_models", None)):
            if part is not None:
                part.close()
        try:
            for store in {getattr(self, "_store", None), getattr(self, "_scores", None)} - {None}:
                await store.close()
        finally:
            GatewayMetrics.process_exiting()


def routing_config(settings: Settings) -> dict[str, Any]:
    """The Gateway's ``user_config``: every in-process model's routing (edit it to roll out)."""
    return {"routing": {m.name: m.routing.model_dump(mode="json") for m in settings.models
                        if m.placement == "inprocess"}}


def build(args: dict[str, Any] | None = None) -> serve.Application:
    """Ray Serve application builder: ``args`` are :class:`Settings` fields (env fills the rest,
    secrets included). The replicas get the settings as Python values: secrets stay ``SecretStr``
    up to the replica that uses them, never the mask a JSON dump would make of them."""
    settings = Settings(**(args or {}))
    dumped = settings.model_dump()
    handles = {
        m.name: ModelDeployment.options(name=model_deployment_name(m.name),
                                        user_config=settings.batching.model_dump())
        .bind(dumped, m.name)
        for m in settings.models if m.placement == "deployment"
    }
    return Gateway.options(user_config=routing_config(settings)).bind(dumped, handles)
