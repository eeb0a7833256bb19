"""The one settings object of an mlgate process: the gateway's sections composed with the
feature store's (``features_online.settings``).

Read from ``MLGATE_*`` environment variables (nested fields with ``__``, e.g.
``MLGATE_HTTP__PORT=9000``) or passed explicitly. Nothing is read at import time: build a
:class:`Settings` in the process entry point and hand it down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator

from features_online.settings import RedisSettings, Section, StoreSettings
from serving.auth.settings import AuthSettings

__all__ = ["Settings", "RedisSettings", "Section"]


class HttpSettings(Section):
    host: str = "127.0.0.1"
    """Address the gateway listens on."""
    port: int = Field(8000, ge=1, le=65535)
    """Public HTTP port of the gateway."""
    ingress: Literal["reuseport", "direct", "haproxy", "proxy"] = "reuseport"
    """How HTTP reaches the gateway (figures for each in loadtests/RESULTS.md).

    ``reuseport`` (default): every gateway replica runs its own HTTP server (uvicorn) on ``port``,
    shared through ``SO_REUSEPORT`` so that the kernel spreads connections over the ``replicas``
    replicas of a node; requests skip Ray Serve's per-request handling, which costs as much CPU
    as the whole request (serving/http/server.py). ``direct``: Ray Serve direct ingress, the
    replica serves HTTP through Ray's own request handling, one replica per public port.
    ``haproxy``: Ray Serve's HAProxy ingress listens on ``port`` and spreads requests over
    ``replicas`` direct-ingress replicas (ports above ``port``; needs the ``haproxy`` binary).
    ``proxy``: Ray Serve's Python HTTP proxy listens on ``port`` and forwards to the replica
    (a few milliseconds slower per call: loadtests/RESULTS.md)."""
    replicas: int | None = Field(None, ge=1)
    """Gateway replicas. None: with ``reuseport`` or ``haproxy`` ingress, one per CPU this process
    may use (its affinity, capped by a cgroup CPU quota); with ``direct`` or ``proxy``, as the
    Serve config file says (one)."""
    proxy_port: int = Field(8100, ge=1, le=65535)
    """Port of Ray Serve's own proxy when the replicas take ``port`` (``reuseport``, ``direct``):
    it must listen somewhere, and stays a slower second door to the same app."""
    drain_s: float = Field(2.0, ge=0)
    """How long a stopping replica lets requests in flight finish (``reuseport``), or keeps
    answering so that load balancers take it out first (``direct``; Ray's default is 30 s, use
    that behind a Kubernetes Service)."""
    max_body_bytes: int = Field(1_048_576, gt=0)
    """Requests with a larger body are refused with 413."""
    tls_certfile: Path | None = None
    """Serve HTTPS with this PEM certificate (chain) (``reuseport``; with ``tls_keyfile``)."""
    tls_keyfile: Path | None = None
    """The certificate's PEM private key (a mounted Kubernetes Secret)."""
    max_in_flight: int = Field(256, gt=0)
    """Most predict requests one replica works on at once; more are refused at once with 503
    ``overloaded`` and ``Retry-After`` instead of queueing (with ``reuseport`` Ray Serve's
    ``max_ongoing_requests`` does not see them). A request takes its slot only once its whole
    body is in, so slow senders cannot hold the slots."""
    keep_alive_s: float = Field(30.0, gt=0)
    """How long an idle keep-alive connection stays open after a response (``reuseport``;
    uvicorn's ``timeout_keep_alive``). Keep it above the idle timeout of a load balancer in
    front, so that the balancer, not the gateway, closes idle connections."""
    header_timeout_s: float = Field(5.0, gt=0)
    """Longest a request may take to send its headers, from its first byte (from the connection's
    start for a new one); past it the caller gets 408 ``request_timeout`` and the connection is
    closed (``reuseport``; uvicorn has no such timeout of its own: serving/http/server.py)."""
    max_header_bytes: int = Field(32_768, ge=1024)
    """Most bytes of request line and headers; more get 431 ``headers_too_large`` and the
    connection is closed (``reuseport``; uvicorn's ``h11_max_incomplete_event_size`` does not
    apply to the httptools parser used here). Counted per read: up to one read (≤256 KiB) more
    may be buffered before the refusal."""
    max_connections: int | None = Field(4096, gt=0)
    """Most open connections (idle keep-alive ones included) and requests in progress one replica
    takes (``reuseport``; uvicorn's ``limit_concurrency``). A new request beyond it is answered
    by uvicorn itself with a plain-text 503; None: no limit."""
    backlog: int = Field(2048, gt=0)
    """Connections the kernel queues for the replica before it accepts them (``reuseport``;
    capped by ``net.core.somaxconn``)."""
    body_timeout_s: float = Field(5.0, gt=0)
    """Longest a predict request may take to send its body, from when its headers are in; past
    it the caller gets 408 ``request_timeout`` and the connection is closed."""
    max_body_buffer_bytes: int = Field(64 * 1_048_576, gt=0)
    """Most bytes that predict bodies still arriving in several pieces may hold at once in one
    replica; a body that would go past it is refused with 503 ``overloaded``. Requests reading
    their bodies hold no in-flight slot, so without this many slow senders of large bodies could
    hold ``max_body_bytes`` each. A budget of bytes, not of requests: senders of a byte or two
    cannot use it up and crowd out real predictions (the body timeout sends those away)."""


    @model_validator(mode="after")
    def _tls_pair(self) -> HttpSettings:
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise ValueError("http.tls_certfile and http.tls_keyfile go together")
        return self


