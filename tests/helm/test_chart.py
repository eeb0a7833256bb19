"""The Helm chart, rendered by a real helm binary and checked against the schemas of its consumers.

- ``helm lint --strict`` and ``helm template`` with every values file in helm/mlgate/ci/;
- every built-in Kubernetes object against the Kubernetes OpenAPI schemas (kubernetes-validate's
  strict JSON schemas: unknown fields fail) of the oldest supported and the newest version;
- the custom resources (RayService, ServiceMonitor, PrometheusRule, ScheduledSparkApplication)
  against excerpts of their CRD schemas in tests/helm/schemas/ (sources named in each file);
- the embedded Serve config by Ray's own ``ServeDeploySchema``, its application args by
  mlgate's ``Settings`` and its routing by ``RoutingSettings``; by default (no ``model.name``) the
  args name no model, so the gateway serves the applied feature repository's models;
- a canary step (``--set routing.canary.weight=N``) changes nothing but the Gateway's
  ``user_config``, so KubeRay applies it as an in-place reconfigure;
- wrong values fail at ``helm template`` time (values.schema.json and the chart's own checks);
- secure by default: no render without credentials for the gateway (or an explicit ``insecure``),
  Ray token authentication and the NetworkPolicy on, Secrets mounted where the settings say, and
  no secret value in anything but a ``Secret``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mlgate"
SCHEMAS = Path(__file__).parent / "schemas"
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
# The chart's kubeVersion floor and the newest version kubernetes-validate ships.
K8S_VERSIONS = ("1.29.0", "1.37.0")
CUSTOM_KINDS = {
    "RayService": ("kuberay-rayservice-v1.yaml", None),
    "ServiceMonitor": ("prometheus-operator-v1.yaml", "ServiceMonitor"),
    "PrometheusRule": ("prometheus-operator-v1.yaml", "PrometheusRule"),
    "ScheduledSparkApplication": ("spark-operator-scheduledsparkapplication-v1beta2.yaml", None),
}


# ---- rendering ------------------------------------------------------------------------------

def helm(helm_bin, env, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(helm_bin), *args], capture_output=True, text=True, env=env,
                            timeout=60)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


# The least a render needs: credentials for the gateway (the chart refuses to render without).
KEYS = ("--set", "auth.apiKeys.existingSecret=api-keys")


def render(helm_bin, env, *args: str) -> list[dict]:
    out = helm(helm_bin, env, "template", "mlg", str(CHART), "--namespace", "ml", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def serve_config(docs: list[dict]) -> dict:
    (rayservice,) = by_kind(docs, "RayService")
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def gateway_deployment(config: dict) -> dict:
    (app,) = config["applications"]
    (gateway,) = [d for d in app["deployments"] if d["name"] == "Gateway"]
    return gateway


@pytest.fixture(scope="module", params=VALUES_FILES, ids=lambda p: p.stem)
def values_file(request) -> Path:
    return request.param


@pytest.fixture(scope="module")
def rendered(values_file, helm_bin, helm_home) -> list[dict]:
    return render(helm_bin, helm_home, "-f", str(values_file))


# ---- schemas ---------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def k8s_schema_dir(version: str):
    schemas = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return schemas / f"v{version}-local-strict"


@lru_cache(maxsize=None)
def k8s_registry(version: str) -> Registry:
    definitions = json.loads((k8s_schema_dir(version) / "_definitions.json").read_text())
    return Resource.from_contents(definitions) @ Registry()


def k8s_validator(version: str, api_version: str, kind: str):
    # kubernetes-validate's file naming: rbac.authorization.k8s.io/v1 -> rbac-v1
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = k8s_schema_dir(version) / f"{kind.lower()}-{group_version}.json"
    schema = json.loads(path.read_text())
    return jsonschema.Draft202012Validator(schema, registry=k8s_registry(version))


def close_and_link(schema):
    """CRD schema -> JSON Schema as the API server applies it: unknown fields are errors (kubectl
    applies with strict field validation), and ``k8s:NAME`` refs point at Kubernetes'
    definitions."""
    if isinstance(schema, dict):
        schema = {k: close_and_link(v) for k, v in schema.items()}
        if isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("k8s:"):
            schema["$ref"] = f"{K8S_DEFINITIONS}#/$defs/{schema['$ref'][4:]}"
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [close_and_link(s) for s in schema]
    return schema


@lru_cache(maxsize=None)
def crd_validator(kind: str, version: str):
    filename, key = CUSTOM_KINDS[kind]
    source = yaml.safe_load((SCHEMAS / filename).read_text())
    schema = source[key] if key else source["openAPIV3Schema"]
    schema = close_and_link({**schema, "$defs": source.get("$defs", {})})
    return jsonschema.Draft202012Validator(schema, registry=k8s_registry(version))


def errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
            for e in validator.iter_errors(doc)]


# ---- lint and schemas -----------------------------------------------------------------------

@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_lint_strict(helm_bin, helm_home, values):
    result = helm(helm_bin, helm_home, "lint", "--strict", str(CHART), "-f", str(values))
    assert "0 chart(s) failed" in result.stdout


def test_default_values_demand_credentials(helm_bin, helm_home):
    """The defaults alone do not install: the gateway binds 0.0.0.0 and would refuse to start
    without API keys or JWT, so the chart says so first. One API-key Secret is enough."""
    # (helm lint only logs a template's `fail`: install, upgrade and template are what stop)
    result = helm(helm_bin, helm_home, "template", str(CHART), check=False)
    assert result.returncode != 0
    assert "no credentials configured for the gateway" in result.stderr
    assert "auth.apiKeys.existingSecret" in result.stderr and "auth.insecure=true" in result.stderr
    helm(helm_bin, helm_home, "lint", "--strict", str(CHART), *KEYS)
    kinds = {d["kind"] for d in render(helm_bin, helm_home, *KEYS)}
    assert {"RayService", "Service", "CronJob", "PodDisruptionBudget", "NetworkPolicy", "Secret"} <= kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_kubernetes_and_crd_schemas(rendered, version):
    problems = []
    for doc in rendered:
        kind = doc["kind"]
        validator = (crd_validator(kind, version) if kind in CUSTOM_KINDS
                     else k8s_validator(version, doc["apiVersion"], kind))
        problems += [f"{kind}/{doc['metadata']['name']}: {e}" for e in errors(validator, doc)]
    assert not problems, "\n".join(problems)


def test_crd_schemas_catch_mistakes():
    """The CRD excerpts are strict enough to be worth something: a typo and a bad type fail."""
    validator = crd_validator("RayService", K8S_VERSIONS[-1])
    head = {"rayStartParams": {}, "template": {"spec": {"containers": [{"name": "ray-head"}]}}}
    doc = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "x"},
           "spec": {"serveConfigV2": "", "rayClusterConfig": {"headGroupSpec": head}}}
    assert not errors(validator, doc)
    typo = copy.deepcopy(doc)
    typo["spec"]["rayClusterConfig"]["workerGroupSpec"] = []
    assert errors(validator, typo)
    bad_pod = copy.deepcopy(doc)
    pod = bad_pod["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    pod["containers"][0]["ports"] = [{"containerPort": "eighty"}]
    assert errors(validator, bad_pod)


# ---- the Serve config -----------------------------------------------------------------------

def test_serve_config_accepted_by_ray_and_mlgate(rendered, values_file, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    from serving.settings import RoutingSettings, Settings

    for name in [n for n in os.environ if n.startswith(("MLGATE_", "MLFLOW_"))]:
        monkeypatch.delenv(name)  # only the rendered args may count
    config = serve_config(rendered)
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert (app.name, app.import_path) == ("mlgate", "serving.ray_app:build")
    settings = Settings(**app.args)
    pinned = (yaml.safe_load(values_file.read_text()).get("model") or {}).get("name")
    assert [m.name for m in settings.models] == ([pinned] if pinned else [])
    gateway = gateway_deployment(config)
    assert gateway["max_replicas_per_node"] == 1  # one replica per pod: the Service's port 8000
    for model, routing in gateway["user_config"]["routing"].items():
        assert settings.model(model) is not None
        RoutingSettings.model_validate(routing)


def test_supply_chain_switches_reach_the_gateway_off_by_default(helm_bin, helm_home):
    from serving.settings import Settings

    def args(*sets):
        (app,) = serve_config(render(helm_bin, helm_home, *KEYS, *[a for s in sets for a in ("--set", s)]))["applications"]
        settings = Settings(**app["args"])
        return settings.models[0].allow_pyfunc, settings.registry.require_digest

    assert args("model.name=my-model") == (False, False)
    assert args("model.name=my-model", "model.allowPyfunc=true", "registry.requireDigest=true") == (True, True)


def test_default_serves_the_applied_repository(helm_bin, helm_home, monkeypatch):
    """No model.name: no `models` arg (Settings' default, none: the gateway serves the models of
    the repository applied with `mlgate apply`), no chart routing, batch scoring without --model
    (the repository's only model). A name pins that model, its routing and the job's --model."""
    from serving.settings import Settings

    for name in [n for n in os.environ if n.startswith(("MLGATE_", "MLFLOW_"))]:
        monkeypatch.delenv(name)

    def parts(*args):
        docs = render(helm_bin, helm_home, *KEYS, *args)
        config = serve_config(docs)
        (app,) = config["applications"]
        (job,) = [d for d in by_kind(docs, "CronJob") if d["metadata"]["name"].endswith("batch-score")]
        (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        return app["args"], gateway_deployment(config)["user_config"], container["args"]

    args, user_config, job_args = parts()
    assert "models" not in args
    assert Settings(**args).models == ()
    assert user_config == {"routing": {}}
    assert "--model" not in job_args
    args, user_config, job_args = parts("--set", "model.name=my-model")
    assert [(m.name, m.alias) for m in Settings(**args).models] == [("my-model", "champion")]
    assert list(user_config["routing"]) == ["my-model"]
    assert job_args[-2:] == ["--model", "my-model@champion"]


def test_ray_pods_get_direct_ingress_on_port_8000(rendered):
    (rayservice,) = by_kind(rendered, "RayService")
    cluster = rayservice["spec"]["rayClusterConfig"]
    (worker,) = cluster["workerGroupSpecs"]
    for pod in (cluster["headGroupSpec"]["template"], worker["template"]):
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
        # One replica per pod and exactly one port (the range's end is exclusive).
        assert env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "8000"
        assert env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] == "8001"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (http,) = [s for s in by_kind(rendered, "Service") if s["metadata"]["name"] == "mlg-mlgate"]
    assert http["spec"]["ports"][0]["targetPort"] == "http"
    (container,) = worker["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == 8000
    assert worker["template"]["metadata"]["labels"].items() >= http["spec"]["selector"].items()


# ---- canary steps are live reconfigures -----------------------------------------------------

CANARY = str(CHART / "ci" / "canary-values.yaml")


def without_generated_token(docs: list[dict]) -> list[dict]:
    """The chart's Ray token Secret holds a new random token at every render without a cluster
    (``lookup`` finds no Secret to keep the token of): blank it out for comparisons."""
    return [{**d, "data": "<random>"} if d["kind"] == "Secret" and component(d) == "ray-auth" else d
            for d in docs]


def component(doc: dict) -> str | None:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


@pytest.mark.parametrize("change", [
    "routing.canary.weight=25", "routing.canary.weight=100", "routing.shadows[0].share=50",
    "routing.canary.alias=challenger-2", "routing.analysis.maxP99Ratio=3"])
def test_routing_change_only_touches_gateway_user_config(helm_bin, helm_home, change):
    before = render(helm_bin, helm_home, "-f", CANARY)
    after = render(helm_bin, helm_home, "-f", CANARY, "--set", change)
    others = lambda docs: [d for d in without_generated_token(docs) if d["kind"] != "RayService"]
    assert others(before) == others(after)
    (rs_before,), (rs_after,) = by_kind(before, "RayService"), by_kind(after, "RayService")
    strip = lambda rs: {**rs, "spec": {k: v for k, v in rs["spec"].items() if k != "serveConfigV2"}}
    assert strip(rs_before) == strip(rs_after), "the Ray cluster changed: KubeRay would replace it"
    config_before, config_after = serve_config(before), serve_config(after)
    old, new = gateway_deployment(config_before), gateway_deployment(config_after)
    assert old["user_config"] != new["user_config"]
    new["user_config"] = old["user_config"]
    assert config_before == config_after, "something besides the Gateway's user_config changed"


def test_weight_lands_in_user_config(helm_bin, helm_home):
    config = serve_config(render(helm_bin, helm_home, "-f", CANARY,
                                 "--set", "routing.canary.weight=25"))
    routing = gateway_deployment(config)["user_config"]["routing"]["my-model"]
    assert routing["canary"] == {"alias": "challenger", "weight": 25}
    assert routing["shadows"] == [{"name": "shadow", "alias": "candidate", "share": 10}]
    assert routing["analysis"]["max_p99_ratio"] == 1.5


# ---- wrong values fail at install time ------------------------------------------------------

@pytest.mark.parametrize(("values", "reason"), [
    (["routing.canary.weight=150"], "maximum"),
    (["routing.canary.weight=-5"], "minimum"),
    (["routing.canary.weight=5"], "must be true"),  # a weight without an enabled canary
    (["routing.canary.enabled=true", "routing.canary.alias=not an alias"], "pattern"),
    (["model.name=m", "routing.canary.enabled=true", "routing.canary.alias=champion"], "another alias"),
    (["routing.canary.enabled=true"], "model.name, which is empty"),
    (["routing.shadows[0].name=shadow", "routing.shadows[0].alias=x",
      "routing.shadows[0].share=5"], "model.name, which is empty"),
    (["model.name=not a name"], "pattern"),
    (["routing.canary.wieght=5"], "additional properties"),
    (["routing.shadows[0].name=canary", "routing.shadows[0].alias=x",
      "routing.shadows[0].share=5"], "not"),
    (["model.version=abc"], "version"),
    (["model.allowPyfunc=yes please"], "allowPyfunc"),
    (["redis.url=http://redis:6379"], "pattern"),
    (["jobs.runner=airflow"], "runner"),
    (["jobs.runner=sparkoperator"], "sparkOperator/image"),
    (["gateway.replicas.min=5", "gateway.replicas.max=2"], "at least"),
    (["gateway.settings.models=[]"], "models"),
    # secure by default
    (["auth.jwt.jwksUrl=https://idp.example/jwks", "auth.jwt.keySecret=jwt"], "not both"),
    (["auth.jwt.issuer=https://idp.example/"], "neither auth.jwt.jwksUrl nor auth.jwt.keySecret"),
    (["auth.jwt.jwksUrl=https://idp.example/jwks", "auth.jwt.algorithms={none}"], "algorithms"),
    (["auth.jwt.jwksUrl=ldap://idp.example/jwks"], "jwksUrl"),
    (["auth.anonymousScopes={predict}"], "anonymousScopes"),
    (["auth.quotas.perKey.burst=5"], "missing property 'ratePerS'"),
    (["auth.quotas.onStoreDown=maybe"], "onStoreDown"),
    (["monitoring.serviceMonitor.enabled=true"], "needs the `metrics` scope"),
    (["redis.tls.caSecret=redis-ca"], "no Redis URL uses rediss://"),
    (["redis.url=rediss://r:6380/0", "redis.tls.caSecret=a", "redis.tls.caConfigMap=b"], "not both"),
    (["redis.url=redis://:hunter2@redis:6379/0"], "redis.url carries a password"),
    (["redis.fallback.url=rediss://user:hunter2@scores:6380/0"], "redis.fallback.url carries a password"),
    (["mlflow.trackingUri=postgresql://ml:hunter2@db/mlflow"], "mlflow.trackingUri carries a password"),
    (["gateway.settings.admin.token=0123456789abcdefXYZ"], "gateway.settings.admin.token is a secret"),
    (["gateway.settings.redis.password=hunter2"], "gateway.settings.redis.password is a secret"),
    (["gateway.settings.routing_secret=0123456789abcdefXYZ"], "routing_secret"),
    (["gateway.settings.auth.insecure=true"], "invalid propertyName 'auth'"),
    (["ray.auth.existingSecret=Not_A_Name"], "existingSecret"),
    (["ray.version=2.51.0"], "ray.auth needs Ray 2.52 or newer"),
    # the gRPC port must be free on the worker pods
    (["protocols.grpc.enabled=true", "protocols.grpc.port=8000"], "is the HTTP port"),
    (["protocols.grpc.enabled=true", "protocols.grpc.port=8100"], "is gateway.proxyPort"),
    (["protocols.grpc.enabled=true", "protocols.grpc.port=8080"], "Ray's metrics port"),
    (["protocols.grpc.enabled=true", "protocols.grpc.port=15000"], "Ray's worker port range"),
    (["protocols.grpc.port=0"], "minimum"),
    (["protocols.grpc.maxMessageBytes=0"], "minimum"),
    (["protocols.grpc.tls=true"], "additional properties"),
    (["protocols.defaultModel=not a name"], "pattern"),
])
def test_wrong_values_fail(helm_bin, helm_home, values, reason):
    args = [*KEYS, *[a for v in values for a in ("--set", v)]]
    result = helm(helm_bin, helm_home, "template", "mlg", str(CHART), *args, check=False)
    assert result.returncode != 0, f"{values} rendered"
    assert reason in result.stderr, result.stderr


# ---- monitoring uses the gateway's real metric names ----------------------------------------

def test_alerts_and_dashboard_use_defined_metrics(helm_bin, helm_home):
    docs = render(helm_bin, helm_home, "-f", str(CHART / "ci" / "production-values.yaml"))
    (rule,) = by_kind(docs, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"MlgateHighErrorRate", "MlgateHighLatency", "MlgateHighFallbackRate",
            "MlgateFeaturesStale", "MlgateCanaryRolledBack"} <= alerts
    (dashboard,) = by_kind(docs, "ConfigMap")
    panels = json.loads(dashboard["data"]["mlgate.json"])["panels"]
    queries = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    queries += [t["expr"] for p in panels for t in p["targets"]]
    used = {re.sub(r"_(total|bucket|sum|count)$", "", m)
            for q in queries for m in re.findall(r"\bmlgate_[a-z_]+", q)}
    metrics_module = (ROOT / "observability" / "metrics.py").read_text()
    defined = set(re.findall(r'"(mlgate_[a-z_]+)"', metrics_module))
    assert used and used <= defined, f"not defined in observability/metrics.py: {used - defined}"


def test_monitor_and_log_compact_cronjobs_and_drift_alerts(helm_bin, helm_home):
    docs = render(helm_bin, helm_home, "-f", str(CHART / "ci" / "production-values.yaml"))
    args = {d["metadata"]["labels"]["app.kubernetes.io/component"]:
            d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
            for d in by_kind(docs, "CronJob")}
    assert args["log-compact"] == ["log", "compact"]
    assert args["monitor-my-model"] == ["monitor", "--model", "my-model", "--window", "6h", "--threshold", "0.2"]
    assert args["monitor-other-model-v2"][:3] == ["monitor", "--model", "Other_Model.v2"]
    (rule,) = by_kind(docs, "PrometheusRule")
    drift = next(g for g in rule["spec"]["groups"] if g["name"] == "mlgate.drift")
    assert {r["alert"] for r in drift["rules"]} == {"MlgateDrift", "MlgateMonitorNotRunning", "MlgateQualityDrop"}
    assert "> 172800" in next(r["expr"] for r in drift["rules"] if r["alert"] == "MlgateMonitorNotRunning")
    default = render(helm_bin, helm_home, "--set", "auth.insecure=true")
    assert not [d for d in by_kind(default, "CronJob") if "monitor" in d["metadata"]["name"]
                or "compact" in d["metadata"]["name"]]


# ---- secure by default ----------------------------------------------------------------------

def ray_pods(docs: list[dict]) -> list[tuple[dict, dict]]:
    """(pod template, Ray container) of the head and of the worker group."""
    (rayservice,) = by_kind(docs, "RayService")
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [w["template"] for w in cluster["workerGroupSpecs"]]
    return [(t, t["spec"]["containers"][0]) for t in templates]


def job_pods(docs: list[dict]) -> list[tuple[dict, dict]]:
    return [(job["spec"]["jobTemplate"]["spec"]["template"],
             job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
            for job in by_kind(docs, "CronJob")]


def mounted(pod: dict, container: dict, path: str) -> tuple[str, str, str]:
    """Where the file ``path`` in ``container`` comes from: (kind, object name, key), checking that
    the mount is read-only and whole (no subPath, so an edited Secret reaches the pod)."""
    for mount in container["volumeMounts"]:
        folder = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(folder):
            assert mount.get("readOnly") is True and "subPath" not in mount, mount
            (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
            kind = "secret" if "secret" in volume else "configMap"
            source = volume[kind]
            (key,) = [i["key"] for i in source["items"] if i["path"] == path[len(folder):]]
            return kind, source.get("secretName") or source.get("name"), key
    raise AssertionError(f"nothing mounted at {path}")


def fake_secret(ref: dict) -> str:
    return f"fake-{ref['name']}-{ref['key']}-0123456789"[:64]


def gateway_settings(docs: list[dict], container: dict, monkeypatch):
    """The gateway's Settings as a replica would build them: the Serve config's application args
    plus the container's environment (secretKeyRefs filled with stand-ins)."""
    from serving.settings import Settings

    for name in [n for n in os.environ if n.startswith(("MLGATE_", "MLFLOW_"))]:
        monkeypatch.delenv(name)
    for entry in container["env"]:
        if entry["name"].startswith("MLGATE_"):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            monkeypatch.setenv(entry["name"], fake_secret(ref) if ref else entry["value"])
    (app,) = serve_config(docs)["applications"]
    return Settings(**app["args"])


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def test_gateway_settings_from_rendered_pods_are_valid_and_secured(rendered, monkeypatch):
    """Every example builds valid Settings on the head and the workers, and passes the gateway's
    own start rule on 0.0.0.0: credentials configured, or insecure said out loud."""
    for pod, container in ray_pods(rendered):
        settings = gateway_settings(rendered, container, monkeypatch)
        assert settings.http.host == "0.0.0.0"
        assert settings.auth.enabled or settings.auth.insecure
        if settings.auth.api_keys_file:
            kind, name, key = mounted(pod, container, str(settings.auth.api_keys_file))
            assert kind == "secret" and name and key


def test_api_keys_secret_is_mounted_on_head_and_workers(helm_bin, helm_home, monkeypatch):
    docs = render(helm_bin, helm_home, "--set", "auth.apiKeys.existingSecret=callers",
                  "--set", "auth.apiKeys.existingSecretKey=keys.json")
    pods = ray_pods(docs)
    assert len(pods) == 2
    for pod, container in pods:
        path = env_of(container)["MLGATE_AUTH__API_KEYS_FILE"]["value"]
        assert path == "/etc/mlgate/auth/keys.json"
        assert mounted(pod, container, path) == ("secret", "callers", "keys.json")
        settings = gateway_settings(docs, container, monkeypatch)
        assert settings.auth.enabled and not settings.auth.insecure and settings.auth.jwt is None
    for _, container in job_pods(docs):  # the jobs serve nobody
        assert not any(e["name"].startswith("MLGATE_AUTH__") for e in container["env"])


def test_jwt_values_reach_the_gateway_and_the_static_key_only_from_a_secret(helm_bin, helm_home,
                                                                           monkeypatch):
    docs = render(helm_bin, helm_home, "--set", "auth.jwt.jwksUrl=https://idp.example/jwks.json",
                  "--set", "auth.jwt.issuer=https://idp.example/", "--set", "auth.jwt.audience=mlgate",
                  "--set", "auth.jwt.algorithms={RS256,ES256}", "--set", "auth.jwt.scopesClaim=groups",
                  "--set", "auth.jwt.scopeMap.ml-callers={predict:*,route}",
                  "--set", "auth.anonymousScopes={metrics}",
                  "--set", "auth.quotas.perKey.ratePerS=100", "--set", "auth.quotas.perKey.burst=200",
                  "--set", "auth.quotas.perModel.my-model.ratePerS=5",
                  "--set", "auth.quotas.onStoreDown=closed")
    for _, container in ray_pods(docs):
        auth = gateway_settings(docs, container, monkeypatch).auth
        assert auth.api_keys_file is None
        assert (auth.jwt.jwks_url, auth.jwt.issuer, auth.jwt.audience) == (
            "https://idp.example/jwks.json", "https://idp.example/", "mlgate")
        assert auth.jwt.algorithms == ("RS256", "ES256") and auth.jwt.key is None
        assert auth.jwt.scopes_claim == "groups" and auth.jwt.subject_claim == "sub"
        assert auth.jwt.scope_map == {"ml-callers": ("predict:*", "route")}
        assert auth.anonymous_scopes == ("metrics",)
        assert (auth.quotas.per_key.rate_per_s, auth.quotas.per_key.burst) == (100, 200)
        assert auth.quotas.per_model["my-model"].rate_per_s == 5
        assert auth.quotas.on_store_down == "closed"

    docs = render(helm_bin, helm_home, "--set", "auth.jwt.keySecret=idp-key",
                  "--set", "auth.jwt.algorithms={HS256}")
    for _, container in ray_pods(docs):
        key = env_of(container)["MLGATE_AUTH__JWT__KEY"]
        assert "value" not in key
        assert key["valueFrom"]["secretKeyRef"] == {"name": "idp-key", "key": "jwt-key"}
        jwt = gateway_settings(docs, container, monkeypatch).auth.jwt
        assert jwt.jwks_url is None
        assert jwt.key.get_secret_value() == fake_secret({"name": "idp-key", "key": "jwt-key"})


def test_insecure_is_explicit(helm_bin, helm_home, monkeypatch):
    docs = render(helm_bin, helm_home, "-f", str(CHART / "ci" / "dev-values.yaml"))
    for _, container in ray_pods(docs):
        auth = gateway_settings(docs, container, monkeypatch).auth
        assert auth.insecure and not auth.enabled


def label_selector_matches(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def admitted(policy: dict, port: int) -> list[dict]:
    """The peers the policy lets reach ``port``; ``{}`` stands for any source."""
    peers = []
    for rule in policy["spec"]["ingress"]:
        if "ports" not in rule or any(p["port"] == port for p in rule["ports"]):
            peers += rule.get("from") or [{}]
    return peers


def test_network_policy_keeps_ray_ports_inside_the_release(helm_bin, helm_home):
    docs = render(helm_bin, helm_home, *KEYS)
    (policy,) = by_kind(docs, "NetworkPolicy")
    selector = policy["spec"]["podSelector"]
    for pod, _ in ray_pods(docs):
        assert label_selector_matches(selector, pod["metadata"]["labels"])
    for pod, _ in job_pods(docs):  # Spark pods keep their own traffic
        assert not label_selector_matches(selector, pod["metadata"]["labels"])
    own = {"podSelector": selector}
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay"}}}
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    # GCS, Ray client, raylet/object manager/worker ports (Ray picks those: 20000 stands for them).
    for port in (6379, 10001, 20000):
        assert admitted(policy, port) == [own], port
    assert admitted(policy, 8265) == [own, operator]  # the dashboard: KubeRay sends the Serve config
    assert admitted(policy, 8080) == [own, monitoring]
    assert {} in admitted(policy, 8000)  # the API: httpFrom empty, any caller (with credentials)
    assert not any(peer.get("podSelector") == {} and "namespaceSelector" not in peer
                   for rule in policy["spec"]["ingress"] for peer in rule.get("from", []))

    narrowed = {"namespaceSelector": {"matchLabels": {"mlgate-client": "true"}}}
    docs = render(helm_bin, helm_home, *KEYS, "--set-json", f"networkPolicy.httpFrom=[{json.dumps(narrowed)}]")
    (policy,) = by_kind(docs, "NetworkPolicy")
    assert admitted(policy, 8000) == [own, narrowed, monitoring]
    assert not by_kind(render(helm_bin, helm_home, *KEYS, "--set", "networkPolicy.enabled=false"),
                       "NetworkPolicy")


def rayservice_auth(docs: list[dict]) -> dict | None:
    (rayservice,) = by_kind(docs, "RayService")
    return rayservice["spec"]["rayClusterConfig"].get("authOptions")


def test_ray_token_auth_is_on_by_default(helm_bin, helm_home):
    """KubeRay (1.6+) sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from the named Secret in every
    Ray container and sends the token on its dashboard calls; Ray needs 2.52 or newer for it."""
    import base64

    docs = render(helm_bin, helm_home, *KEYS)
    assert rayservice_auth(docs) == {"mode": "token", "secretName": "mlg-mlgate-ray-auth"}
    (rayservice,) = by_kind(docs, "RayService")
    version = tuple(map(int, rayservice["spec"]["rayClusterConfig"]["rayVersion"].split(".")))
    assert version >= (2, 52, 0)
    (secret,) = [d for d in by_kind(docs, "Secret") if component(d) == "ray-auth"]
    assert secret["metadata"]["name"] == "mlg-mlgate-ray-auth"
    assert len(base64.b64decode(secret["data"]["auth_token"])) == 64
    for _, container in ray_pods(docs):  # KubeRay's to set; two sources would disagree
        assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & set(env_of(container))

    docs = render(helm_bin, helm_home, *KEYS, "--set", "ray.auth.existingSecret=ray-token")
    assert rayservice_auth(docs) == {"mode": "token", "secretName": "ray-token"}
    assert not [d for d in by_kind(docs, "Secret") if component(d) == "ray-auth"]
    docs = render(helm_bin, helm_home, *KEYS, "--set", "ray.auth.createSecret=false")
    assert rayservice_auth(docs) == {"mode": "token"}  # KubeRay makes one per Ray cluster
    assert not [d for d in by_kind(docs, "Secret") if component(d) == "ray-auth"]
    docs = render(helm_bin, helm_home, *KEYS, "--set", "ray.auth.enabled=false")
    assert rayservice_auth(docs) is None
    assert not [d for d in by_kind(docs, "Secret") if component(d) == "ray-auth"]


def test_https_certificate_is_mounted_and_probed_over_https(helm_bin, helm_home, monkeypatch):
    docs = render(helm_bin, helm_home, *KEYS, "--set", "http.tls.existingSecret=gateway-tls",
                  "--set", "monitoring.serviceMonitor.enabled=true",
                  "--set", "monitoring.serviceMonitor.bearerTokenSecret.name=prometheus-key")
    for pod, container in ray_pods(docs):
        env = env_of(container)
        cert, key = env["MLGATE_HTTP__TLS_CERTFILE"]["value"], env["MLGATE_HTTP__TLS_KEYFILE"]["value"]
        assert mounted(pod, container, cert) == ("secret", "gateway-tls", "tls.crt")
        assert mounted(pod, container, key) == ("secret", "gateway-tls", "tls.key")
        settings = gateway_settings(docs, container, monkeypatch)
        assert (str(settings.http.tls_certfile), str(settings.http.tls_keyfile)) == (cert, key)
    (_, worker) = ray_pods(docs)[1]
    assert worker["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (endpoint,) = [e for e in monitor["spec"]["endpoints"] if e["port"] == "gateway-metrics"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["serverName"] == "mlg-mlgate.ml.svc"
    assert endpoint["authorization"] == {"type": "Bearer",
                                         "credentials": {"name": "prometheus-key", "key": "api-key"}}
    for version in K8S_VERSIONS:
        assert not errors(crd_validator("ServiceMonitor", version), monitor)

    docs = render(helm_bin, helm_home, *KEYS)
    (_, worker) = ray_pods(docs)[1]
    assert worker["readinessProbe"]["httpGet"].get("scheme", "HTTP") == "HTTP"
    assert not any(e["name"].startswith("MLGATE_HTTP__TLS") for e in worker["env"])


def test_prometheus_may_scrape_anonymously_when_told(helm_bin, helm_home):
    docs = render(helm_bin, helm_home, *KEYS, "--set", "monitoring.serviceMonitor.enabled=true",
                  "--set", "auth.anonymousScopes={metrics}")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert not any("authorization" in e for e in monitor["spec"]["endpoints"])


def test_redis_ca_reaches_every_redis_client(helm_bin, helm_home):
    """mlgate's Redis client (redis-py) takes a CA only from the URL's ssl_ca_certs option: the
    chart mounts the bundle and names it there, for the gateway and the jobs alike."""
    from redis.connection import parse_url

    docs = render(helm_bin, helm_home, *KEYS, "--set", "redis.url=rediss://redis.data:6380/0",
                  "--set", "redis.fallback.url=rediss://scores.data:6380/1?socket_timeout=1",
                  "--set", "redis.tls.caSecret=redis-ca")
    (app,) = serve_config(docs)["applications"]
    urls = [app["args"]["redis"]["url"], app["args"]["fallback"]["redis"]["url"]]
    ca_files = {parse_url(url)["ssl_ca_certs"] for url in urls}
    assert ca_files == {"/etc/mlgate/redis-ca/ca.crt"}
    assert parse_url(urls[1])["socket_timeout"] == 1.0  # the URL's own options stay
    for pod, container in ray_pods(docs) + job_pods(docs):
        assert mounted(pod, container, "/etc/mlgate/redis-ca/ca.crt") == ("secret", "redis-ca", "ca.crt")
    for _, container in job_pods(docs):
        assert parse_url(env_of(container)["MLGATE_REDIS__URL"]["value"])["ssl_ca_certs"] == "/etc/mlgate/redis-ca/ca.crt"

    docs = render(helm_bin, helm_home, *KEYS, "--set", "redis.url=rediss://redis.data:6380/0",
                  "--set", "redis.tls.caConfigMap=trust-bundle", "--set", "redis.tls.caKey=bundle.pem")
    for pod, container in ray_pods(docs) + job_pods(docs):
        assert mounted(pod, container, "/etc/mlgate/redis-ca/bundle.pem") == ("configMap", "trust-bundle", "bundle.pem")


FAKE_SECRETS = {"redis.password": "fake-redis-pw-7f3a", "admin.token": "fake-admin-token-9c1e5d2b",
                "mlflow.username": "fake-mlflow-user-4b8e", "mlflow.password": "fake-mlflow-pw-2d6c"}


@pytest.mark.parametrize("values", ["production-values.yaml", "sparkoperator-values.yaml"])
def test_dev_only_secrets_land_only_in_a_secret(helm_bin, helm_home, values):
    """Inline (dev-only) secret values are rendered into the chart's own Secret and nowhere else:
    not the Serve config, not a ConfigMap, not an env `value` of any pod."""
    import base64

    sets = [a for k, v in FAKE_SECRETS.items() for a in ("--set", f"{k}={v}")]
    docs = render(helm_bin, helm_home, "-f", str(CHART / "ci" / values), *KEYS, *sets,
                  "--set", "redis.existingSecret=", "--set", "admin.existingSecret=",
                  "--set", "mlflow.existingSecret=", "--set", "monitoring.grafanaDashboard.enabled=true")
    (own,) = [d for d in by_kind(docs, "Secret") if d["metadata"]["name"] == "mlg-mlgate"]
    assert {base64.b64decode(v).decode() for v in own["data"].values()} == set(FAKE_SECRETS.values())
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(doc)  # the Serve config is a string in it: covered as well
        leaked = [v for v in FAKE_SECRETS.values() if v in text]
        assert not leaked, f"{doc['kind']}/{doc['metadata']['name']} renders {leaked}"


# ---- protocols: OIP v2 gRPC beside HTTP ------------------------------------------------------

GRPC = ("--set", "protocols.grpc.enabled=true")


def gateway_service(docs: list[dict]) -> dict:
    (service,) = [s for s in by_kind(docs, "Service") if component(s) == "gateway"]
    return service


def test_grpc_is_off_unless_enabled(rendered, values_file, monkeypatch):
    """In every example: without protocols.grpc.enabled no grpc port on any container or Service,
    no gRPC port in the NetworkPolicy and gRPC off in the replicas' Settings; with it, all four."""
    values = yaml.safe_load(values_file.read_text())
    enabled = bool(((values.get("protocols") or {}).get("grpc") or {}).get("enabled"))
    for pod, container in ray_pods(rendered):
        on_worker = component(pod) == "gateway"
        assert ("grpc" in {p["name"] for p in container["ports"]}) == (enabled and on_worker)
        assert gateway_settings(rendered, container, monkeypatch).protocols.grpc.enabled == enabled
    for service in by_kind(rendered, "Service"):
        grpc = [p for p in service["spec"]["ports"] if p["name"] == "grpc" or "appProtocol" in p]
        assert len(grpc) == (1 if enabled and component(service) == "gateway" else 0)
    for policy in by_kind(rendered, "NetworkPolicy"):  # the release's own Ray pods reach any port
        assert (admitted(policy, 8001) != [{"podSelector": policy["spec"]["podSelector"]}]) == enabled
    (app,) = serve_config(rendered)["applications"]
    assert ("grpc" in app["args"].get("protocols", {})) == enabled


def test_grpc_port_on_worker_service_and_network_policy(helm_bin, helm_home, monkeypatch):
    docs = render(helm_bin, helm_home, *KEYS, *GRPC, "--set", "protocols.defaultModel=my-model")
    (head, head_container), (worker, container) = ray_pods(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == 8001 and ports["http"] == 8000
    assert "grpc" not in {p["name"] for p in head_container["ports"]}  # no replica on the head
    service = gateway_service(docs)
    (grpc,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc == {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP",
                    "appProtocol": "grpc"}
    assert worker["metadata"]["labels"].items() >= service["spec"]["selector"].items()
    for version in K8S_VERSIONS:
        for doc in by_kind(docs, "Service") + by_kind(docs, "NetworkPolicy"):
            assert not errors(k8s_validator(version, doc["apiVersion"], doc["kind"]), doc)
        (rayservice,) = by_kind(docs, "RayService")
        assert not errors(crd_validator("RayService", version), rayservice)
    (policy,) = by_kind(docs, "NetworkPolicy")
    own = {"podSelector": policy["spec"]["podSelector"]}
    assert admitted(policy, 8001) == [own, {}]  # callers as on 8000: httpFrom empty, anyone

    # Each replica's Settings: gRPC on its pod's port, on every address like HTTP.
    for _, c in ray_pods(docs):
        protocols = gateway_settings(docs, c, monkeypatch).protocols
        assert (protocols.grpc.enabled, protocols.grpc.port, protocols.grpc.host) == (True, 8001, "0.0.0.0")
        assert protocols.grpc.max_message_bytes == 4 * 1_048_576
        assert protocols.default_model == "my-model"

    narrowed = {"namespaceSelector": {"matchLabels": {"mlgate-client": "true"}}}
    docs = render(helm_bin, helm_home, *KEYS, *GRPC, "--set", "protocols.grpc.port=9001",
                  "--set", "protocols.grpc.maxMessageBytes=16777216",
                  "--set-json", f"networkPolicy.httpFrom=[{json.dumps(narrowed)}]")
    (policy,) = by_kind(docs, "NetworkPolicy")
    assert admitted(policy, 9001) == [own, narrowed]
    (_, container) = ray_pods(docs)[1]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"] == 9001
    (grpc,) = [p for p in gateway_service(docs)["spec"]["ports"] if p["name"] == "grpc"]
    assert (grpc["port"], grpc["targetPort"]) == (9001, "grpc")
    grpc_settings = gateway_settings(docs, container, monkeypatch).protocols.grpc
    assert (grpc_settings.port, grpc_settings.max_message_bytes) == (9001, 16 * 1_048_576)


def test_default_model_alone_leaves_grpc_off(helm_bin, helm_home, monkeypatch):
    docs = render(helm_bin, helm_home, *KEYS, "--set", "protocols.defaultModel=my-model")
    (app,) = serve_config(docs)["applications"]
    assert app["args"]["protocols"] == {"default_model": "my-model"}
    (_, container) = ray_pods(docs)[1]
    protocols = gateway_settings(docs, container, monkeypatch).protocols
    assert protocols.default_model == "my-model" and not protocols.grpc.enabled
    assert "grpc" not in {p["name"] for p in container["ports"]}


def test_gateway_pods_spread_over_nodes_and_zones_unless_told_otherwise(helm_bin, helm_home):
    """One replica per node (item 3 of issue 16: a lost node loses one replica), so the worker
    pods spread over hosts and zones, softly; explicit constraints replace the default."""
    def spread(*sets):
        docs = render(helm_bin, helm_home, *KEYS, *[a for s in sets for a in ("--set", s)])
        (service,) = by_kind(docs, "RayService")
        (worker,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        return worker["template"]["spec"].get("topologySpreadConstraints")

    default = spread()
    assert [c["topologyKey"] for c in default] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" and c["maxSkew"] == 1 for c in default)
    assert all(c["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway" for c in default)
    assert spread("ray.worker.spreadAcrossNodes=false") is None
    own = spread("ray.worker.topologySpreadConstraints[0].maxSkew=2",
                 "ray.worker.topologySpreadConstraints[0].topologyKey=zone",
                 "ray.worker.topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule")
    assert own == [{"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]
