"""Batch scoring on Spark and the gateway's fallback chain, over real Spark, MLflow, Redis, Ray
and HTTP. Batch scores live in a Redis of their own, so the feature store can fail alone.

The gateway runs with authentication and quotas on (API keys from a key file, HS256 JWTs with a
secret from the environment, per-key and per-model limits in Redis): every call here carries the
operator's key, and the tests at the end check what callers without one, or with less, get."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import jwt
import numpy as np
import pandas as pd
import pytest
import redis

from examples.fraud.runner import training_data
from examples.fraud.train import FEATURE_NAMES, REQUEST_FEATURES, REQUEST_NAMES
from examples.fraud.train import VIEW as CUSTOMER_ACTIVITY
from features_online import layout
from features_online.definitions import CLASSIFIER_OUTPUTS, score_view
from features_online.settings import FeatureSettings
from features_online.sync import FeatureSync
from serving.auth.keys import key_hash, new_key, write_keys
from serving.auth.settings import ApiKey
from serving.schemas import PredictResponse
from serving.settings import Settings
from tests.integration.conftest import (DEMO_CUSTOMERS, RedisServer, apply_examples, free_port, gateway_env,
                                       run_cli)

pytestmark = pytest.mark.integration

MAX_AGE_S = 6 * 3600
OPS_KEY, CHECKOUT_KEY = new_key(), new_key()
OPS = {"authorization": f"Bearer {OPS_KEY}"}
JWT_SECRET = "jwt-" + new_key()  # HS256: a shared secret, from the environment only
JWT_AUDIENCE = "mlgate-tests"


def register_misbehaving_models(settings: Settings, table: pd.DataFrame) -> None:
    """fraud-slow (2 s per call) and fraud-broken (fails on live single rows), both taking the
    champion's inputs. Classes are local so cloudpickle ships them by value to Ray replicas."""
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    class Slow(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            import time as t
            t.sleep(2)
            return pd.DataFrame({"label": [0] * len(model_input), "probability": [0.5] * len(model_input)})

    class Broken(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            if len(model_input) == 1:
                raise RuntimeError("model crashed")
            return pd.DataFrame({"label": [0] * len(model_input), "probability": [0.5] * len(model_input)})

    x = table[FEATURE_NAMES].head(5)
    signature = infer_signature(x, pd.DataFrame({"label": [0] * 5, "probability": [0.5] * 5}))
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    experiment = client.create_experiment("fallback-tests", artifact_location=settings.artifact_root)
    for name, model in (("fraud-slow", Slow()), ("fraud-broken", Broken()), ("fraud-unsafe", Slow())):
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(name="model", python_model=model, signature=signature, input_example=x,
                                    registered_model_name=name, pip_requirements=["mlflow"])
        client.set_registered_model_alias(name, "champion", "1")


def copy_scores(spark, settings: Settings, source_parquet: str, model: str, old_entities=()) -> None:
    """Put the champion's batch scores in ``model``'s fallback keyspace, via the real sync.
    ``old_entities`` get an as-of older than the served maximum age."""
    from pyspark.sql import functions as F

    old_ms = int((time.time() - MAX_AGE_S - 3600) * 1000)
    frame = spark.read.parquet(source_parquet).select(
        "customer_id", F.when(F.col("customer_id").isin(list(old_entities) or [-1]), F.lit(old_ms))
        .otherwise(F.col("as_of_ms")).alias("as_of_ms"), "label", "score")
    view = score_view(model, (CUSTOMER_ACTIVITY.entity,), timedelta(seconds=MAX_AGE_S))
    from datetime import datetime, timezone
    FeatureSync(settings.fallback.redis, FeatureSettings(), view).full(
        frame, datetime.now(timezone.utc), source_parquet,
        extra={"model_version": "test", "outputs": CLASSIFIER_OUTPUTS})


@pytest.fixture(scope="module")
def stack(tmp_path_factory, spark):
    state = tmp_path_factory.mktemp("fallback-state")
    redis_server = RedisServer(tmp_path_factory.mktemp("features-redis"))  # its own applied repository
    redis_server.start()
    scores_redis = RedisServer(tmp_path_factory.mktemp("scores-redis"))
    scores_redis.start()
    # fraud-detector comes from the applied repository; these from the settings, keyed by the
    # repository's entity (fraud-absent never loads: its fallbacks need to know the keys)
    customer = {"entities": ["customer"]}
    models = [{"name": "fraud-slow", "placement": "deployment", "allow_pyfunc": True, **customer},
              {"name": "fraud-broken", "placement": "deployment", "allow_pyfunc": True, **customer},
              {"name": "fraud-absent", **customer}, {"name": "fraud-unsafe", **customer}]  # pyfunc, not allowed
    env = gateway_env(state, redis_server.url, MLGATE_FALLBACK__REDIS=json.dumps({"url": scores_redis.url}),
                      MLGATE_FALLBACK__MAX_AGE_S=str(MAX_AGE_S), MLGATE_FEATURES__ON_MISSING="fallback",
                      MLGATE_FEATURES__ON_STALE="fallback",
                      MLGATE_MODELS=json.dumps(models), MLGATE_LIMITS__DEADLINE_MS="1000",
                      # fraud-absent never loads: the replica must not wait for it to take traffic
                      MLGATE_RAY__REPLICA_READY_TIMEOUT_S="0")
    keys = state / "keys.yaml"
    write_keys(keys, [ApiKey(id="ops", sha256=key_hash(OPS_KEY), scopes=("predict:*", "route", "metrics", "admin")),
                      ApiKey(id="checkout", sha256=key_hash(CHECKOUT_KEY), scopes=("predict:fraud-detector",),
                             quota={"rate_per_s": 1, "burst": 3})])
    env.update(MLGATE_AUTH__API_KEYS_FILE=str(keys), MLGATE_AUTH__JWT__KEY=JWT_SECRET,
               MLGATE_AUTH__JWT__ALGORITHMS='["HS256"]', MLGATE_AUTH__JWT__AUDIENCE=JWT_AUDIENCE,
               MLGATE_AUTH__QUOTAS__PER_MODEL=json.dumps({"fraud-unsafe": {"rate_per_s": 0.5, "burst": 2}}),
               MLGATE_ADMIN__PORT=str(free_port()))  # the admin API off the public port
    port = int(env["MLGATE_HTTP__PORT"])
    settings = Settings(state_dir=state, mlflow_tracking_uri=None, redis={"url": redis_server.url},
                        fallback={"redis": {"url": scores_redis.url}, "max_age_s": MAX_AGE_S})
    apply_examples(settings)
    for args in (["data", "--customers", str(DEMO_CUSTOMERS), "--couriers", "20"], ["features", "build"],
                 ["features", "sync"], ["train"], ["batch", "score", "--model", "fraud-detector@champion",
                                                   "--output", str(state / "scores" / "champion")]):
        done = run_cli(args, env)
        assert done.returncode == 0, (args, done.stderr[-3000:])
    table = training_data(settings, spark)
    register_misbehaving_models(settings, table)
    champion_scores = str(state / "scores" / "champion")
    copy_scores(spark, settings, champion_scores, "fraud-slow")
    copy_scores(spark, settings, champion_scores, "fraud-broken")
    copy_scores(spark, settings, champion_scores, "fraud-absent", old_entities=[2])
    log = open(state / "gateway.log", "wb")
    gateway = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve"], env={**os.environ, **env},
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    ready = {"fraud-detector", "fraud-slow", "fraud-broken"}
    for _ in range(300):  # fraud-absent and fraud-unsafe never load: /readyz stays 503 by design
        try:
            listing = httpx.get(f"{base}/v1/models", headers=OPS, timeout=2).json()["models"]
            if {m["name"] for m in listing if m["ready"]} >= ready:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        gateway.terminate()
        pytest.fail((state / "gateway.log").read_text()[-4000:])
    yield {"base": base, "admin": f"http://127.0.0.1:{env['MLGATE_ADMIN__PORT']}", "table": table,
           "scores": pd.read_parquet(champion_scores).set_index("customer_id"),
           "settings": settings, "redis": redis_server, "scores_redis": scores_redis}
    gateway.terminate()
    gateway.wait(120)
    scores_redis.stop()
    redis_server.stop()


def body(stack, ids, **extra):
    rows = stack["table"].drop_duplicates("customer_id").head(len(ids))[REQUEST_NAMES].to_dict("records")
    features = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows]
    return {"entities": [{"customer_id": int(i)} for i in ids], "features": features, **extra}


def predict(stack, model, payload):
    return httpx.post(f"{stack['base']}/v1/models/{model}/predict", json=payload, headers=OPS, timeout=30)


def sample(stack, name: str, **labels: str) -> float:
    """A sample of the gateway's /metrics (0 when the series does not exist yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{stack['base']}/metrics", headers=OPS).text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def assert_fallback(stack, response, ids, reason):
    assert response.status_code == 200, response.text
    PredictResponse.model_validate(response.json())  # the OpenAPI schema describes fallback rows too
    for i, row in zip(ids, response.json()["predictions"]):
        assert (row["source"], row["fallback_reason"]) == ("batch_fallback", reason)
        assert row["probability"] == pytest.approx(stack["scores"].loc[i, "score"], abs=1e-9)


def test_batch_scores_equal_online_predictions_for_the_same_features(stack):
    stats = json.loads(next(stack["settings"].state_dir.glob(
        "models/*/fraud-detector/1/extra_files/feature_stats.json")).read_text())
    typical = {name: stats[name]["quantiles"]["0.5"] for name in REQUEST_NAMES}
    typical = {name: (round(typical[name]) if dtype == "long" else typical[name]) for name, dtype in REQUEST_FEATURES}
    ids = [5, 17, 123]
    r = predict(stack, "fraud-detector", {"entities": [{"customer_id": i} for i in ids], "features": typical})
    assert r.status_code == 200, r.text
    for i, row in zip(ids, r.json()["predictions"]):
        assert row["source"] == "online"
        assert row["probability"] == pytest.approx(stack["scores"].loc[i, "score"], abs=1e-6)
    assert stack["scores"]["model_version"].unique().tolist() == ["1"]
    assert len(stack["scores"]) == DEMO_CUSTOMERS


def test_model_not_ready_is_answered_from_batch_scores(stack):
    ids = [3, 4]
    r = predict(stack, "fraud-absent", body(stack, ids))
    assert_fallback(stack, r, ids, "model_not_ready")
    assert r.json()["predictions"][0]["model_version"] == "test"


def test_a_pyfunc_model_not_allowed_is_refused_and_the_model_page_says_why(stack):
    """fraud-unsafe has no onnx flavour and no allow_pyfunc: its pickle is never loaded."""
    r = httpx.get(f"{stack['base']}/v1/models/fraud-unsafe", headers=OPS, timeout=5)
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["ready"] is False and page["version"] is None
    assert "has no onnx flavour" in page["error"] and "allow_pyfunc: true" in page["error"]


def test_a_failing_model_is_answered_from_batch_scores(stack):
    r = predict(stack, "fraud-broken", body(stack, [8]))
    assert_fallback(stack, r, [8], "model_error")


def test_a_slow_model_past_the_deadline_is_answered_from_batch_scores_in_time(stack):
    started = time.monotonic()
    r = predict(stack, "fraud-slow", body(stack, [9], timeout_ms=300))
    assert time.monotonic() - started < 1.0
    assert_fallback(stack, r, [9], "deadline_exceeded")


def test_rows_whose_features_are_missing_fall_back_alone(stack):
    view, client = CUSTOMER_ACTIVITY, redis.Redis.from_url(stack["redis"].url)
    version = client.hget(layout.meta_key("mlg", view), "version").decode()
    client.hdel(layout.bucket_key("mlg", view, int(version), 11 % view.buckets), b"11")
    r = predict(stack, "fraud-detector", body(stack, [10, 11]))
    assert r.status_code == 200, r.text
    online, fallen_back = r.json()["predictions"]
    assert online["source"] == "online" and online["features"]["customer_activity"]["status"] == "fresh"
    assert (fallen_back["source"], fallen_back["fallback_reason"]) == ("batch_fallback", "features_missing")
    assert fallen_back["features"]["customer_activity"]["status"] == "missing"


def test_rows_whose_features_are_older_than_the_view_ttl_fall_back_and_are_counted(stack):
    """on_stale=fallback: entity 14's stored record is made older than the view's TTL (its
    as-of time rewritten in place); 15 stays fresh in the same request."""
    view, client = CUSTOMER_ACTIVITY, redis.Redis.from_url(stack["redis"].url)
    version = int(client.hget(layout.meta_key("mlg", view), "version"))
    key = layout.bucket_key("mlg", view, version, 14 % view.buckets)
    fresh = client.hget(key, b"14")
    records, present = layout.decode(view, [fresh])
    assert present.all()
    old = records.copy()
    old["as_of_ms"] = int((time.time() - view.ttl.total_seconds() - 3600) * 1000)
    counted = {"name": "mlgate_fallback_rows_total", "model": "fraud-detector", "reason": "features_stale"}
    before = sample(stack, **counted)
    client.hset(key, b"14", old.tobytes())
    try:
        r = predict(stack, "fraud-detector", body(stack, [14, 15]))
    finally:
        client.hset(key, b"14", fresh)
    assert r.status_code == 200, r.text
    stale, online = r.json()["predictions"]
    assert_fallback(stack, r, [14], "features_stale")
    assert stale["features"]["customer_activity"]["status"] == "stale"
    assert stale["features"]["customer_activity"]["age_s"] > view.ttl.total_seconds()
    assert online["source"] == "online" and online["features"]["customer_activity"]["status"] == "fresh"
    assert sample(stack, **counted) == before + 1


def test_metrics_give_the_age_of_each_live_feature_view(stack):
    """mlgate_feature_view_age_seconds across the replicas: the time since the live version's
    as-of time (watermark), as of the replicas' last pointer refresh (every second)."""
    meta = redis.Redis.from_url(stack["redis"].url).hgetall(layout.meta_key("mlg", CUSTOMER_ACTIVITY))
    watermark_s = int(meta[b"watermark_ms"]) / 1000
    before = time.time()
    age = sample(stack, "mlgate_feature_view_age_seconds", view=CUSTOMER_ACTIVITY.name)
    after = time.time()
    slack_s = 5 * FeatureSettings().pointer_refresh_s  # a refresh may run late on a busy machine
    assert before - watermark_s - slack_s <= age <= after - watermark_s
    assert 0 < age < CUSTOMER_ACTIVITY.ttl.total_seconds()  # the stack's features are fresh


def test_too_old_or_absent_batch_scores_are_not_served(stack):
    r = predict(stack, "fraud-absent", body(stack, [2]))  # its score is older than the max age
    assert (r.status_code, r.json()["error"]["code"]) == (503, "fallback_unavailable")
    assert "too old" in r.json()["error"]["message"] and "model_not_ready" in r.json()["error"]["message"]
    r = predict(stack, "fraud-absent", body(stack, [10**9]))
    assert (r.status_code, r.json()["error"]["code"]) == (503, "fallback_unavailable")
    assert "missing" in r.json()["error"]["message"]


def test_feature_reads_that_time_out_fall_back_within_the_deadline(stack):
    """The feature store hangs (paused, not down): its reads time out, the rows are answered from
    the batch scores' own Redis, inside the 1 s request deadline."""
    pause_ms = 2500
    redis.Redis(port=stack["redis"].port).execute_command("CLIENT", "PAUSE", str(pause_ms), "ALL")
    paused = time.monotonic()
    before = sample(stack, "mlgate_fallback_rows_total", model="fraud-detector",
                    reason="feature_store_unavailable")
    started = time.monotonic()
    r = predict(stack, "fraud-detector", body(stack, [21, 22]))
    took = time.monotonic() - started
    assert took < 2.0, took  # the deadline (1 s) and the HTTP round trip, not the 2.5 s pause
    assert_fallback(stack, r, [21, 22], "feature_store_unavailable")
    time.sleep(max(0.0, pause_ms / 1000 - (time.monotonic() - paused)) + 0.3)
    r = predict(stack, "fraud-detector", body(stack, [21, 22]))  # the pause is over: online again
    assert [p["source"] for p in r.json()["predictions"]] == ["online", "online"], r.text
    assert sample(stack, "mlgate_fallback_rows_total", model="fraud-detector",
                  reason="feature_store_unavailable") >= before + 2


def test_feature_store_down_falls_back_and_metrics_say_why(stack):
    stack["redis"].stop()
    try:
        started = time.monotonic()
        r = predict(stack, "fraud-detector", body(stack, [12, 13]))
        assert time.monotonic() - started < 1.0
        assert_fallback(stack, r, [12, 13], "feature_store_unavailable")
    finally:
        stack["redis"].start()  # empty now; later modules re-sync what they need
    text = httpx.get(f"{stack['base']}/metrics", headers=OPS).text
    for reason in ("feature_store_unavailable", "features_missing"):
        assert f'mlgate_fallback_rows_total{{model="fraud-detector",reason="{reason}"}}' in text
    assert np.isfinite(float(text.split('mlgate_fallback_rows_total{model="fraud-absent",reason="model_not_ready"} ')[1]
                             .split()[0]))


# -- who may call, and how often -------------------------------------------------------------------

def token(scope: str, expires_in_s: float = 300, secret: str = JWT_SECRET, audience: str = JWT_AUDIENCE) -> str:
    return jwt.encode({"sub": "svc-risk", "aud": audience, "scope": scope, "exp": int(time.time() + expires_in_s)},
                      secret, algorithm="HS256")


def call(stack, model, headers, ids=(7,)):
    return httpx.post(f"{stack['base']}/v1/models/{model}/predict", json=body(stack, list(ids)),
                      headers=headers, timeout=30)


def test_predictions_need_a_credential_whose_scopes_name_the_model(stack):
    """API keys from the key file and JWTs checked with a secret that reached every replica
    through the environment only; callers outside the route scope learn no version or variant."""
    r = call(stack, "fraud-detector", {})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    for wrong in ({"authorization": "Bearer mlg_not-a-key"}, {"authorization": f"Basic {OPS_KEY}"},
                  {"authorization": f"Bearer {token('predict:*', secret='jwt-' + new_key())}"},
                  {"authorization": f"Bearer {token('predict:*', audience='someone-else')}"}):
        r = call(stack, "fraud-detector", wrong)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized"), wrong
    r = call(stack, "fraud-detector", {"authorization": f"Bearer {token('predict:*', expires_in_s=-120)}"})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "credentials_expired")

    scoped = call(stack, "fraud-detector", {"x-api-key": CHECKOUT_KEY})
    assert scoped.status_code == 200, scoped.text
    answer = scoped.json()
    assert not {"version", "variant", "alias"} & set(answer) and "model_version" not in answer["predictions"][0]
    assert "x-mlgate-variant" not in scoped.headers and "x-model-version" not in scoped.headers
    r = call(stack, "fraud-slow", {"x-api-key": CHECKOUT_KEY})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")

    trusted = call(stack, "fraud-detector", OPS)
    assert trusted.status_code == 200 and trusted.json()["variant"] == "champion"
    assert trusted.headers["x-model-version"] == trusted.json()["version"]
    same = ("label", "probability", "source")  # the same answer, with more said
    assert [{k: p[k] for k in same} for p in trusted.json()["predictions"]] == \
        [{k: p[k] for k in same} for p in answer["predictions"]]
    assert all(p["model_version"] for p in trusted.json()["predictions"])
    by_jwt = call(stack, "fraud-detector", {"authorization": f"Bearer {token('predict:fraud-detector route')}"})
    assert by_jwt.status_code == 200 and by_jwt.json()["version"] == trusted.json()["version"]
    r = call(stack, "fraud-slow", {"authorization": f"Bearer {token('predict:fraud-detector')}"})
    assert r.status_code == 403

    assert httpx.get(f"{stack['base']}/metrics").status_code == 401
    assert httpx.get(f"{stack['base']}/metrics", headers={"x-api-key": CHECKOUT_KEY}).status_code == 403
    assert httpx.get(f"{stack['admin']}/v1/admin/rollouts", headers={"x-api-key": CHECKOUT_KEY}).status_code == 403
    assert httpx.get(f"{stack['admin']}/v1/admin/rollouts").status_code == 401
    assert httpx.get(f"{stack['admin']}/v1/admin/rollouts", headers=OPS).status_code == 200
    assert httpx.get(f"{stack['base']}/v1/admin/rollouts", headers=OPS).status_code == 404  # its own port only
    listed = httpx.get(f"{stack['base']}/v1/models", headers={"x-api-key": CHECKOUT_KEY}).json()["models"]
    assert [m["name"] for m in listed] == ["fraud-detector"]
    assert httpx.get(f"{stack['base']}/healthz").status_code == 200  # probes need no credential
    # the JWT secret and the keys show in no log and no answer
    shown = [(stack["settings"].state_dir / "gateway.log").read_text(errors="replace")]
    shown += [httpx.get(f"{stack['base']}{path}", headers=OPS).text for path in ("/v1/models", "/openapi.json", "/metrics")]
    assert not any(JWT_SECRET in text or OPS_KEY in text or CHECKOUT_KEY in text for text in shown)