class LimitSettings(Section):
    max_instances: int = Field(1000, gt=0)
    """Most rows one predict request may carry (413 above)."""
    deadline_ms: int = Field(2000, gt=0)
    """Default per-request deadline; a request still running then gets 504."""


class BatchingSettings(Section):
    max_batch_size: int = Field(32, gt=0)
    """Most requests merged into one model call by ``@serve.batch``."""
    batch_wait_timeout_s: float = Field(0.001, ge=0)
    """How long a partial batch waits for more requests."""


class OnnxSettings(Section):
    intra_op_threads: int = Field(1, ge=0)
    """onnxruntime threads inside one operator. 1 suits small tree models on few cores: a
    thread pool costs more to wake than the work it would split. 0 lets onnxruntime decide."""
    inter_op_threads: int = Field(1, ge=0)
    """onnxruntime threads across operators (only used in parallel execution mode)."""
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    """onnxruntime graph optimisation level."""
    max_model_bytes: int = Field(512 * 1024 * 1024, gt=0)
    """Largest ONNX file a session is opened on (default 512 MiB); a larger one is refused
    before onnxruntime parses it, so a runaway or hostile artifact cannot exhaust a replica's
    memory. Weights kept in ONNX external-data files are not counted."""


ALIAS_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$"
VERSION_PATTERN = r"^[1-9][0-9]{0,9}$"


class VariantRef(Section):
    """Which registered version a variant serves: an MLflow alias to follow, or a pinned version."""

    alias: str | None = Field(None, pattern=ALIAS_PATTERN)
    version: str | None = Field(None, pattern=VERSION_PATTERN)

    @model_validator(mode="after")
    def _one_reference(self) -> VariantRef:
        if bool(self.alias) == bool(self.version):
            raise ValueError("give exactly one of alias or version")
        return self


class CanarySettings(VariantRef):
    weight: float = Field(0.0, ge=0, le=100)
    """Percent of routing keys answered by the canary (sticky: see serving/routing.py)."""


class ShadowSettings(VariantRef):
    name: str = Field("shadow", pattern=r"^[a-z][a-z0-9-]{0,31}$")
    """Label of the shadow in responses' metrics (not ``champion`` or ``canary``)."""
    share: float = Field(0.0, ge=0, le=100)
    """Percent of requests mirrored to this shadow after the primary answer is sent."""

    @field_validator("name")
    @classmethod
    def _not_a_primary(cls, name: str) -> str:
        if name in ("champion", "canary"):
            raise ValueError("champion and canary are not shadow names")
        return name


class AnalysisSettings(Section):
    """When the canary is rolled back: canary against champion over a sliding window."""

    window_s: float = Field(60.0, gt=0)
    """Length of the sliding window both variants are compared over."""
    min_requests: int = Field(50, gt=0)
    """Neither variant is judged on fewer requests than this in the window."""
    max_error_rate_delta: float = Field(0.02, ge=0, le=1)
    """Roll back when canary error rate exceeds the champion's by more than this."""
    max_p99_ratio: float = Field(2.0, ge=1)
    """Roll back when canary p99 latency exceeds this multiple of the champion's..."""
    min_p99_delta_ms: float = Field(5.0, ge=0)
    """...and the champion's p99 by at least this much (sub-millisecond noise is not a breach)."""
    max_score_shift: float = Field(0.3, gt=0, le=1)
    """Roll back when the two-sample Kolmogorov-Smirnov distance between canary and champion
    scores exceeds this (both variants see random halves of the same population)."""
    score_shift_action: Literal["rollback", "alert"] = "rollback"
    """What a significant score shift (over ``max_score_shift``: an effect size, not significance
    alone) does: roll the canary back, or only report it (log, ``mlgate_canary_alerts_total``) for
    a challenger that is meant to score differently. Error-rate and latency breaches always roll
    back."""
    significance: float = Field(0.001, gt=0, le=0.05)
    """Each check breaches only when chance alone would show what the window shows less often than
    this: a handful of slow or failed requests, or a small sample's KS distance, is noise, not a
    breach. The checks run every few seconds for the length of a rollout, so keep it small."""


