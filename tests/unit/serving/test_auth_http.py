"""Authorisation through the HTTP app (issue 13, "secure by default"): what each scope lets a
caller do, admission before the body, and the refusal to expose a gateway without credentials.
Credentials themselves: test_auth.py.

No Ray, no Redis: quotas are tested against a real redis-server in tests/integration/test_quota.py."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import orjson
import pytest

from observability.metrics import GatewayMetrics
from serving import cli, routing
from serving.auth.authenticator import InsecureExposure, check_exposure
from serving.auth.keys import key_hash, new_key
from serving.auth.settings import AuthSettings
from serving.http.app import build_app
from serving.http.server import ReplicaServer
from serving.models import InProcessModel, ModelTable
from serving.pipeline import Pipeline
from serving.rollout import Rollouts
from serving.settings import Settings
from tests.unit.conftest import ToyRuntime, make_spec
from tests.unit.serving.test_replica_server import free_port
from tests.unit.serving.test_auth import (AUDIENCE, ISSUER, SECRET, claims, clean_env,  # noqa: F401 (autouse)
                                          entry, forged, hs256)

ROW = {"amount": 250.0, "count": 3, "is_online": True, "score": 0.5}


# -- the HTTP app: who may do what ----------------------------------------------------------------

CANARY_ROUTING = {"canary": {"alias": "challenger", "weight": 50}}


def keyring(**scopes_by_id: tuple[str, ...]) -> tuple[list[dict], dict[str, str]]:
    """Inline API key settings (hashes only) and the keys themselves, by id."""
    keys = {key_id: new_key() for key_id in scopes_by_id}
    return ([{"id": key_id, "sha256": key_hash(keys[key_id]), "scopes": list(scopes)}
             for key_id, scopes in scopes_by_id.items()], keys)


def gateway(scenario, auth=None, client_host="127.0.0.1", models=("toy",), routing=None, **settings):
    """Run ``scenario(client, pipeline, metrics)`` against a freshly built app: each model's
    champion is v3 and its challenger (a canary, when ``routing`` names one) v4."""
    settings = Settings(models=[{"name": n, **({"routing": routing} if routing else {})} for n in models],
                        auth=auth or {}, **settings)
    metrics = GatewayMetrics()

    def runtime(m):
        return InProcessModel(ToyRuntime(make_spec(m.name, version="4" if m.alias == "challenger" else "3")),
                              metrics)

    async def main():
        table = ModelTable(settings, metrics, runtime, retry_initial_s=0.01)
        table.start()
        await asyncio.wait_for(table.wait_ready(), 5)
        for _ in range(200):  # the canaries load too
            if all(v.backend for n in models for v in table.variants(n).values()):
                break
            await asyncio.sleep(0.01)
        pipeline = Pipeline(settings, table, metrics, rollouts=Rollouts(settings, table, metrics))
        transport = httpx.ASGITransport(app=build_app(pipeline), raise_app_exceptions=False,
                                        client=(client_host, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            try:
                return await scenario(client, pipeline, metrics)
            finally:
                table.close()

    return asyncio.run(main())


def predict(client, headers=None, model="toy", body=None):
    return client.post(f"/v1/models/{model}/predict", content=orjson.dumps(body or {"instances": [ROW]}),
                       headers={"content-type": "application/json", **(headers or {})})


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def sample(metrics, name, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_predict_needs_a_credential_in_either_header_and_a_scope_for_the_model():
    entries, keys = keyring(caller=("predict:toy",), elsewhere=("predict:other",))

    async def scenario(client, pipeline, metrics):
        r = await predict(client)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        assert r.headers["www-authenticate"] == 'Bearer realm="mlgate"'
        for headers in (bearer(keys["caller"]), {"x-api-key": keys["caller"]},
                        {"authorization": f"bearer   {keys['caller']}  "}):
            r = await predict(client, headers)
            assert r.status_code == 200, (headers, r.text)
            assert [p["label"] for p in r.json()["predictions"]] == [1]
        refusals = [
            ({"authorization": f"Basic {keys['caller']}"}, 401, "unauthorized"),
            ({"authorization": keys["caller"]}, 401, "unauthorized"),  # no scheme
            (bearer(new_key()), 401, "unauthorized"),  # well formed, never issued
            (bearer("not-a-key"), 401, "unauthorized"),
            ({"x-api-key": ""}, 401, "unauthorized"),
            (bearer(keys["elsewhere"]), 403, "forbidden"),
        ]
        for headers, status, code in refusals:
            r = await predict(client, headers)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), headers
            assert keys["caller"] not in r.text and keys["elsewhere"] not in r.text
        assert sample(metrics, "mlgate_requests_total", model="toy", version="", outcome="unauthorized") == 6
        assert sample(metrics, "mlgate_requests_total", model="toy", version="", outcome="forbidden") == 1
        assert sample(metrics, "mlgate_requests_total", model="toy", version="3", outcome="ok") == 3

    gateway(scenario, auth={"api_keys": entries})


def test_only_route_and_admin_callers_learn_which_variant_and_version_answered():
    entries, keys = keyring(caller=("predict:toy",), router=("predict:toy", "route"), admin=("admin",))

    async def scenario(client, pipeline, metrics):
        r = await predict(client, bearer(keys["caller"]))
        assert r.status_code == 200
        body = r.json()
        assert not {"version", "variant", "alias"} & set(body)
        assert body["model"] == "toy" and body["request_id"]
        assert [set(p) & {"model_version"} for p in body["predictions"]] == [set()]
        assert "x-model-version" not in r.headers and "x-mlgate-variant" not in r.headers
        for who in ("router", "admin"):
            r = await predict(client, bearer(keys[who]))
            body = r.json()
            assert (body["version"], body["variant"], body["alias"]) == ("3", "champion", "champion")
            assert body["predictions"][0]["model_version"] == "3"
            assert (r.headers["x-model-version"], r.headers["x-mlgate-variant"]) == ("3", "champion")

    gateway(scenario, auth={"api_keys": entries})


def test_the_routing_key_header_steers_only_trusted_callers():
    """At a 50 % canary, a trusted caller's one routing key always lands on the same variant; an
    untrusted caller's instance requests are drawn at random whatever key it sends, so it cannot
    pin (or, with a chosen key, steer) its traffic."""
    entries, keys = keyring(caller=("predict:toy",), router=("predict:toy", "route"))
    key = "customer-7"
    sticky = routing.assign("toy", key, 50)

    async def scenario(client, pipeline, metrics):
        def served(variant):
            return sample(metrics, "mlgate_variant_requests_total", model="toy", variant=variant, outcome="ok")

        for _ in range(40):
            assert (await predict(client, {**bearer(keys["router"]), "x-routing-key": key})).status_code == 200
        assert (served(sticky), served("canary" if sticky == "champion" else "champion")) == (40, 0)
        for _ in range(40):
            assert (await predict(client, {**bearer(keys["caller"]), "x-routing-key": key})).status_code == 200
        # P(40 random draws at 50 % all on the sticky side) = 2**-40
        assert served("champion") + served("canary") == 80
        assert 0 < served("canary" if sticky == "champion" else "champion") < 40

    gateway(scenario, auth={"api_keys": entries}, routing=CANARY_ROUTING)


def test_a_forced_variant_needs_the_admin_scope():
    entries, keys = keyring(router=("predict:*", "route"), admin=("admin",))

    async def scenario(client, pipeline, metrics):
        r = await predict(client, {**bearer(keys["router"]), "x-mlgate-variant": "canary"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await predict(client, {**bearer(keys["admin"]), "x-mlgate-variant": "canary"})
        assert (r.status_code, r.json()["variant"], r.json()["version"]) == (200, "canary", "4")

    gateway(scenario, auth={"api_keys": entries}, routing=CANARY_ROUTING)


def test_metrics_models_list_health_and_admin_api_by_scope(caplog):
    entries, keys = keyring(caller=("predict:toy",), every=("predict:*",), prom=("metrics",), admin=("admin",))

    async def scenario(client, pipeline, metrics):
        r = await client.get("/metrics")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        assert r.headers["www-authenticate"] == 'Bearer realm="mlgate"'
        r = await client.get("/metrics", headers=bearer(keys["every"]))
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        for who in ("prom", "admin"):
            r = await client.get("/metrics", headers=bearer(keys[who]))
            assert r.status_code == 200 and "mlgate_requests_total" in r.text

        def listed(r):
            return [m["name"] for m in r.json()["models"]]

        assert (await client.get("/v1/models")).status_code == 401
        assert listed(await client.get("/v1/models", headers=bearer(keys["caller"]))) == ["toy"]
        assert listed(await client.get("/v1/models", headers=bearer(keys["every"]))) == ["toy", "other"]
        assert listed(await client.get("/v1/models", headers=bearer(keys["prom"]))) == []
        assert (await client.get("/v1/models/toy", headers=bearer(keys["caller"]))).status_code == 200
        assert (await client.get("/v1/models/other", headers=bearer(keys["caller"]))).status_code == 403
        assert (await client.get("/v1/models/toy")).status_code == 401

        for path in ("/healthz", "/readyz"):  # probes carry no credentials
            assert (await client.get(path)).status_code == 200

        r = await client.get("/v1/admin/rollouts")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        r = await client.get("/v1/admin/rollouts", headers=bearer(keys["every"]))
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await client.patch("/v1/admin/rollouts/toy", json={"canary_weight": 100}, headers=bearer(keys["every"]))
        assert r.status_code == 403 and pipeline.rollouts.canary_weight("toy") == 50
        r = await client.get("/v1/admin/rollouts", headers=bearer(keys["admin"]))
        assert r.status_code == 200 and [m["model"] for m in r.json()["rollouts"]] == ["toy", "other"]
        with caplog.at_level("INFO", logger="mlgate.audit"):
            r = await client.patch("/v1/admin/rollouts/toy", json={"canary_weight": 100},
                                   headers=bearer(keys["admin"]))
        assert (r.status_code, r.json()["updated_by"]) == (200, "admin")
        assert pipeline.rollouts.canary_weight("toy") == 100
        (record,) = [json.loads(m.getMessage()) for m in caplog.records if m.name == "mlgate.audit"]
        assert record["who"] == "key:admin"  # the audit log names the key, never the key itself
        assert keys["admin"] not in caplog.text

    # from loopback, as the demo's admin calls are: with credentials configured that earns nothing
    gateway(scenario, auth={"api_keys": entries}, models=("toy", "other"), routing=CANARY_ROUTING)


def test_a_bearer_jwt_works_through_the_app_with_its_scopes():
    auth = {"jwt": {"key": SECRET, "algorithms": ["HS256"], "issuer": ISSUER, "audience": AUDIENCE}}

    async def scenario(client, pipeline, metrics):
        r = await predict(client, bearer(hs256(claims(scope="predict:toy"))))
        assert r.status_code == 200 and "version" not in r.json()
        r = await predict(client, bearer(hs256(claims(scope="predict:other"))))
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await predict(client, bearer(hs256(claims(exp=int(time.time()) - 120))))
        assert (r.status_code, r.json()["error"]["code"]) == (401, "credentials_expired")
        assert r.headers["www-authenticate"] == 'Bearer realm="mlgate"'
        r = await predict(client, bearer(forged({"alg": ["HS256"]}, claims(), SECRET.encode())))
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")

    gateway(scenario, auth=auth)


def test_a_key_revoked_in_the_key_file_stops_working_without_a_restart(tmp_path, capsys):
    path = tmp_path / "keys.yaml"
    assert cli.main(["keys", "--file", str(path), "create", "--id", "svc", "--scope", "predict:toy"]) == 0
    key = capsys.readouterr().out.strip()

    async def scenario(client, pipeline, metrics):
        assert (await predict(client, bearer(key))).status_code == 200
        assert cli.main(["keys", "--file", str(path), "revoke", "--id", "svc"]) == 0
        await asyncio.sleep(0.06)
        r = await predict(client, bearer(key))
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")

    gateway(scenario, auth={"api_keys_file": str(path), "reload_s": 0.05})


def test_without_credentials_configured_a_loopback_gateway_behaves_as_before():
    async def scenario(client, pipeline, metrics):
        r = await predict(client, {"x-routing-key": "customer-7"})
        assert r.status_code == 200
        assert (r.json()["version"], r.headers["x-model-version"], r.headers["x-mlgate-variant"]) == \
            ("3", "3", "champion")
        assert (await client.get("/metrics")).status_code == 200
        assert [m["name"] for m in (await client.get("/v1/models")).json()["models"]] == ["toy"]
        assert (await client.get("/v1/admin/rollouts")).status_code == 200  # the demo's loopback trust

    gateway(scenario)

    async def insecure(client, pipeline, metrics):  # anyone may predict, nobody may steer or see
        r = await predict(client)
        assert r.status_code == 200 and "version" not in r.json() and "x-mlgate-variant" not in r.headers
        assert (await client.get("/v1/admin/rollouts")).status_code == 403

    gateway(insecure, auth={"insecure": True}, client_host="10.1.2.3", http={"host": "0.0.0.0"})


def test_a_request_without_credentials_is_refused_before_its_body_arrives():
    """Admission comes first: a caller that declares a body and never sends it gets its 401 at
    once, holding neither a body buffer nor an in-flight slot until body_timeout_s."""
    entries, _ = keyring(svc=("predict:*",))
    settings = Settings(models=[{"name": "toy"}], auth={"api_keys": entries}, http={"body_timeout_s": 5})
    metrics = GatewayMetrics()

    async def main():
        table = ModelTable(settings, metrics, lambda m: InProcessModel(ToyRuntime(), metrics))
        table.start()
        await asyncio.wait_for(table.wait_ready(), 5)
        port = free_port()
        server = ReplicaServer(build_app(Pipeline(settings, table, metrics)), "127.0.0.1", port, drain_s=0.2)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            started = time.monotonic()
            writer.write(b"POST /v1/models/toy/predict HTTP/1.1\r\nhost: x\r\n"
                         b"content-type: application/json\r\ncontent-length: 100\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            body = await asyncio.wait_for(reader.readexactly(length), 1)
            return head, body, time.monotonic() - started
        finally:
            writer.close()
            await server.stop()
            table.close()

    head, body, elapsed = asyncio.run(main())
    assert head.startswith(b"HTTP/1.1 401 ") and b'"unauthorized"' in body
    assert elapsed < 1.0  # body_timeout_s is 5


def test_quotas_are_on_when_any_limit_may_apply_a_keys_own_included(tmp_path):
    """An API key made with ``mlgate keys create --rate`` is limited even when no default limit
    is configured (the gateway builds its Limiter when this says so)."""
    key = new_key()
    assert not AuthSettings().quotas_enabled
    assert not AuthSettings(api_keys=[entry("svc", key, "predict:*")]).quotas_enabled
    assert AuthSettings(api_keys=[entry("svc", key, "predict:*", quota={"rate_per_s": 5})]).quotas_enabled
    assert AuthSettings(api_keys_file=tmp_path / "keys.yaml").quotas_enabled  # may gain one at a reload
    assert AuthSettings(quotas={"per_key": {"rate_per_s": 5}}).quotas_enabled
    assert AuthSettings(quotas={"per_model": {"toy": {"rate_per_s": 5}}}).quotas_enabled


# -- exposure: no credentials beyond this machine unless told -------------------------------------

def test_check_exposure_refuses_a_public_gateway_without_credentials():
    entries, _ = keyring(svc=("predict:*",))
    for host in ("0.0.0.0", "::", "10.0.0.5", "gateway.internal"):
        with pytest.raises(InsecureExposure, match="--insecure"):
            check_exposure(host, AuthSettings())
        check_exposure(host, AuthSettings(api_keys=entries))
        check_exposure(host, AuthSettings(jwt={"key": SECRET, "algorithms": ["HS256"]}))
        check_exposure(host, AuthSettings(insecure=True))
    for host in ("127.0.0.1", "::1", "localhost"):
        check_exposure(host, AuthSettings())


def test_serve_on_a_public_address_without_credentials_exits_2_before_starting_ray(monkeypatch, capsys):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a gateway that must refuse to start")

    monkeypatch.setattr(ray, "init", no_ray)
    assert cli.main(["serve", "--host", "0.0.0.0"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlgate: error: refusing to serve on 0.0.0.0 without authentication")
    assert "--insecure" in err and len(err.splitlines()) == 1
