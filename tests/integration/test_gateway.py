"""The gateway end to end: the real CLI starts real Ray Serve (the default reuseport ingress) over a
real MLflow registry and a password-protected Redis over TLS, with an admin token set, as in
production (secrets from the environment, as a Kubernetes Secret gives them); every check goes over
real HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import time

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest

from examples.fraud.runner import training_data
from examples.fraud.train import FEATURE_NAMES, REQUEST_NAMES
from serving import codec
from serving.runtime.loader import load_model
from serving.settings import ModelSettings, Settings
from tests.integration.conftest import DEMO_COURIERS, DEMO_CUSTOMERS, apply_examples, run_cli
from tests.integration.demo_gateway import ADMIN_TOKEN, MODEL, PYFUNC, REDIS_PASSWORD

pytestmark = pytest.mark.integration

DELIVERY = "delivery-eta"


@pytest.fixture(scope="module")
def gateway(demo_gateway):
    """The session's demo gateway (tests/integration/demo_gateway.py), shared with the protocol tests."""
    return demo_gateway


@pytest.fixture(scope="module")
def redis_server(demo_redis):
    return demo_redis


def post(base: str, body, model: str = MODEL, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return httpx.post(f"{base}/v1/models/{model}/predict", content=content, headers=headers,
                      timeout=30, **kw)


def rows(table: pd.DataFrame, n: int, fraud_first: bool = True) -> list[dict]:
    picked = pd.concat([table[table.label == 1].head(n // 2), table[table.label == 0].head(n - n // 2)])
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in picked[FEATURE_NAMES].to_dict("records")]


def test_demo_prints_real_predictions_and_a_curl_line_that_works(gateway):
    out = gateway["demo_stdout"]
    assert re.search(r"synced 3,000 customers to Redis as version 1", out)
    assert re.search(r"fraud-detector v1 \(@champion\) answered", out)
    assert len(re.findall(r"p\(fraud\) \d\.\d{3} .*features: online_store", out)) == 4
    curl = next(line.strip() for line in out.splitlines() if line.strip().startswith("curl -s -X POST"))
    answer = json.loads(subprocess.run(shlex.split(curl), capture_output=True, text=True,
                                       timeout=30, check=True).stdout)
    assert answer["model"] == MODEL and 0.0 <= answer["predictions"][0]["probability"] <= 1.0
    assert answer["predictions"][0]["features"]["customer_activity"]["source"] == "online_store"


def test_predictions_equal_the_registered_onnx_model_scored_locally(gateway):
    settings, table = gateway["settings"], gateway["table"]
    instances = rows(table, 40)
    r = post(gateway["base"], {"instances": instances})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"], body["alias"]) == (MODEL, "1", "champion")
    assert r.headers["x-model-version"] == "1" and r.headers["x-request-id"] == body["request_id"]
    local = load_model(ModelSettings(name=MODEL), tracking_uri=settings.tracking_uri,
                       cache_dir=settings.state_dir / "test-cache", onnx=settings.onnx)
    expected = local.predict(codec.decode(instances, local.spec))
    got = body["predictions"]
    np.testing.assert_allclose([p["probability"] for p in got], expected["probability"], rtol=0, atol=1e-7)
    assert [p["label"] for p in got] == expected["label"].tolist()
    assert any(p["probability"] > 0.5 for p in got)  # the fraud half is recognised, not all zeros


def test_model_in_its_own_deployment_answers_concurrent_requests_through_serve_batch(gateway):
    import mlflow.pyfunc

    table = gateway["table"]
    instances = rows(table, 64)
    mlflow.set_tracking_uri(gateway["settings"].tracking_uri)
    expected = mlflow.pyfunc.load_model(f"models:/{PYFUNC}@champion").predict(pd.DataFrame(instances))

    async def fire():
        async with httpx.AsyncClient(base_url=gateway["base"], timeout=30) as client:
            return await asyncio.gather(*(client.post(f"/v1/models/{PYFUNC}/predict",
                                                      json={"instances": [row]}) for row in instances))

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * len(instances)
    got = [r.json()["predictions"][0]["prediction"] for r in responses]
    assert got == np.asarray(expected).tolist()


TOO_BIG = b'{"instances": [' + b",".join([b'{"amount": 1.0}'] * 80_000) + b"]}"


@pytest.mark.parametrize("body, headers, status, code", [
    (b'{"instances": [{"amount": 1', {}, 400, "malformed_json"),
    (b'{"instances": [{"amount": NaN}]}', {}, 400, "non_finite_value"),
    ({"instances": "all of them"}, {}, 400, "invalid_request"),
    ("wrong_type", {}, 400, "invalid_feature_type"),
    ("too_large_number", {}, 400, "non_finite_value"),
    ("extra_feature", {}, 400, "unknown_feature"),
    ("missing_feature", {}, 422, "missing_features"),
    ("too_many_rows", {}, 413, "too_many_instances"),
    (TOO_BIG, {}, 413, "payload_too_large"),
    (b"amount=1", {"content-type": "text/plain"}, 415, "unsupported_media_type"),
    ({"entities": [{"customer_id": 1}], "features": [1]}, {}, 400, "invalid_request"),
    (b'{"entities": [{"customer_id": ' + b"[" * 1000 + b"]" * 1000 + b"}]}", {}, 400, "invalid_request"),
    (b'{"instances": ' + b"[" * 100_000, {}, 400, "nesting_too_deep"),
])
def test_every_bad_input_gets_its_code_over_http_never_a_500(gateway, body, headers, status, code):
    row = rows(gateway["table"], 2)[0]
    cases = {
        "wrong_type": {"instances": [{**row, "amount": "12.5"}]},
        "too_large_number": {"instances": [{**row, "amount": 1e300}]},
        "extra_feature": {"instances": [{**row, "customer_name": 1}]},
        "missing_feature": {"instances": [{k: v for k, v in row.items() if k != "amount"}]},
        "too_many_rows": {"instances": [row] * 1001},
    }
    r = post(gateway["base"], cases.get(body, body) if isinstance(body, str) else body, headers=headers)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["request_id"]
    if code == "wrong_type":
        assert "12.5" not in error["message"]  # names the field, never echoes the value


def test_unknown_model_and_route(gateway):
    r = post(gateway["base"], {"instances": [{"a": 1}]}, model="no-such-model")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    r = httpx.get(f"{gateway['base']}/v1/nothing-here")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")


def test_models_readiness_detail_and_example_round_trip(gateway):
    base = gateway["base"]
    # the settings' models and the applied repository's second example, side by side
    assert httpx.get(f"{base}/readyz").json() == {"status": "ok", "models": {MODEL: True, PYFUNC: True,
                                                                             DELIVERY: True}}
    listing = httpx.get(f"{base}/v1/models").json()["models"]
    assert {(m["name"], m["ready"], m["version"]) for m in listing} == {
        (MODEL, True, "1"), (PYFUNC, True, "1"), (DELIVERY, True, "1")}
    detail = httpx.get(f"{base}/v1/models/{MODEL}").json()
    assert [f["name"] for f in detail["inputs"]] == FEATURE_NAMES and detail["flavor"] == "onnx"
    r = post(base, detail["example_request"])
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    assert "/v1/models/{name}/predict" in httpx.get(f"{base}/openapi.json").json()["paths"]


def test_metrics_count_predictions_by_model_version_and_outcome(gateway):
    base = gateway["base"]

    def counter(outcome: str) -> float:
        text = httpx.get(f"{base}/metrics").text
        m = re.search(rf'mlgate_requests_total\{{model="{MODEL}",outcome="{outcome}",version="1"\}} (\S+)', text)
        return float(m.group(1)) if m else 0.0

    ok_before, bad_before = counter("ok"), counter("missing_features")
    row = rows(gateway["table"], 2)[0]
    for _ in range(5):
        assert post(base, {"instances": [row]}).status_code == 200
    assert post(base, {"instances": [{"amount": 1.0}]}).status_code == 422
    assert counter("ok") == ok_before + 5
    assert counter("missing_features") == bad_before + 1
    text = httpx.get(f"{base}/metrics").text
    assert f'mlgate_model_ready{{model="{MODEL}"}} 1.0' in text
    assert re.search(rf'mlgate_model_load_seconds\{{model="{MODEL}",version="1"\}} [0-9.]+', text)


def offline_features(gateway) -> pd.DataFrame:
    from examples.fraud.train import VIEW
    from features_online.jobs import latest_table

    path, _ = latest_table(gateway["settings"], VIEW)
    return pd.read_parquet(path).set_index("customer_id")


def test_entity_keyed_prediction_uses_the_synced_features(gateway):
    table, stored = gateway["table"], offline_features(gateway)
    picked = table.drop_duplicates("customer_id").head(5)
    request = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
               for r in picked[REQUEST_NAMES].to_dict("records")]
    ids = picked["customer_id"].tolist()
    r = post(gateway["base"], {"entities": [{"customer_id": i} for i in ids], "features": request})
    assert r.status_code == 200, r.text
    by_entity = r.json()["predictions"]
    # The same rows with every feature spelled out from the offline table the sync wrote.
    instances = [{**req, **{f"customer_activity__{k}": (v.item() if hasattr(v, "item") else v)
                            for k, v in stored.loc[i].drop("as_of_ms").items()}}
                 for i, req in zip(ids, request)]
    spelled_out = post(gateway["base"], {"instances": instances}).json()["predictions"]
    assert [p["probability"] for p in by_entity] == [p["probability"] for p in spelled_out]
    for p in by_entity:
        origin = p["features"]["customer_activity"]
        assert origin["source"] == "online_store" and origin["status"] == "fresh"
        assert 0 <= origin["age_s"] < 2 * 86_400


def test_unknown_entity_is_served_with_defaults_and_says_so(gateway):
    request = {k: v for k, v in rows(gateway["table"], 2)[0].items() if k in REQUEST_NAMES}
    r = post(gateway["base"], {"entities": [{"customer_id": 10**12}], "features": request})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["features"] == {
        "customer_activity": {"source": "default", "status": "missing"}}
    r = post(gateway["base"], {"entities": [{"customer_id": "ten"}], "features": request})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")


def test_describe_offers_an_entity_keyed_example_with_a_real_customer(gateway):
    detail = httpx.get(f"{gateway['base']}/v1/models/{MODEL}").json()
    example = detail["example_request"]
    assert detail["feature_views"] == ["customer_activity"]
    assert 1 <= example["entities"][0]["customer_id"] <= DEMO_CUSTOMERS
    assert set(example["features"]) == set(REQUEST_NAMES)
    answer = post(gateway["base"], example).json()
    assert answer["predictions"][0]["features"]["customer_activity"]["source"] == "online_store"


def delivery_body(gateway, n: int = 3) -> tuple[dict, pd.DataFrame]:
    from examples import project
    from examples.delivery import data

    recent = data.read_deliveries(project.data_dir(gateway["settings"], "delivery")).tail(n)
    body = {"entities": [{"courier_id": r.courier_id, "restaurant_id": r.restaurant_id} for r in recent.itertuples()],
            "features": [{"distance_km": float(r.distance_km), "hour_of_day": int(r.ordered_at.hour)}
                         for r in recent.itertuples()]}
    return body, recent


def test_a_two_entity_string_keyed_model_reads_both_entities_views_in_one_request(gateway):
    """delivery-eta: views of courier and restaurant (UUID-like string keys) in one request; the
    answer equals the same model fed every input spelled out from the offline tables."""
    from examples.delivery.train import VIEW_NAMES
    from features_online.jobs import latest_table

    body, recent = delivery_body(gateway)
    r = post(gateway["base"], body, model=DELIVERY)
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    spec = httpx.get(f"{gateway['base']}/v1/models/{DELIVERY}").json()
    assert sorted(spec["feature_views"]) == sorted(VIEW_NAMES)
    from examples import project

    repo = project.load(gateway["settings"])
    stored = {}
    for name in VIEW_NAMES:
        path, _ = latest_table(gateway["settings"], repo.views[name])
        key = repo.views[name].entity.keys[0].name
        stored[name] = pd.read_parquet(path).set_index(key)
    instances = []
    for row, request in zip(recent.itertuples(), body["features"]):
        spelled = dict(request)
        for name, table in stored.items():
            key = row.courier_id if repo.views[name].entity.name == "courier" else row.restaurant_id
            for feature in repo.views[name].features:
                value = table.loc[key, feature.name] if key in table.index else feature.default
                spelled[repo.views[name].qualified(feature.name)] = value.item() if hasattr(value, "item") else value
        instances.append(spelled)
    spelled_out = post(gateway["base"], {"instances": instances}, model=DELIVERY)
    assert spelled_out.status_code == 200, spelled_out.text
    assert [a["prediction"] for a in answers] == pytest.approx([a["prediction"] for a in spelled_out.json()["predictions"]])
    assert {a["features"]["courier_stats"]["source"] for a in answers} == {"online_store"}

    # a never-seen courier: the views' defaults, marked missing; a bad key: 400
    unseen = {"entities": [{"courier_id": "courier-never-seen", "restaurant_id": body["entities"][0]["restaurant_id"]}],
              "features": body["features"][0]}
    r = post(gateway["base"], unseen, model=DELIVERY)
    assert r.status_code == 200, r.text
    origin = r.json()["predictions"][0]["features"]
    assert origin["courier_stats"] == {"source": "default", "status": "missing"}
    assert origin["restaurant_stats"]["source"] == "online_store"
    for bad in ({"courier_id": "x" * 65, "restaurant_id": "r"}, {"courier_id": 5, "restaurant_id": "r"},
                {"courier_id": "a\nb", "restaurant_id": "r"}, {"courier_id": "c"}):
        r = post(gateway["base"], {"entities": [bad], "features": body["features"][0]}, model=DELIVERY)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request"), (bad, r.text)


def test_a_model_applied_while_the_gateway_runs_is_served_without_a_restart(gateway):
    """A second name for the delivery model, registered and added to the applied repository:
    the running replicas pick it up (the repository watcher), no restart, no new settings."""
    import mlflow

    from features_online import repository
    from features_online.redis_client import connect

    settings, name = gateway["settings"], "delivery-eta-b"
    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    v1 = client.get_model_version(DELIVERY, "1")
    client.create_registered_model(name)
    client.create_model_version(name, v1.source, run_id=v1.run_id)
    client.set_registered_model_alias(name, "champion", "1")
    store = connect(settings.redis)
    try:
        applied = repository.applied(store, settings.redis.prefix)
        document = applied.spec.model_dump(mode="json")
        document["models"].append({"name": name, "entities": ["courier", "restaurant"], "serving": {"alias": "champion"}})
        repository.apply(store, settings.redis.prefix,
                         repository.compile_spec(repository.validate(document), applied.root))
    finally:
        store.close()
    deadline, in_a_row = time.monotonic() + 120, 0
    while in_a_row < 10:  # each replica adopts it on its own poll: ready on new connections, ten times
        r = httpx.get(f"{gateway['base']}/v1/models/{name}")
        in_a_row = in_a_row + 1 if r.status_code == 200 and r.json()["ready"] else 0
        assert time.monotonic() < deadline, "the applied model was not served within 120 s"
        time.sleep(0.2 if in_a_row else 1)
    body, _ = delivery_body(gateway, 2)
    new, old = post(gateway["base"], body, model=name), post(gateway["base"], body, model=DELIVERY)
    assert new.status_code == 200, new.text
    assert [p["prediction"] for p in new.json()["predictions"]] == [p["prediction"] for p in old.json()["predictions"]]


def test_redis_paused_or_down_gives_503_fast_and_the_gateway_recovers(gateway, redis_server):
    body = {"entities": [{"customer_id": 7}],
            "features": {k: v for k, v in rows(gateway["table"], 2)[0].items() if k in REQUEST_NAMES}}
    redis_server.client().execute_command("CLIENT", "PAUSE", "3000", "ALL")
    started = time.monotonic()
    r = post(gateway["base"], body)
    assert time.monotonic() - started < 1.5  # the 1 s deadline, not the 3 s pause
    # The fallback (batch scores, in the same Redis here) is tried and is unreachable too.
    assert (r.status_code, r.json()["error"]["code"]) == (503, "fallback_unavailable")
    assert "feature_store_unavailable" in r.json()["error"]["message"]
    assert r.json()["error"]["retryable"] is True and r.headers["retry-after"]
    time.sleep(3)
    r = post(gateway["base"], body)  # the pause is over: served again, nobody did anything
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["features"]["customer_activity"]["source"] == "online_store"

    redis_server.stop()
    started = time.monotonic()
    r = post(gateway["base"], body)
    assert time.monotonic() - started < 1.5
    assert (r.status_code, r.json()["error"]["code"]) == (503, "fallback_unavailable")
    assert "unreachable" in r.json()["error"]["message"]

    redis_server.start()  # empty: the data went with the process; apply and sync bring it back
    # (meanwhile the replicas keep the repository they serve: an emptied store drops no model)
    apply_examples(gateway["settings"], models=(MODEL, DELIVERY))
    done = run_cli(["features", "sync"], gateway["env"])
    assert done.returncode == 0, done.stderr[-2000:]
    for _ in range(50):  # the pointer refresh (1 s) picks the new version up by itself
        r = post(gateway["base"], body)
        if r.status_code == 200 and r.json()["predictions"][0]["features"]["customer_activity"]["source"] \
                == "online_store":
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["features"]["customer_activity"]["source"] == "online_store"
    text = httpx.get(f"{gateway['base']}/metrics").text
    assert re.search(r'mlgate_feature_store_errors_total\{reason="(timeout|unavailable)"\} [1-9]', text)


def test_secrets_reach_the_replicas_and_show_nowhere(gateway):
    """The replicas read features with the Redis password (the predictions above are online) and
    guard the admin API with the token; neither secret, nor a mask of it, is shown anywhere."""
    base = gateway["base"]
    assert httpx.get(f"{base}/v1/admin/rollouts", timeout=10).status_code == 401  # loopback or not
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    ok = httpx.get(f"{base}/v1/admin/rollouts", headers=auth, timeout=10)
    assert ok.status_code == 200, ok.text
    # An admin change is audited on the model version it moves (the champion: no canary loaded).
    change = httpx.patch(f"{base}/v1/admin/rollouts/{MODEL}", json={"canary_weight": 0}, headers=auth, timeout=10)
    assert change.status_code == 200, change.text
    from mlflow import MlflowClient

    tracking = gateway["settings"].tracking_uri
    champion = MlflowClient(tracking_uri=tracking, registry_uri=tracking).get_model_version_by_alias(MODEL, "champion")
    audit = json.loads(champion.tags["mlgate.last_admin_change"])
    assert audit["who"] == "admin-token" and audit["after"]["canary_weight"] == 0
    shown = [httpx.get(f"{base}{path}", timeout=10).text for path in ("/v1/models", f"/v1/models/{MODEL}",
                                                                       "/metrics", "/openapi.json")]
    logs = gateway["settings"].state_dir / "logs"
    shown += [f.read_text(errors="replace") for f in logs.rglob("*") if f.is_file()]
    for text in shown:
        assert REDIS_PASSWORD not in text and ADMIN_TOKEN not in text