class RoutingSettings(Section):
    canary: CanarySettings | None = CanarySettings(alias="challenger")
    """The canary variant and its weight; None: the champion answers everything."""
    shadows: tuple[ShadowSettings, ...] = ()
    """Variants that get mirrored traffic and never answer callers."""
    key_header: str = Field("X-Routing-Key", pattern=r"^[A-Za-z0-9-]{1,64}$")
    """Header carrying the routing key; without it the request's first entity key is used, and
    instance requests without it are assigned at random (not sticky)."""
    analysis: AnalysisSettings = AnalysisSettings()

    @field_validator("shadows")
    @classmethod
    def _unique_shadows(cls, shadows: tuple[ShadowSettings, ...]) -> tuple[ShadowSettings, ...]:
        names = [s.name for s in shadows]
        if len(names) != len(set(names)):
            raise ValueError("shadow names must be unique")
        return shadows


class ModelSettings(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    """Registered model name in MLflow."""
    alias: str | None = "champion"
    """Alias to resolve (``models:/<name>@<alias>``); ignored when ``version`` is set."""
    version: str | None = None
    """Pin a registered version instead of following an alias."""
    placement: Literal["inprocess", "deployment"] = "inprocess"
    """``inprocess``: the model runs inside each gateway replica (no extra hop: the fast path).
    ``deployment``: the model gets its own Ray Serve deployment, reached through a handle, for
    models that need their own replicas or resources (each call pays a handle hop). Such a model
    follows its alias when its replicas start; canaries, shadows and live alias swaps need
    ``inprocess``."""
    routing: RoutingSettings = RoutingSettings()
    """Canary and shadows of this model (live: see the Gateway's ``user_config``)."""
    allow_pyfunc: bool = False
    """Serve versions without the onnx flavour through ``mlflow.pyfunc``. Off by default:
    loading a pyfunc model unpickles code from the registry and runs it inside the gateway,
    so whoever can register a version can run code here. Turn it on only for models whose
    registry writers you trust; without it such a version is refused at load."""
    entities: tuple[str, ...] = ()
    """Entities of the applied feature repository whose keys a request row carries (a model of
    the repository declares them there). Batch scores are keyed by them and can answer before
    the model has loaded; without them, only once it has (its views tell)."""

    @model_validator(mode="after")
    def _needs_a_reference(self) -> ModelSettings:
        if not self.alias and not self.version:
            raise ValueError(f"model {self.name!r} needs an alias or a version")
        if self.placement == "deployment" and (
                self.routing.shadows or (self.routing.canary and self.routing.canary.weight > 0)):
            raise ValueError(f"model {self.name!r}: canary and shadows need placement inprocess")
        return self

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}" if self.version else f"models:/{self.name}@{self.alias}"


class FallbackSettings(Section):
    enabled: bool = True
    """Serve precomputed batch scores when the online path cannot answer an entity-keyed request."""
    max_age_s: float = Field(2 * 86_400, gt=0)
    """Oldest batch score served (older: 503)."""
    reserve_ms: int = Field(20, ge=0)
    """Part of the request deadline kept for the fallback lookup when the online path is slow."""
    redis: RedisSettings | None = None
    """Where batch scores live; None: the feature store's Redis. A separate instance keeps
    fallbacks available when the feature store itself is down or slow."""


class AdminSettings(Section):
    token: SecretStr | None = Field(None, min_length=16)
    """Bearer token (16 characters or more) for the admin API and the variant-forcing header.
    Unset: only direct loopback callers of a gateway bound to loopback (``http.host``) with the
    ``reuseport`` or ``direct`` ingress, naming a loopback ``Host``, may use them (the local
    demo); set it everywhere else."""
    allowed_hosts: tuple[str, ...] = ()
    """``Host`` names (without port) that admin calls may carry; empty: any (a token is still
    required). Pins the admin API to the names it is meant to be reached by."""

    port: int | None = Field(None, ge=1, le=65535)
    """Serve the admin API on this port only, not on the public one (``reuseport`` ingress: every
    replica listens on it too). None: on the public port, beside predictions."""
    host: str | None = None
    """Address of the admin port (default: ``http.host``); ``127.0.0.1`` keeps the admin API
    on the node while predictions are served to the network."""

    @field_validator("allowed_hosts")
    @classmethod
    def _lower(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in hosts)


