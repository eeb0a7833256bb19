"""The other protocols over the toy model, through the app (fast path and all): OIP v2 REST with
JSON and binary tensors, MLflow/Databricks invocations, KServe v1 — the same answers, errors in
each protocol's shape with mlgate's stable codes, metrics by protocol."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from serving.protocols import tensors
from tests.unit.serving.test_http_api import ROW, post, run, sample

NAMES = ["amount", "count", "is_online", "score"]
DATATYPES = {"amount": "FP64", "count": "INT64", "is_online": "BOOL", "score": "FP64"}


def oip_body(rows: list[dict], **extra) -> dict:
    return {"inputs": [{"name": n, "datatype": DATATYPES[n], "shape": [len(rows)], "data": [r[n] for r in rows]}
                       for n in NAMES], **extra}


def send(client, path: str, body, content_type: str | None = "application/json", **headers):
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    if content_type is not None:
        headers["content-type"] = content_type
    return client.post(path, content=content, headers=headers)


ROWS = [ROW, {**ROW, "amount": -250.0}]


def test_oip_infer_answers_what_native_predict_answers_with_the_id_echoed():
    async def scenario(client, metrics):
        native = (await post(client, {"instances": ROWS})).json()["predictions"]
        r = await send(client, "/v2/models/toy/infer", oip_body(ROWS, id="req-7"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["model_name"], body["id"]) == ("toy", "req-7")
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["label"] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}
        assert outputs["probability"]["datatype"] == "FP64"
        assert outputs["probability"]["data"] == [p["probability"] for p in native]
        assert sample(metrics, "mlgate_protocol_requests_total", protocol="v2", outcome="ok") == 1
        assert sample(metrics, "mlgate_protocol_requests_total", protocol="mlgate", outcome="ok") == 1
        assert sample(metrics, "mlgate_requests_total", model="toy", version="3", outcome="ok") == 2
    run(scenario)


def test_oip_takes_one_2d_tensor_in_signature_order_and_selected_binary_outputs():
    async def scenario(client, metrics):
        matrix = [[float(r[n]) for n in NAMES] for r in ROWS]  # is_online true as 1.0
        body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [2, 4], "data": matrix}],
                "outputs": [{"name": "probability", "parameters": {"binary_data": True}}, {"name": "source"}]}
        r = await send(client, "/v2/models/toy/infer", body)
        assert r.status_code == 200, r.text
        size = int(r.headers["inference-header-content-length"])
        header = orjson.loads(r.content[:size])
        prob, source = header["outputs"]
        assert prob["parameters"]["binary_data_size"] == 16 and "data" not in prob
        values = np.frombuffer(r.content[size:], dtype="<f8")
        assert values[0] > 0.9 and values[1] < 0.1
        assert source == {"name": "source", "datatype": "BYTES", "shape": [2], "data": ["online", "online"]}
    run(scenario)


def test_oip_binary_inputs_with_the_header_length_give_the_json_answer():
    async def scenario(client, metrics):
        raws = {"amount": np.array([250.0, -250.0]).tobytes(), "count": np.array([3, 3], "<i8").tobytes(),
                "is_online": np.array([True, True]).tobytes(), "score": np.array([0.5, 0.5]).tobytes()}
        header = orjson.dumps({"inputs": [
            {"name": n, "datatype": DATATYPES[n], "shape": [2], "parameters": {"binary_data_size": len(raws[n])}}
            for n in NAMES]})
        r = await send(client, "/v2/models/toy/infer", header + b"".join(raws[n] for n in NAMES), None,
                       **{"inference-header-content-length": str(len(header))})
        assert r.status_code == 200, r.text
        assert {o["name"]: o["data"] for o in r.json()["outputs"]}["label"] == [1, 0]
    run(scenario)


@pytest.mark.parametrize("body, status, code", [
    (b'{"inputs": [', 400, "malformed_json"),
    ({"inputs": []}, 400, "invalid_request"),
    ({"inputs": [{"name": "amount", "datatype": "FP99", "shape": [1], "data": [1.0]}]}, 400, "invalid_request"),
    ({"inputs": [{"name": "amount", "datatype": "FP64", "shape": [2], "data": [1.0]}]}, 400, "invalid_request"),
    ({"inputs": [{"name": "amount", "datatype": "FP64", "shape": [1], "data": ["x"]}]}, 400, "invalid_request"),
    ({"inputs": [{"name": "amount", "datatype": "FP64", "shape": [1], "data": [[[[1.0]]]]}]}, 400, "invalid_request"),
    ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]}, 400, "invalid_request"),
    ({"inputs": [{"name": "amount", "datatype": "FP64", "shape": [1], "data": [1.0]}]}, 422, "missing_features"),
    ({**oip_body(ROWS), "outputs": [{"name": "nope"}]}, 400, "invalid_request"),
    ({**oip_body(ROWS), "parameters": {"timeout": "soon"}}, 400, "invalid_request"),
    ({**oip_body(ROWS), "extra": 1}, 400, "invalid_request"),
    # found by schemathesis: an object where the datatype belongs was a 500 (unhashable)
    ({"inputs": [{"name": "0", "datatype": {}, "shape": [], "data": None}]}, 400, "invalid_request"),
    ({"inputs": [{"name": "amount", "datatype": "FP64", "shape": [1], "data": None}]}, 400, "invalid_request"),
    (oip_body([ROW] * 6), 413, "too_many_instances"),
])
def test_oip_bad_requests_get_the_protocols_error_shape_with_mlgates_code(body, status, code):
    async def scenario(client, metrics):
        r = await send(client, "/v2/models/toy/infer", body)
        assert r.status_code == status, r.text
        error = r.json()
        assert isinstance(error["error"], str) and error["code"] == code and error["request_id"]
        assert sample(metrics, "mlgate_protocol_requests_total", protocol="v2", outcome=code) == 1
    run(scenario, limits={"max_instances": 5})


def test_oip_health_metadata_and_versioned_paths():
    async def scenario(client, metrics):
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}
        assert (await client.get("/v2")).json()["extensions"] == ["binary_tensor_data"]
        meta = (await client.get("/v2/models/toy")).json()
        assert meta["versions"] == ["3"] and meta["platform"] == "onnx_onnxv1"
        assert meta["inputs"][0] == {"name": "amount", "datatype": "FP64", "shape": [-1]}
        assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"label": "INT64", "probability": "FP64"}
        assert (await client.get("/v2/models/toy/ready")).json() == {"name": "toy", "ready": True}
        assert (await client.get("/v2/models/toy/versions/3")).status_code == 200
        missing = await client.get("/v2/models/toy/versions/9")
        assert missing.status_code == 404 and missing.json()["code"] == "version_not_found"
        assert (await client.get("/v2/models/nope")).json()["code"] == "model_not_found"
        r = await send(client, "/v2/models/toy/versions/3/infer", oip_body(ROWS))
        assert r.status_code == 200 and r.headers["x-model-version"] == "3"
        r = await send(client, "/v2/models/toy/versions/9/infer", oip_body(ROWS))
        assert (r.status_code, r.json()["code"]) == (404, "version_not_found")
    run(scenario)


def test_oip_ready_is_503_while_the_model_loads():
    async def scenario(client, metrics):
        assert (await client.get("/v2/health/ready")).status_code == 503
        r = await client.get("/v2/models/toy/ready")
        assert (r.status_code, r.json()) == (503, {"name": "toy", "ready": False})
    run(scenario, factory=lambda m: (_ for _ in ()).throw(RuntimeError("no")), wait_ready=False)


@pytest.mark.parametrize("body", [
    {"dataframe_split": {"columns": NAMES, "data": [[r[n] for n in NAMES] for r in ROWS]}},
    {"dataframe_split": {"index": [0, 1], "columns": NAMES, "data": [[r[n] for n in NAMES] for r in ROWS]}},
    {"dataframe_records": ROWS},
    {"instances": ROWS},
    {"instances": [[r[n] for n in NAMES] for r in ROWS]},
    {"inputs": {n: [r[n] for r in ROWS] for n in NAMES}},
    {"inputs": ROWS},
])
@pytest.mark.parametrize("path", ["/v1/models/toy/invocations", "/invocations", "/serving-endpoints/toy/invocations"])
def test_mlflow_and_databricks_payloads_answer_predictions(body, path):
    async def scenario(client, metrics):
        r = await send(client, path, body)
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        assert [p["label"] for p in predictions] == [1, 0] and predictions[0]["probability"] > 0.9
    run(scenario)


def test_mlflow_csv_and_kserve_v1():
    async def scenario(client, metrics):
        csv = "amount,count,is_online,score\r\n250.0,3,true,0.5\r\n-250,3,True,0.5\r\n"
        r = await send(client, "/invocations", csv.encode(), "text/csv")
        assert [p["label"] for p in r.json()["predictions"]] == [1, 0], r.text
        r = await send(client, "/v1/models/toy:predict", {"instances": ROWS})
        assert [p["label"] for p in r.json()["predictions"]] == [1, 0], r.text
        assert sample(metrics, "mlgate_protocol_requests_total", protocol="v1", outcome="ok") == 1
        assert sample(metrics, "mlgate_protocol_requests_total", protocol="mlflow", outcome="ok") == 1
    run(scenario)


@pytest.mark.parametrize("body, content_type, status, code", [
    ({"dataframe_split": {"columns": NAMES, "data": [[1, 2]]}}, "application/json", 400, "invalid_request"),
    ({"dataframe_records": ROWS, "instances": ROWS}, "application/json", 400, "invalid_request"),
    ({"dataframe_records": [{**ROW, "amount": "x"}]}, "application/json", 400, "invalid_feature_type"),
    ({"dataframe_records": ROWS, "params": {"k": 1}}, "application/json", 400, "invalid_request"),
    (b"amount,count\n1,2\n", "text/csv", 422, "missing_features"),
    (b"amount,count\n1,NaN\n", "text/csv", 400, "invalid_request"),
    (b"a,b\n\"1,2\n", "text/csv", 400, "invalid_request"),
    (b"x", "text/plain", 415, "unsupported_media_type"),
])
def test_mlflow_errors_carry_mlflows_error_code_and_ours(body, content_type, status, code):
    async def scenario(client, metrics):
        r = await send(client, "/v1/models/toy/invocations", body, content_type)
        assert r.status_code == status, r.text
        error = r.json()
        assert error["code"] == code and error["error_code"] and error["message"]
    run(scenario)


def test_the_default_model_needs_naming_when_several_are_served():
    async def scenario(client, metrics):
        assert (await client.get("/ping")).json() == {"status": "ok", "model": "toy"}
        assert (await client.get("/version")).status_code == 200
    run(scenario)


def test_raw_bytes_tensors_round_trip_and_refuse_bad_lengths():
    values = np.array([b"a", b"\xff\x00", b""], dtype=object)
    raw = tensors.to_raw(values, "BYTES")
    assert raw == struct.pack("<I", 1) + b"a" + struct.pack("<I", 2) + b"\xff\x00" + struct.pack("<I", 0)
    assert tensors.from_raw("t", "BYTES", (3,), raw).tolist() == values.tolist()
    for bad in (raw[:-1], raw + b"x", struct.pack("<I", 99)):
        with pytest.raises(Exception) as info:
            tensors.from_raw("t", "BYTES", (3,), bad)
        assert getattr(info.value, "status", None) == 400
    with pytest.raises(Exception):
        tensors.from_raw("t", "FP32", (2,), np.array([1.0, np.nan], "<f4").tobytes())
    assert tensors.from_json_data("t", "INT32", (2, 2), [[1, 2], [3, 4]]) == [1, 2, 3, 4]


def test_a_405_on_a_protocol_path_allows_only_that_paths_methods():
    """``/v1/models/{name}:predict`` also matches ``/v1/models/{name}``'s pattern: the more
    specific path's methods are the ones a 405 lists (found by schemathesis)."""
    async def scenario(client, metrics):
        r = await client.request("OPTIONS", "/v1/models/toy:predict")
        assert (r.status_code, r.headers["allow"]) == (405, "POST")
        r = await client.request("DELETE", "/v1/models/toy")
        assert (r.status_code, r.headers["allow"]) == (405, "GET")
    run(scenario)