def test_quotas_hold_across_the_replicas_and_answer_429_with_retry_after(stack):
    """A model's limit over all its callers, and a key's own limit, counted in Redis so that the
    gateway's replicas (one per CPU, on one shared port) share them."""
    def burst(model, headers, n):
        started = time.monotonic()
        answers = [call(stack, model, headers) for _ in range(n)]
        return answers, time.monotonic() - started

    answers, took = burst("fraud-unsafe", OPS, 8)  # 0.5/s, burst 2; the model never loads
    limited = [r for r in answers if r.status_code == 429]
    assert len(answers) - len(limited) <= 2 + 0.5 * took + 1e-9
    assert limited, [r.status_code for r in answers]
    for r in limited:
        assert r.json()["error"]["code"] == "quota_exceeded" and int(r.headers["retry-after"]) >= 1
    assert all(r.status_code in (200, 429, 503) for r in answers)  # admitted: batch scores, or none

    answers, took = burst("fraud-detector", {"x-api-key": CHECKOUT_KEY}, 10)  # the key's own 1/s, burst 3
    served = [r for r in answers if r.status_code == 200]
    assert 1 <= len(served) <= 3 + 1 * took + 1e-9
    assert {r.status_code for r in answers} <= {200, 429}
    assert call(stack, "fraud-detector", OPS).status_code == 200  # other keys are not limited by it

    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{stack['base']}/metrics", headers=OPS).text
    rejected = {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}
    assert rejected[("mlgate_quota_rejected_total", (("limit", "model"), ("model", "fraud-unsafe")))] >= len(limited)
    assert rejected[("mlgate_quota_rejected_total", (("limit", "key"), ("model", "fraud-detector")))] >= 1