class RegistrySettings(Section):
    poll_s: float = Field(5.0, gt=0)
    """How often each gateway replica asks MLflow where the aliases it follows point."""
    retry_initial_s: float = Field(2.0, gt=0)
    """First wait before retrying a load that failed for a reason other than validation."""
    retry_max_s: float = Field(60.0, gt=0)
    """Longest wait between retries (the wait doubles from ``retry_initial_s``)."""
    require_digest: bool = False
    """Refuse versions that carry no ``mlgate.artifact_sha256`` tag (``mlgate rollout approve``
    records it). A version with the tag is always checked against it, whatever this says; off,
    a version without the tag loads unchecked."""


class RolloutSettings(Section):
    refresh_s: float = Field(1.0, gt=0)
    """How often a replica re-reads the shared rollout state (weights, halts) from Redis."""
    analysis_interval_s: float = Field(5.0, gt=0)
    """How often the canary analysis runs."""
    shadow_queue: int = Field(256, gt=0)
    """Mirrored requests waiting for a shadow; more are dropped and counted."""
    shadow_concurrency: int = Field(2, gt=0)
    """Shadow requests running at once in one replica."""


class RaySettings(Section):
    address: str | None = None
    """Join an existing Ray cluster (``auto`` or ``ray://host:10001``); None starts Ray locally."""
    num_cpus: int | None = None
    """CPUs for a locally started Ray (None: all)."""
    app_name: str = "mlgate"
    """Name of the Ray Serve application."""
    replica_ready_timeout_s: float = Field(60.0, ge=0)
    """How long a new gateway replica waits for its champions to load before it takes traffic
    (Ray routes to a replica once its constructor returns). Past it the replica serves anyway:
    503 or batch scores for the models still loading, and /readyz says which."""
    throughput_optimized: bool = True
    """Start Ray with ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: user code runs on the replica's own
    event loop (no hand-off to a second thread per request), request logs are buffered, and
    deployments talk gRPC (its effect on latency: loadtests/RESULTS.md)."""


class GrpcSettings(Section):
    """The Open Inference Protocol v2 gRPC service of each gateway replica (serving/rpc).

    Every replica binds ``port`` itself, whatever ``http.ingress`` is, with ``SO_REUSEPORT`` so
    that the replicas of one node share it (the kernel spreads connections over them, as for the
    ``reuseport`` HTTP ingress; the chart runs one replica per pod). Served with HTTPS's
    certificate when ``http.tls_certfile`` is set."""

    enabled: bool = False
    port: int = Field(8001, ge=1, le=65535)
    """The gRPC port of every replica (not HTTP's, the admin's or Ray's proxy's)."""
    host: str | None = None
    """Address to bind (default: ``http.host``); a non-loopback one needs credentials, as HTTP."""
    max_message_bytes: int = Field(4 * 1_048_576, gt=0)
    """Largest request or response message."""


class ProtocolSettings(Section):
    """The protocols besides mlgate's own: OIP v2, MLflow/Databricks invocations, KServe v1."""

    default_model: str | None = None
    """The model ``/invocations``, ``/ping`` and ``/health`` answer for (MLflow's scoring server
    serves one model); default: the only model served, if there is one."""
    max_tensor_elements: int = Field(1_000_000, gt=0)
    """Most elements of all input tensors of one OIP request."""
    grpc: GrpcSettings = GrpcSettings()


