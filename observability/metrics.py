"""Every Prometheus metric mlgate exports, defined once, with bounded labels only.

Labels are model, version, variant, shadow, stage and outcome (``ok`` or a stable error code): never entity ids,
raw paths or anything a caller controls. Unknown model names are counted as ``_unknown``.
A :class:`GatewayMetrics` owns its registry, so tests and replicas never share global state.

Several gateway replicas on one port (``http.ingress: reuseport`` or ``haproxy``) are several
processes, and a scrape reaches any one of them. ``mlgate serve`` therefore starts them with
``PROMETHEUS_MULTIPROC_DIR`` set (prometheus-client's multiprocess mode, read when the library is
imported): every process writes its values to files there, and ``/metrics`` on any replica renders
the node's totals. Each gauge says how replicas combine (``multiprocess_mode``; ignored otherwise).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Sub-millisecond resolution where the gateway lives, seconds where things go wrong.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
                   0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SCORE_DIFF_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

UNKNOWN_MODEL = "_unknown"
STAGES = ("decode", "features", "inference", "encode", "fallback")


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if os.environ.get(MULTIPROC_ENV):  # another node of the cluster may not have it yet
            os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}
        r = self.registry
        self.requests = Counter(
            "mlgate_requests", "Predict requests by model, version and outcome (ok or error code).",
            ["model", "version", "outcome"], registry=r)
        self.request_latency = Histogram(
            "mlgate_request_duration_seconds", "Time from request received to response ready.",
            ["model", "outcome"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram(
            "mlgate_stage_duration_seconds", "Time spent per pipeline stage.",
            ["model", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.instances = Histogram(
            "mlgate_request_instances", "Rows per predict request.",
            ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "mlgate_model_batch_rows", "Rows per model call after dynamic batching.",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=r)
        self.model_load_seconds = Gauge(
            "mlgate_model_load_seconds", "Seconds the loaded version took to resolve, download, "
            "open and validate.", ["model", "version"], multiprocess_mode="mostrecent", registry=r)
        self.model_ready = Gauge(
            "mlgate_model_ready", "1 while the model has a validated version serving, else 0 "
            "(several replicas: 1 only while every live one serves).",
            ["model"], multiprocess_mode="livemin", registry=r)
        self.model_load_failures = Counter(
            "mlgate_model_load_failures", "Model versions refused at load or validation.",
            ["model", "variant"], registry=r)
        self.variant_version = Gauge(
            "mlgate_variant_version", "Registered version each variant serves (0: none yet).",
            ["model", "variant"], multiprocess_mode="livemostrecent", registry=r)
        self.model_swaps = Counter(
            "mlgate_model_swaps", "Versions swapped in while serving (an alias moved).",
            ["model", "variant"], registry=r)

        self.variant_requests = Counter(
            "mlgate_variant_requests", "Predict requests by the variant that answered and outcome.",
            ["model", "variant", "outcome"], registry=r)
        self.canary_weight = Gauge(
            "mlgate_canary_weight", "Percent of routing keys sent to the canary.", ["model"],
            multiprocess_mode="livemostrecent", registry=r)
        self.shadow_share = Gauge(
            "mlgate_shadow_share", "Percent of requests mirrored to a shadow.", ["model", "shadow"],
            multiprocess_mode="livemostrecent", registry=r)
        self.rollout_halted = Gauge(
            "mlgate_rollout_halted", "1 while an automatic rollback holds the canary at 0 %.",
            ["model"], multiprocess_mode="livemax", registry=r)
        self.canary_rollbacks = Counter(
            "mlgate_canary_rollbacks", "Automatic canary rollbacks by breached check.",
            ["model", "reason"], registry=r)
        self.canary_alerts = Counter(
            "mlgate_canary_alerts", "Canary breaches reported without a rollback (checks set to alert), "
            "once per canary version and check.", ["model", "reason"], registry=r)
        self.shadow_requests = Counter(
            "mlgate_shadow_requests", "Mirrored requests by outcome (ok, error, dropped).",
            ["model", "shadow", "outcome"], registry=r)
        self.shadow_agreement = Counter(
            "mlgate_shadow_rows", "Rows scored by both primary and shadow, by whether the labels "
            "agree (agreement rate = agree / all).", ["model", "shadow", "agree"], registry=r)
        self.shadow_score_diff = Histogram(
            "mlgate_shadow_score_abs_diff", "Absolute score difference, shadow against primary.",
            ["model", "shadow"], buckets=SCORE_DIFF_BUCKETS, registry=r)
        self.shadow_latency = Histogram(
            "mlgate_shadow_duration_seconds", "Time a mirrored request took on the shadow.",
            ["model", "shadow"], buckets=LATENCY_BUCKETS, registry=r)

        self.feature_rows = Counter(
            "mlgate_feature_rows", "Entity rows read per feature view, by status (fresh, stale, "
            "missing).", ["view", "status"], registry=r)
        self.feature_age = Gauge(
            "mlgate_feature_view_age_seconds", "Seconds since the live version of the view was "
            "computed (its latest sync's as-of time).", ["view"],
            multiprocess_mode="livemostrecent", registry=r)
        self.feature_version = Gauge(
            "mlgate_feature_view_version", "Live data version of the view in the online store.",
            ["view"], multiprocess_mode="livemostrecent", registry=r)
        self.fallback_rows = Counter(
            "mlgate_fallback_rows", "Rows answered with a precomputed batch score, by reason.",
            ["model", "reason"], registry=r)
        self.feature_store_errors = Counter(
            "mlgate_feature_store_errors", "Failed online-store calls by reason.", ["reason"], registry=r)

        # Drift and quality: the latest verdict of ``mlgate monitor`` (serving/drift_status.py),
        # which every replica reads alike, so replicas agree: the newest value wins.
        self.drift_psi = Gauge(
            "mlgate_drift_psi", "PSI of a logged input or output against the version's training "
            "baseline, in the latest monitor window.", ["model", "version", "feature"],
            multiprocess_mode="livemostrecent", registry=r)
        self.drift_detected = Gauge(
            "mlgate_drift_detected", "1 when the latest monitor run found a column over its PSI threshold.",
            ["model", "version"], multiprocess_mode="livemostrecent", registry=r)
        self.model_quality = Gauge(
            "mlgate_model_quality", "Quality on labelled logged rows of the latest monitor window (auc, "
            "precision, mae, rmse).", ["model", "version", "metric"], multiprocess_mode="livemostrecent",
            registry=r)
        self.monitor_last_run = Gauge(
            "mlgate_monitor_last_run_timestamp_seconds", "When the latest monitor verdict was computed.",
            ["model"], multiprocess_mode="livemostrecent", registry=r)

        self.protocol_requests = Counter(
            "mlgate_protocol_requests", "Predict requests by the protocol they came in (mlgate, v2 REST, "
            "v2-grpc, mlflow, databricks, v1) and outcome (ok or error code).", ["protocol", "outcome"],
            registry=r)
        self.quota_rejected = Counter(
            "mlgate_quota_rejected", "Requests refused with 429 by the limit that was full (key: the "
            "caller's, model: the model's over all callers).", ["model", "limit"], registry=r)
        self.quota_store_unavailable = Counter(
            "mlgate_quota_store_unavailable", "Requests decided without the quota store, which could "
            "not answer (admitted or refused by auth.quotas.on_store_down).", registry=r)
        self.inference_log_rows = Counter(
            "mlgate_inference_log_rows", "Rows of the inference log by outcome: written to the model's "
            "stream, or dropped (dropped_buffer: the replica's buffer was full; dropped_backlog: the stream "
            "waits for compaction; dropped_shutdown: not written before the replica stopped).",
            ["model", "outcome"], registry=r)

    def child(self, metric, *labels: str):
        """``metric.labels(*labels)``, kept: the hot path asks for the same few children on every
        request, and labels() takes a lock and builds its key each time. Labels are bounded (see
        above), so is this cache."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_request(self, model: str, version: str, outcome: str, seconds: float,
                        rows: int = 0) -> None:
        self.child(self.requests, model, version, outcome).inc()
        self.child(self.request_latency, model, outcome).observe(seconds)
        if rows:
            self.child(self.instances, model).observe(rows)

    def observe_stage(self, model: str, stage: str, seconds: float) -> None:
        self.child(self.stage_latency, model, stage).observe(seconds)

    def model_loaded(self, model: str, variant: str, version: str, seconds: float) -> None:
        self.model_load_seconds.labels(model, version).set(seconds)
        self.variant_version.labels(model, variant).set(int(version) if version.isdigit() else 0)
        if variant == "champion":
            self.model_ready.labels(model).set(1)

    def model_failed(self, model: str, variant: str, serving: bool) -> None:
        """A version was refused; ``serving``: the variant still serves its previous version."""
        self.model_load_failures.labels(model, variant).inc()
        if variant == "champion" and not serving:
            self.model_ready.labels(model).set(0)

    def rollout_changed(self, model: str, canary_weight: float, shadow_shares: dict[str, float],
                        halted: bool) -> None:
        self.canary_weight.labels(model).set(canary_weight)
        for shadow, share in shadow_shares.items():
            self.shadow_share.labels(model, shadow).set(share)
        self.rollout_halted.labels(model).set(1 if halted else 0)

    def drift_changed(self, status: dict) -> None:
        """Set the drift gauges from a monitor status document (serving/drift_status.py)."""
        model, version = status["model"], str(status["version"])
        for feature, figures in (status.get("features") or {}).items():
            self.drift_psi.labels(model, version, feature).set(figures["psi"])
        self.drift_detected.labels(model, version).set(1 if status.get("drifted") else 0)
        for metric, value in (status.get("quality") or {}).items():
            self.model_quality.labels(model, version, metric).set(value)
        self.monitor_last_run.labels(model).set(status["computed_at"])

    def render(self) -> bytes:
        """The exposition text: this process's metrics, or every live replica's on this node
        in multiprocess mode."""
        if not os.environ.get(MULTIPROC_ENV):
            return generate_latest(self.registry)
        forget_dead_processes(os.environ[MULTIPROC_ENV])
        node = CollectorRegistry()
        multiprocess.MultiProcessCollector(node)
        return generate_latest(node)

    @staticmethod
    def process_exiting() -> None:
        """Drop this process's live gauges from the node's totals (multiprocess mode)."""
        if os.environ.get(MULTIPROC_ENV):
            multiprocess.mark_process_dead(os.getpid())


def forget_dead_processes(folder: str) -> None:
    """Drop the live gauges of replicas that died without saying so (killed, out of memory):
    a dead replica's ``model_ready`` 0 or ``rollout_halted`` 1 must not hold alerts forever."""
    for name in os.listdir(folder):
        if not name.startswith("gauge_live") or not name.endswith(".db"):
            continue
        pid = int(name[:-3].rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)
        except PermissionError:
            pass  # alive, another user's
