"""Canary routing, rollbacks, shadows and the admin API over toy in-memory variants (no Redis:
each gateway keeps its own rollout state)."""

from __future__ import annotations

import asyncio
import json

import httpx
import orjson
import pytest

from observability.metrics import GatewayMetrics
from serving.errors import ModelNotFound
from serving.http.app import build_app
from serving.models import InProcessModel, ModelTable
from serving.pipeline import Pipeline
from serving.rollout import Rollouts
from serving.settings import ModelSettings, Settings
from serving.shadow import ShadowMirror, compare
from tests.unit.conftest import ToyRuntime, make_spec

ROW = {"amount": 250.0, "count": 3, "is_online": True, "score": 0.5}


class SlowRuntime(ToyRuntime):
    def predict(self, inputs):
        import time
        time.sleep(0.3)
        return super().predict(inputs)


def runtimes(canary_fails=False, shadow=None):
    """alias -> runtime: champion v3, challenger v4, shadows v5."""
    return {"champion": ToyRuntime(),
            "challenger": ToyRuntime(make_spec(version="4"),
                                     fail_with=RuntimeError("boom") if canary_fails else None),
            "shadow": shadow or ToyRuntime(make_spec(version="5"))}


def run(scenario, table=None, client_host="127.0.0.1", routing=None, on_admin_change=None, **settings):
    routing = routing or {"canary": {"alias": "challenger", "weight": 0}}
    settings = Settings(models=[{"name": "toy", "routing": routing}], **settings)
    metrics = GatewayMetrics()
    table = table or runtimes()

    async def main():
        models = ModelTable(settings, metrics, lambda m: InProcessModel(table[m.alias], metrics),
                            retry_initial_s=0.01)
        models.start()
        await asyncio.wait_for(models.wait_ready(), 5)
        for _ in range(100):  # let the canary and shadows load too
            if all(v.backend for v in models.variants("toy").values()):
                break
            await asyncio.sleep(0.01)
        rollouts = Rollouts(settings, models, metrics)
        pipeline = Pipeline(settings, models, metrics, rollouts=rollouts)
        pipeline.mirror = ShadowMirror(pipeline.replay, metrics, queue_size=4, concurrency=1)
        pipeline.mirror.start()
        app = build_app(pipeline, on_admin_change=on_admin_change)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(client_host, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            try:
                return await scenario(client, rollouts, pipeline, metrics)
            finally:
                pipeline.mirror.close()
                models.close()

    return asyncio.run(main())


def post(client, body=None, key=None, headers=None):
    headers = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        headers["x-routing-key"] = key
    return client.post("/v1/models/toy/predict", content=orjson.dumps(body or {"instances": [ROW]}),
                       headers=headers)


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_admin_patch_moves_traffic_and_every_response_names_its_variant():
    async def scenario(client, rollouts, pipeline, metrics):
        r = await post(client, key="k1")
        assert (r.json()["variant"], r.headers["x-mlgate-variant"], r.json()["version"]) == ("champion", "champion", "3")
        r = await client.patch("/v1/admin/rollouts/toy", json={"canary_weight": 100})
        assert r.status_code == 200 and r.json()["canary_weight"] == 100 and r.json()["updated_by"] == "admin"
        r = await post(client, key="k1")
        assert (r.json()["variant"], r.headers["x-mlgate-variant"], r.json()["version"]) == ("canary", "canary", "4")
        assert r.json()["predictions"][0]["model_version"] == "4"
        assert sample(metrics, "mlgate_canary_weight", model="toy") == 100
        status = (await client.get("/v1/admin/rollouts")).json()["rollouts"][0]
        assert status["variants"]["canary"] == {"alias": "challenger", "version": "4", "pinned_version": None,
                                                "ready": True, "error": None}

    run(scenario)


@pytest.mark.parametrize("body,status,code", [
    (b"{", 400, "invalid_request"),
    (b'{"canary_weight": 150}', 400, "invalid_request"),
    (b'{"canary_weight": 5, "extra": 1}', 400, "invalid_request"),
    (b'{"canary_weight": "5"}', 400, "invalid_request"),  # a number, as the schema says
    (b'{"canary_weight": true}', 400, "invalid_request"),
    (b'{"shadow_shares": {"nope": 5}}', 404, "variant_not_found"),
    (b'canary_weight=5', 415, "unsupported_media_type"),
])
def test_admin_bad_changes_are_refused_and_change_nothing(body, status, code):
    async def scenario(client, rollouts, pipeline, metrics):
        media = "application/json" if body.startswith(b"{") else "application/x-www-form-urlencoded"
        r = await client.patch("/v1/admin/rollouts/toy", content=body, headers={"content-type": media})
        assert (r.status_code, r.json()["error"]["code"]) == (status, code)
        assert rollouts.state("toy").canary_weight == 0
        r = await client.patch("/v1/admin/rollouts/nope", json={"canary_weight": 1})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")

    run(scenario)


def test_canary_weight_without_a_canary_is_a_conflict():
    async def scenario(client, rollouts, pipeline, metrics):
        r = await client.patch("/v1/admin/rollouts/toy", json={"canary_weight": 10})
        assert (r.status_code, r.json()["error"]["code"]) == (409, "rollout_conflict")

    run(scenario, routing={"canary": None})


def test_admin_and_forced_variant_need_the_token_or_loopback():
    async def scenario(client, rollouts, pipeline, metrics):
        assert (await client.get("/v1/admin/rollouts")).status_code == 401
        bad = {"authorization": "Bearer wrong"}
        assert (await client.get("/v1/admin/rollouts", headers=bad)).status_code == 401
        good = {"authorization": "Bearer s3cret-0123456789abcdef"}
        assert (await client.get("/v1/admin/rollouts", headers=good)).status_code == 200
        r = await post(client, headers={"x-mlgate-variant": "canary"})
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        r = await post(client, headers={"x-mlgate-variant": "canary", **good})
        assert r.status_code == 200 and r.json()["variant"] == "canary"
        r = await post(client, headers={"x-mlgate-variant": "nope", **good})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "variant_not_found")
        assert "s3cret-0123456789abcdef" not in r.text

    run(scenario, admin={"token": "s3cret-0123456789abcdef"})

    async def remote(client, rollouts, pipeline, metrics):
        r = await client.get("/v1/admin/rollouts")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")

    run(remote, client_host="10.1.2.3")

    async def relayed(client, rollouts, pipeline, metrics):  # loopback, but a local proxy's relay
        assert (await client.get("/v1/admin/rollouts")).status_code == 200
        for header in ("x-forwarded-for", "forwarded", "x-real-ip"):
            r = await client.get("/v1/admin/rollouts", headers={header: "203.0.113.9"})
            assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await post(client, headers={"x-mlgate-variant": "canary", "x-forwarded-for": "203.0.113.9"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")

    run(relayed, client_host="127.0.0.1")

    async def rebinding(client, rollouts, pipeline, metrics):  # a browser tricked by DNS rebinding
        r = await client.get("/v1/admin/rollouts", headers={"host": "evil.example:8000"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        r = await post(client, headers={"x-mlgate-variant": "canary", "host": "evil.example"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
            assert (await client.get("/v1/admin/rollouts", headers={"host": host})).status_code == 200

    run(rebinding, client_host="127.0.0.1")


@pytest.mark.parametrize("http", [{"host": "0.0.0.0"}, {"ingress": "haproxy"}, {"ingress": "proxy"}])
def test_without_a_token_loopback_is_trusted_only_on_a_loopback_bound_gateway_behind_no_proxy(http):
    async def scenario(client, rollouts, pipeline, metrics):
        r = await client.get("/v1/admin/rollouts")  # from 127.0.0.1: HAProxy and Ray's proxy are too
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")

    run(scenario, client_host="127.0.0.1", http=http)


def test_with_a_token_the_host_must_be_allowed_when_a_list_is_set():
    good = {"authorization": "Bearer s3cret-0123456789abcdef"}

    async def scenario(client, rollouts, pipeline, metrics):
        r = await client.get("/v1/admin/rollouts", headers={**good, "host": "mlgate.internal:8000"})
        assert r.status_code == 200
        r = await client.get("/v1/admin/rollouts", headers={**good, "host": "evil.example"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")

    run(scenario, client_host="10.0.0.5", http={"host": "0.0.0.0"},
        admin={"token": "s3cret-0123456789abcdef", "allowed_hosts": ["MLGATE.internal"]})


def test_every_admin_change_is_audited_in_the_log_and_on_the_model_version(caplog):
    changes = []

    async def scenario(client, rollouts, pipeline, metrics):
        with caplog.at_level("INFO", logger="mlgate.audit"):
            r = await client.patch("/v1/admin/rollouts/toy", json={"canary_weight": 25})
        assert r.status_code == 200
        (record,) = [json.loads(m.getMessage()) for m in caplog.records if m.name == "mlgate.audit"]
        assert record["who"] == "loopback" and record["peer"] == "127.0.0.1"
        assert (record["action"], record["model"]) == ("rollout.change", "toy")
        assert record["before"]["canary_weight"] == 0 and record["after"]["canary_weight"] == 25
        assert changes == [("toy", "4", record)]  # the canary's version (v4) carries it

    run(scenario, on_admin_change=lambda model, version, record: changes.append((model, version, record)))


def test_a_failing_canary_costs_no_answer_and_is_rolled_back_by_the_analysis():
    async def scenario(client, rollouts, pipeline, metrics):
        await client.patch("/v1/admin/rollouts/toy", json={"canary_weight": 50})
        answers = [await post(client, key=str(k)) for k in range(200)]
        assert all(r.status_code == 200 and r.json()["variant"] == "champion" for r in answers)
        assert sample(metrics, "mlgate_variant_requests_total", model="toy", variant="canary",
                      outcome="model_error") > 50
        await rollouts.analyse()
        state = rollouts.state("toy")
        assert state.halted and state.canary_weight == 0 and state.reason.startswith("error_rate")
        assert sample(metrics, "mlgate_canary_rollbacks_total", model="toy", reason="error_rate") == 1
        assert sample(metrics, "mlgate_rollout_halted", model="toy") == 1
        status = (await client.get("/v1/admin/rollouts/toy")).json()
        assert status["halted"] and "canary v4" in status["reason"]
        r = await client.patch("/v1/admin/rollouts/toy", json={})  # not a decision on the canary
        assert r.json()["halted"] is True and r.json()["canary_weight"] == 0
        r = await client.patch("/v1/admin/rollouts/toy", json={"canary_weight": 5})  # someone acts
        assert r.json()["halted"] is False and r.json()["canary_weight"] == 5

    run(scenario, table=runtimes(canary_fails=True),
        routing={"canary": {"alias": "challenger", "weight": 0}, "analysis": {"min_requests": 20}})


def test_a_slow_shadow_neither_delays_nor_changes_the_primary_and_overflow_is_counted():
    routing = {"canary": None, "shadows": [{"name": "slow", "alias": "shadow", "share": 100}]}

    async def scenario(client, rollouts, pipeline, metrics):
        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = [await post(client, key=str(k)) for k in range(20)]
        assert loop.time() - started < 1.0  # one shadow call alone takes 0.3 s
        assert all(r.json()["variant"] == "champion" and r.json()["version"] == "3" for r in answers)
        await asyncio.wait_for(pipeline.mirror.drain(), 10)
        ok = sample(metrics, "mlgate_shadow_requests_total", model="toy", shadow="slow", outcome="ok")
        dropped = sample(metrics, "mlgate_shadow_requests_total", model="toy", shadow="slow", outcome="dropped")
        assert ok >= 1 and dropped >= 1 and ok + dropped == 20
        assert sample(metrics, "mlgate_shadow_rows_total", model="toy", shadow="slow", agree="true") == ok

    run(scenario, table=runtimes(shadow=SlowRuntime(make_spec(version="5", flavor="pyfunc"))), routing=routing)


def test_a_failing_shadow_is_counted_not_felt():
    routing = {"canary": None, "shadows": [{"name": "bad", "alias": "shadow", "share": 100}]}

    async def scenario(client, rollouts, pipeline, metrics):
        r = await post(client)
        assert r.status_code == 200 and r.json()["variant"] == "champion"
        await asyncio.wait_for(pipeline.mirror.drain(), 5)
        assert sample(metrics, "mlgate_shadow_requests_total", model="toy", shadow="bad", outcome="error") == 1

    run(scenario, table=runtimes(shadow=ToyRuntime(make_spec(version="5"), fail_with=RuntimeError("x"))),
        routing=routing)


def test_compare_rows_answered_online_by_both():
    primary = [{"label": 1, "probability": 0.9, "source": "online"},
               {"label": 0, "probability": 0.2, "source": "batch_fallback"},
               {"label": 0, "probability": 0.3, "source": "online"}]
    shadow = [{"label": 1, "probability": 0.8}, {"label": 1, "probability": 0.9}, {"label": 1, "probability": 0.6}]
    result = compare(primary, shadow)
    assert [agree for agree, _ in result] == [True, False]
    assert [round(d, 6) for _, d in result] == [0.1, 0.3]


def test_a_forced_canary_that_is_not_loaded_is_503_not_the_champion():
    def factory_table():
        table = runtimes()
        table["challenger"] = None  # InProcessModel(None) fails: the canary never loads
        return table

    async def scenario(client, rollouts, pipeline, metrics):
        await rollouts.set("toy", canary_weight=100)
        r = await post(client, headers={"x-mlgate-variant": "canary"})
        assert (r.status_code, r.json()["error"]["code"]) == (503, "model_not_ready")
        r = await post(client, key="anyone")  # routed: the canary's keys stay with the champion
        assert r.status_code == 200 and r.json()["variant"] == "champion"

    run(scenario, table=factory_table())


class ShiftedRuntime(ToyRuntime):
    """Scores every row higher than the champion does: a score shift, with no errors or delay."""

    def predict(self, inputs):
        out = super().predict(inputs)
        return {**out, "probability": (out["probability"] * 0.5).astype(out["probability"].dtype)}


@pytest.mark.parametrize("action", ["rollback", "alert"])
def test_a_score_shift_rolls_back_or_only_alerts_as_configured(action):
    async def scenario(client, rollouts, pipeline, metrics):
        await client.patch("/v1/admin/rollouts/toy", json={"canary_weight": 50})
        for k in range(200):
            assert (await post(client, key=str(k))).status_code == 200
        await rollouts.analyse()
        await rollouts.analyse()  # the same breach again: one rollback, or one alert
        state = rollouts.state("toy")
        if action == "rollback":
            assert state.halted and state.reason.startswith("score_shift")
            assert sample(metrics, "mlgate_canary_rollbacks_total", model="toy", reason="score_shift") == 1
        else:
            assert not state.halted and state.canary_weight == 50
            assert sample(metrics, "mlgate_canary_alerts_total", model="toy", reason="score_shift") == 1
            assert sample(metrics, "mlgate_canary_rollbacks_total", model="toy", reason="score_shift") == 0

    table = runtimes()
    table["challenger"] = ShiftedRuntime(make_spec(version="4"))
    run(scenario, table=table, routing={"canary": {"alias": "challenger", "weight": 0},
                                        "analysis": {"min_requests": 20, "score_shift_action": action}})


def test_a_request_that_fails_before_routing_counts_against_no_variant():
    async def scenario(client, rollouts, pipeline, metrics):
        await client.patch("/v1/admin/rollouts/toy", json={"canary_weight": 50})
        r = await client.post("/v1/models/toy/predict", content=b"{not json",
                              headers={"content-type": "application/json", "x-routing-key": "7"})
        assert r.status_code == 400
        for variant in ("champion", "canary"):
            assert sample(metrics, "mlgate_variant_requests_total", model="toy", variant=variant,
                          outcome="malformed_json") == 0
        assert sample(metrics, "mlgate_requests_total", model="toy", version="3", outcome="malformed_json") == 1

    run(scenario)


# -- models added and removed while serving (a newly applied repository) -------------------------

def test_models_added_and_removed_while_serving_come_and_go_in_the_admin_api():
    churn = ModelSettings(name="churn", routing={"canary": {"alias": "challenger", "weight": 20}})

    async def scenario(client, rollouts, pipeline, metrics):
        pipeline.models.add(churn)  # as the gateway adopts a repository: the table, then routing
        rollouts.add(churn)
        assert rollouts.names() == ["toy", "churn"]
        listed = (await client.get("/v1/admin/rollouts")).json()["rollouts"]
        assert [(r["model"], r["canary_weight"]) for r in listed] == [("toy", 0), ("churn", 20)]
        r = await client.patch("/v1/admin/rollouts/churn", json={"canary_weight": 50})
        assert r.status_code == 200 and rollouts.canary_weight("churn") == 50
        rollouts.remove("churn")
        pipeline.models.remove("churn")
        assert rollouts.names() == ["toy"]
        r = await client.get("/v1/admin/rollouts/churn")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
        assert [r["model"] for r in (await client.get("/v1/admin/rollouts")).json()["rollouts"]] == ["toy"]
        r = await client.post("/v1/models/churn/predict", json={"instances": [ROW]})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
        assert (await post(client)).status_code == 200  # the other model is untouched

    run(scenario)


def test_a_removed_models_routing_is_forgotten_and_a_re_added_one_starts_from_its_configuration():
    churn = ModelSettings(name="churn", routing={"canary": {"alias": "challenger", "weight": 5},
                                                 "shadows": [{"name": "mirror", "alias": "shadow", "share": 100}],
                                                 "key_header": "X-Account"})
    settings, metrics = Settings(), GatewayMetrics()

    async def main():
        table = ModelTable(settings, metrics, lambda m: pytest.fail("nothing loads here"), models=[churn])
        rollouts = Rollouts(settings, table, metrics, served=[churn])
        assert rollouts.names() == ["churn"]  # the models served, not the settings' (none)
        await rollouts.set("churn", canary_weight=40)
        assert rollouts.shadows_for("churn") == ["mirror"]
        rollouts.remove("churn")
        assert rollouts.names() == []
        assert (rollouts.canary_weight("churn"), rollouts.shadows_for("churn")) == (0.0, [])
        assert rollouts.key_header("churn") == "X-Routing-Key"
        with pytest.raises(ModelNotFound):
            rollouts.state("churn")
        with pytest.raises(ModelNotFound):
            await rollouts.configure("churn", churn.routing)
        rollouts.observe("churn", "canary", True, 0.01, 0.5)  # a request still in flight: ignored
        await rollouts.analyse()
        rollouts.add(churn)
        state = rollouts.state("churn")
        return state.canary_weight, state.updated_at, rollouts.key_header("churn")

    assert asyncio.run(main()) == (5.0, 0.0, "X-Account")