class InferenceLogSettings(Section):
    """The inference log (serving/inference_log): every answered row, sampled per model, kept off
    the hot path in a bounded buffer, written to one Redis stream per model
    (``<prefix>:log:{<model>}``), compacted by ``mlgate log compact`` into a Parquet table
    partitioned by model and date (batch/log_table.py) that Spark SQL reads."""

    enabled: bool = False
    """Record predictions. Off by default: the log holds what callers sent (inputs, entity keys),
    which is data a platform decides to keep, not a side effect of serving."""
    sample: float = Field(1.0, ge=0, le=1)
    """Share of requests recorded (all of a request's rows, or none)."""
    models: dict[str, float] = {}
    """Per-model share, over ``sample`` (``{"my-model": 0.1}``)."""
    buffer_rows: int = Field(50_000, gt=0)
    """Most rows one replica holds waiting to be written; beyond, new records are dropped and
    counted (``mlgate_inference_log_rows_total{outcome="dropped_buffer"}``), never the request."""
    batch_rows: int = Field(512, gt=0)
    """Rows written per stream entry (one XADD)."""
    flush_interval_ms: int = Field(200, gt=0)
    """Longest a record waits in the buffer before it is written."""
    max_stream_entries: int = Field(200_000, gt=0)
    """Entries a model's stream may hold before compaction empties it; past it new entries are
    dropped and counted (``dropped_backlog``): the oldest are never trimmed unread."""
    close_timeout_s: float = Field(10.0, ge=0)
    """How long a stopping replica tries to write what it still holds."""
    redis: RedisSettings | None = None
    """Where the streams live; None: the feature store's Redis."""
    table: Path | None = None
    """The Parquet table (a folder, or a URL Spark and pyarrow read); None: ``<state_dir>/inference_log``."""

    def rate(self, model: str) -> float:
        return self.models.get(model, self.sample)


class Settings(StoreSettings):
    """All of mlgate's configuration: the feature store's sections (``state_dir``, ``redis``,
    ``features``, ``spark``, ``log_level``) and the gateway's."""

    mlflow_tracking_uri: str | None = Field(
        None, validation_alias=AliasChoices("MLGATE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI",
                                            "mlflow_tracking_uri"))
    """MLflow tracking/registry URI; default: a SQLite file in ``state_dir``."""
    models: tuple[ModelSettings, ...] = ()
    """Models the gateway serves besides those of the applied feature repository (a model named
    in both is served with these settings)."""
    http: HttpSettings = HttpSettings()
    limits: LimitSettings = LimitSettings()
    batching: BatchingSettings = BatchingSettings()
    onnx: OnnxSettings = OnnxSettings()
    ray: RaySettings = RaySettings()
    fallback: FallbackSettings = FallbackSettings()
    admin: AdminSettings = AdminSettings()
    auth: AuthSettings = AuthSettings()
    """Credentials of the data plane, scopes and quotas (serving/auth/settings.py)."""
    routing_secret: SecretStr | None = Field(None, min_length=16, max_length=64)
    """Key of the hash that places routing keys on the canary's side or the champion's (16-64
    characters, the same on every replica): without it anyone can compute which keys (entity
    ids) the canary answers and steer traffic there. Changing it reshuffles who sees the canary."""
    registry: RegistrySettings = RegistrySettings()
    rollout: RolloutSettings = RolloutSettings()
    protocols: ProtocolSettings = ProtocolSettings()
    inference_log: InferenceLogSettings = InferenceLogSettings()

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: tuple[ModelSettings, ...]) -> tuple[ModelSettings, ...]:
        names = [m.name for m in models]
        if len(names) != len(set(names)):
            raise ValueError("model names must be unique")
        return models

    @model_validator(mode="after")
    def _grpc_beside_http(self) -> Settings:
        grpc = self.protocols.grpc
        if not grpc.enabled:
            return self
        taken = {"http.port": self.http.port, "http.proxy_port": self.http.proxy_port, "admin.port": self.admin.port}
        clash = next((name for name, port in taken.items() if port == grpc.port), None)
        if clash is not None:  # SO_REUSEPORT would let both bind it and split connections between them
            raise ValueError(f"protocols.grpc.port {grpc.port} is {clash} too")
        return self

    @property
    def grpc_host(self) -> str:
        """Where the gRPC service listens: ``protocols.grpc.host``, else ``http.host``."""
        return self.protocols.grpc.host or self.http.host

    def bind_hosts(self) -> tuple[str, ...]:
        """The addresses predictions are served on (HTTP's, and gRPC's when enabled): each is
        checked for exposure without credentials."""
        return (self.http.host, self.grpc_host) if self.protocols.grpc.enabled else (self.http.host,)

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> str:
        """Where new MLflow experiments keep artifacts when the store is local."""
        return (self.state_dir / "artifacts").resolve().as_uri()

    @property
    def log_table(self) -> str:
        """Where the inference log's Parquet table is (``inference_log.table``, else in ``state_dir``)."""
        table = self.inference_log.table
        return str(table) if table is not None else str((self.state_dir / "inference_log").resolve())

    def model(self, name: str) -> ModelSettings | None:
        return next((m for m in self.models if m.name == name), None)
