"""The HTTP layer over a toy in-memory model: status codes, error bodies, headers, metrics."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import jsonschema
import orjson
import pytest

from observability.metrics import GatewayMetrics
from serving.errors import ModelValidationError
from serving.http.app import build_app
from serving.models import InProcessModel, ModelTable
from serving.pipeline import Pipeline
from serving.schemas import PredictResponse
from serving.settings import Settings
from tests.unit.conftest import ToyRuntime

ROW = {"amount": 250.0, "count": 3, "is_online": True, "score": 0.5}


def run(scenario, runtime=None, factory=None, wait_ready=True, **settings):
    """Run ``scenario(client, metrics)`` against a freshly built app (models loaded first)."""
    settings = Settings(models=[{"name": "toy"}], **settings)
    metrics = GatewayMetrics()
    factory = factory or (lambda m: InProcessModel(runtime or ToyRuntime(), metrics))

    async def main():
        table = ModelTable(settings, metrics, factory, retry_initial_s=0.01)
        table.start()
        if wait_ready:
            await asyncio.wait_for(table.wait_ready(), 5)
        app = build_app(Pipeline(settings, table, metrics))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            try:
                return await scenario(client, metrics)
            finally:
                table.close()

    return asyncio.run(main())


def sample(metrics: GatewayMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def post(client, body, **kw):
    content = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return client.post("/v1/models/toy/predict", content=content, headers=headers, **kw)


def test_predict_returns_one_prediction_per_instance_with_version_and_request_id():
    async def scenario(client, metrics):
        r = await post(client, {"instances": [ROW, {**ROW, "amount": -250.0}]},
                       headers={"x-request-id": "abc-123"})
        assert r.status_code == 200
        body = r.json()
        PredictResponse.model_validate(body)  # the OpenAPI schema describes what is sent
        assert [p["label"] for p in body["predictions"]] == [1, 0]
        assert body["predictions"][0]["probability"] == pytest.approx(0.924, abs=1e-3)
        assert (body["model"], body["version"], body["alias"], body["request_id"]) == \
            ("toy", "3", "champion", "abc-123")
        assert r.headers["x-request-id"] == "abc-123" and r.headers["x-model-version"] == "3"
        assert sample(metrics, "mlgate_requests_total", model="toy", version="3", outcome="ok") == 1
        assert sample(metrics, "mlgate_stage_duration_seconds_count", model="toy", stage="inference") == 1
        assert sample(metrics, "mlgate_model_batch_rows_sum", model="toy", version="3") == 2
    run(scenario)


@pytest.mark.parametrize("body, status, code", [
    (b'{"instances": [', 400, "malformed_json"),
    (b'{"instances": [{"amount": NaN}]}', 400, "non_finite_value"),
    ({"instances": [{**ROW, "amount": "12"}]}, 400, "invalid_feature_type"),
    ({"instances": [{**ROW, "amount": 1e39}]}, 400, "non_finite_value"),
    ({"instances": [{**ROW, "extra": 1}]}, 400, "unknown_feature"),
    ({"instances": [{"amount": 1.0}]}, 422, "missing_features"),
    ({"instances": []}, 400, "invalid_request"),
    ({"rows": [ROW]}, 400, "invalid_request"),
    ({"instances": [ROW] * 6}, 413, "too_many_instances"),
])
def test_bad_input_gets_a_stable_code_and_4xx(body, status, code):
    async def scenario(client, metrics):
        r = await post(client, body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["code"] == code and err["request_id"] and err["retryable"] is False
        assert "Traceback" not in err["message"]
        assert sample(metrics, "mlgate_requests_total", model="toy", version="3", outcome=code) == 1
    run(scenario, limits={"max_instances": 5})


DEEP = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize("body, code", [
    ('{"instances": [' + DEEP + "]}", "invalid_request"),
    ('{"instances": [{"amount": ' + DEEP + ', "count": 3, "is_online": true, "score": 0.5}]}',
     "invalid_feature_type"),
    ('{"entities": [{"customer_id": ' + DEEP + "}]}", "invalid_request"),  # str() of it recursed: 500
    ('{"entities": [{"customer_id": 1}], "features": [' + DEEP + "]}", "invalid_request"),
    ('{"instances": [' + "[" * 100_000 + "]}", "nesting_too_deep"),
    ('{"instances": ' + "[" * 1000, "malformed_json"),
    ('{"instances": [{"amount": ' + "[" * 1000 + "NaN", "malformed_json"),
])
def test_deeply_nested_bodies_are_400_never_500(body, code):
    async def scenario(client, metrics):
        r = await post(client, body.encode())
        assert (r.status_code, r.json()["error"]["code"]) == (400, code), r.text
    run(scenario)


def test_oversized_body_is_413_by_header_and_by_stream():
    async def scenario(client, metrics):
        big = orjson.dumps({"instances": [ROW] * 50})
        r = await post(client, big)
        assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")

        async def chunks():
            for i in range(0, len(big), 100):
                yield big[i:i + 100]
        r = await client.post("/v1/models/toy/predict", content=chunks(),
                              headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")
    run(scenario, http={"max_body_bytes": 1000})


def test_media_type_unknown_model_route_and_method():
    async def scenario(client, metrics):
        r = await client.post("/v1/models/toy/predict", content=b"amount=1",
                              headers={"content-type": "application/x-www-form-urlencoded"})
        assert (r.status_code, r.json()["error"]["code"]) == (415, "unsupported_media_type")
        r = await client.post("/v1/models/nope/predict", json={"instances": [ROW]})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
        assert sample(metrics, "mlgate_requests_total", model="_unknown", version="",
                      outcome="model_not_found") == 1
        r = await client.get("/v2/anything")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
        r = await client.get("/v1/models/toy/predict")
        assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")
        assert r.headers["allow"] == "POST"
        r = await client.delete("/v1/models/toy")
        assert (r.status_code, r.headers["allow"]) == (405, "GET")
        r = await client.post("/v1/admin/rollouts/toy", json={})  # GET and PATCH are two routes
        assert (r.status_code, r.headers["allow"]) == (405, "GET, PATCH")
        assert r.json()["error"]["code"] == "method_not_allowed"
    run(scenario)


def test_model_crash_is_a_masked_500():
    async def scenario(client, metrics):
        r = await post(client, {"instances": [ROW]})
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["code"] == "internal_error" and err["message"] == "internal error"
        assert "secret" not in r.text and "RuntimeError" not in r.text
    run(scenario, runtime=ToyRuntime(fail_with=RuntimeError("secret db password")))


def test_not_ready_until_the_model_loads_then_ready():
    registry_fixed = threading.Event()
    attempts = []

    def factory(model):
        attempts.append(model.name)
        if not registry_fixed.is_set():
            raise ModelValidationError("the input example does not score")
        return InProcessModel(ToyRuntime(), GatewayMetrics())

    async def scenario(client, metrics):
        while len(attempts) < 2:  # refused at least twice: retried with backoff, still not ready
            await asyncio.sleep(0.005)
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json() == {"status": "not_ready", "models": {"toy": False}}
        r = await post(client, {"instances": [ROW]})
        assert (r.status_code, r.json()["error"]["code"]) == (503, "model_not_ready")
        assert r.headers["retry-after"]
        detail = (await client.get("/v1/models/toy")).json()
        assert detail["ready"] is False and "does not score" in detail["error"]
        assert sample(metrics, "mlgate_model_load_failures_total", model="toy", variant="champion") >= 1
        registry_fixed.set()
        for _ in range(500):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await post(client, {"instances": [ROW]})).status_code == 200
    run(scenario, factory=factory, wait_ready=False)


def test_a_gateway_with_no_model_configured_is_not_ready():
    settings = Settings(models=[])
    metrics = GatewayMetrics()

    async def main():
        table = ModelTable(settings, metrics, lambda m: None)
        app = build_app(Pipeline(settings, table, metrics))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.get("/readyz")

    r = asyncio.run(main())
    assert r.status_code == 503 and r.json() == {"status": "not_ready", "models": {}}


def test_model_listing_detail_and_example_request_round_trip():
    async def scenario(client, metrics):
        listing = (await client.get("/v1/models")).json()
        assert listing == {"models": [{"name": "toy", "ready": True, "version": "3",
                                       "alias": "champion", "error": None}]}
        detail = (await client.get("/v1/models/toy")).json()
        assert detail["inputs"][0] == {"name": "amount", "type": "double", "required": True}
        assert detail["outputs"] == ["label", "probability"]
        r = await post(client, detail["example_request"])
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1
        components = (await client.get("/openapi.json")).json()["components"]
        jsonschema.validate(detail["example_request"], {"$ref": "#/components/schemas/PredictRequest",
                                                        "components": components})
        assert (await client.get("/v1/models/nope")).status_code == 404
        text = (await client.get("/metrics")).text
        assert 'mlgate_model_ready{model="toy"} 1.0' in text
    run(scenario)


def test_openapi_documents_request_response_and_errors():
    async def scenario(client, metrics):
        schema = (await client.get("/openapi.json")).json()
        op = schema["paths"]["/v1/models/{name}/predict"]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        request_schema = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
        bodies = [schema["components"]["schemas"][b["$ref"].rsplit("/", 1)[1]] for b in request_schema["oneOf"]]
        assert [set(b["properties"]) for b in bodies] == [{"instances", "timeout_ms"},
                                                          {"entities", "features", "timeout_ms"}]
        prediction = schema["components"]["schemas"]["Prediction"]["properties"]
        assert {"source", "model_version", "fallback_reason", "score_age_s", "features"} <= set(prediction)
        assert set(op["responses"]) == {"200", "400", "401", "403", "404", "408", "413", "415", "422", "429", "500",
                                        "503", "504"}
        assert "PredictResponse" in json.dumps(op["responses"]["200"])
        for path in ("/v1/models", "/v1/models/{name}", "/healthz", "/readyz", "/metrics"):
            assert path in schema["paths"]
    run(scenario)


def test_request_id_header_is_not_echoed_when_unsafe():
    async def scenario(client, metrics):
        r = await post(client, {"instances": [ROW]}, headers={"x-request-id": "<script>" * 20})
        assert r.status_code == 200
        assert r.json()["request_id"] != "<script>" * 20 and len(r.json()["request_id"]) == 32
    run(scenario)



class _SlowModel(InProcessModel):
    async def predict(self, columns):
        await asyncio.sleep(2)
        return await super().predict(columns)


def test_a_model_past_the_deadline_gives_504_not_a_hang():
    async def scenario(client, metrics):
        started = asyncio.get_running_loop().time()
        r = await post(client, {"instances": [ROW]})
        assert asyncio.get_running_loop().time() - started < 1.0
        assert (r.status_code, r.json()["error"]["code"]) == (504, "deadline_exceeded")
        assert r.json()["error"]["retryable"] is True
        assert sample(metrics, "mlgate_requests_total", model="toy", version="3",
                      outcome="deadline_exceeded") == 1
    run(scenario, factory=lambda m: _SlowModel(ToyRuntime(), GatewayMetrics()),
        limits={"deadline_ms": 100})


@pytest.mark.parametrize("method,path,root,expected", [
    ("POST", "/v1/models/toy/predict", "", "toy"),
    ("POST", "/gw/v1/models/toy/predict", "/gw", "toy"),
    ("GET", "/v1/models/toy/predict", "", None),
    ("POST", "/v1/models//predict", "", None),
    ("POST", "/v1/models/a/b/predict", "", None),
    ("POST", "/v1/models/toy/predict/", "", None),
    ("POST", "/v1/models/toy", "", None),
])
def test_the_fast_path_takes_exactly_the_predict_route(method, path, root, expected):
    from serving.http.predict_route import PredictRoute

    scope = {"type": "http", "method": method, "path": path, "root_path": root}
    route = PredictRoute.__new__(PredictRoute)  # match() needs no pipeline
    route.oip = route.mlflow = route.databricks = route.kserve = object()
    call = route.match(scope)
    assert (call.name if call is not None and call.codec is None else None) == expected


def test_the_fastapi_predict_route_answers_like_the_fast_path():
    """The route FastAPI declares (for the schema) serves the same bytes when reached directly."""
    async def scenario(client, metrics):
        fast = await post(client, {"instances": [ROW]}, headers={"x-request-id": "same"})
        app = client._transport.app
        app.predict_route, route = None, app.predict_route  # FastAPI's own routing from here on
        try:
            slow = await post(client, {"instances": [ROW]}, headers={"x-request-id": "same"})
            bad = await post(client, b"{nope")
        finally:
            app.predict_route = route
        assert (slow.status_code, slow.json()) == (fast.status_code, fast.json())
        assert slow.headers["x-model-version"] == fast.headers["x-model-version"]
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "malformed_json")
    run(scenario)


def test_past_its_limit_in_flight_a_replica_answers_503_overloaded_at_once():
    async def scenario(client, metrics):
        slow = [asyncio.create_task(post(client, {"instances": [ROW]})) for _ in range(2)]
        await asyncio.sleep(0.2)  # both are inside the slow model now
        started = asyncio.get_running_loop().time()
        r = await post(client, {"instances": [ROW]})
        assert asyncio.get_running_loop().time() - started < 0.5
        assert (r.status_code, r.json()["error"]["code"]) == (503, "overloaded")
        assert r.headers["retry-after"] == "1" and r.json()["error"]["retryable"] is True
        assert [s.status_code for s in await asyncio.gather(*slow)] == [200, 200]
        assert (await post(client, {"instances": [ROW]})).status_code == 200  # room again
        assert sample(metrics, "mlgate_requests_total", model="toy", version="", outcome="overloaded") == 1

    class Slowish(InProcessModel):
        async def predict(self, columns):
            await asyncio.sleep(0.5)
            return await super().predict(columns)

    run(scenario, factory=lambda m: Slowish(ToyRuntime(), GatewayMetrics()), http={"max_in_flight": 2})


async def _trickle(first: bytes, pause_s: float):
    """A request body that sends ``first`` and then nothing for ``pause_s``."""
    yield first
    await asyncio.sleep(pause_s)
    yield b"]}"


def test_a_body_not_sent_within_the_body_timeout_is_408_and_closes_the_connection():
    async def scenario(client, metrics):
        started = asyncio.get_running_loop().time()
        r = await client.post("/v1/models/toy/predict", content=_trickle(b'{"instances": [', 3.0),
                              headers={"content-type": "application/json"})
        assert asyncio.get_running_loop().time() - started < 1.0
        assert (r.status_code, r.json()["error"]["code"]) == (408, "request_timeout")
        assert r.headers["connection"] == "close" and r.json()["error"]["retryable"] is True
        assert sample(metrics, "mlgate_requests_total", model="toy", version="",
                      outcome="request_timeout") == 1
    run(scenario, http={"body_timeout_s": 0.2})


def test_a_caller_still_sending_its_body_holds_no_in_flight_slot():
    async def scenario(client, metrics):
        slow = [asyncio.create_task(client.post("/v1/models/toy/predict", content=_trickle(
            orjson.dumps({"instances": [ROW]})[:-2], 0.5), headers={"content-type": "application/json"}))
            for _ in range(3)]
        await asyncio.sleep(0.1)  # all three are reading their bodies now
        assert (await post(client, {"instances": [ROW]})).status_code == 200
        assert [s.status_code for s in await asyncio.gather(*slow)] == [200] * 3
    run(scenario, http={"max_in_flight": 1})


def test_bodies_arriving_in_pieces_share_a_byte_budget_past_which_they_get_503():
    async def scenario(client, metrics):
        body = orjson.dumps({"instances": [ROW]})
        holder = asyncio.create_task(client.post("/v1/models/toy/predict", content=_trickle(
            body[:-2] + b" " * 200, 0.5), headers={"content-type": "application/json"}))
        await asyncio.sleep(0.1)  # it holds ~260 bytes of the 300-byte budget
        r = await client.post("/v1/models/toy/predict", content=_trickle(body[:-2], 0.0),
                              headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]["code"]) == (503, "overloaded")
        assert (await holder).status_code == 200
        assert (await post(client, {"instances": [ROW]})).status_code == 200  # one piece: no budget used
    run(scenario, http={"max_body_buffer_bytes": 300})
