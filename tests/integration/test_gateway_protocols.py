"""The other protocols against the real demo gateway (Ray Serve, MLflow registry, Redis over TLS):
Triton's own clients (tritonclient.http, tritonclient.grpc) for the Open Inference Protocol v2,
the payloads MLflow itself writes for a model's input example, Databricks and KServe v1 paths.
Every answer is checked against mlgate's native predict of the same rows, in the same run."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest

from examples.fraud.train import FEATURE_NAMES, REQUEST_FEATURES, REQUEST_NAMES
from tests.integration.demo_gateway import MODEL, PYFUNC

pytestmark = pytest.mark.integration

OIP_TYPES = {"double": ("FP64", np.float64), "long": ("INT64", np.int64)}


@pytest.fixture(scope="module")
def gateway(demo_gateway):
    return demo_gateway


def native(gateway, body: dict, model: str = MODEL) -> list[dict]:
    r = httpx.post(f"{gateway.base}/v1/models/{model}/predict", content=orjson.dumps(body),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def instances(gateway, n: int) -> pd.DataFrame:
    return gateway.table[FEATURE_NAMES].head(n)


def records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


def triton_inputs(module, frame: pd.DataFrame, dtypes: dict[str, str], binary: bool) -> list:
    inputs = []
    for name in frame.columns:
        datatype, numpy_type = OIP_TYPES[dtypes[name]]
        tensor = module.InferInput(name, [len(frame)], datatype)
        tensor.set_data_from_numpy(frame[name].to_numpy(numpy_type), binary_data=binary)
        inputs.append(tensor)
    return inputs


def model_dtypes(gateway) -> dict[str, str]:
    detail = httpx.get(f"{gateway.base}/v1/models/{MODEL}", timeout=30).json()
    return {f["name"]: f["type"] for f in detail["inputs"]}


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_http_reads_health_and_metadata_and_infers_what_native_predict_answers(gateway, binary):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=gateway.base.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert meta["platform"] == "onnx_onnxv1" and meta["versions"] == ["1"]
    assert [i["name"] for i in meta["inputs"]][:1] == ["customer_id"]  # entity key first, then inputs
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"label": "INT64", "probability": "FP64"}
    frame = instances(gateway, 20)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probability")]
    result = client.infer(MODEL, triton_inputs(triton, frame, model_dtypes(gateway), binary), outputs=outputs,
                          request_id="abc-1")
    expected = native(gateway, {"instances": records(frame)})
    assert result.get_response()["id"] == "abc-1"
    np.testing.assert_array_equal(result.as_numpy("probability"), [p["probability"] for p in expected])
    np.testing.assert_array_equal(result.as_numpy("label"), [p["label"] for p in expected])


def test_an_entity_key_tensor_reads_the_online_features_like_an_entity_keyed_predict(gateway):
    import tritonclient.http as triton

    picked = gateway.table.drop_duplicates("customer_id").head(6)
    requests = picked[REQUEST_NAMES]
    expected = native(gateway, {"entities": [{"customer_id": int(i)} for i in picked["customer_id"]],
                                "features": records(requests)})
    client = triton.InferenceServerClient(url=gateway.base.removeprefix("http://"))
    key = triton.InferInput("customer_id", [len(picked)], "INT64")
    key.set_data_from_numpy(picked["customer_id"].to_numpy(np.int64))
    dtypes = dict(REQUEST_FEATURES)
    result = client.infer(MODEL, [key, *triton_inputs(triton, requests, dtypes, True)])
    np.testing.assert_array_equal(result.as_numpy("probability"), [p["probability"] for p in expected])


def test_errors_reach_triton_clients_with_the_status_and_mlgates_code(gateway):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=gateway.base.removeprefix("http://"))
    amount = triton.InferInput("amount", [1], "FP64")
    amount.set_data_from_numpy(np.array([1.0]))
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [amount])
    assert info.value.status() == "422" and "missing features" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("no-such-model", [amount])
    assert info.value.status() == "404"
    r = httpx.post(f"{gateway.base}/v2/models/{MODEL}/infer", timeout=30, content=orjson.dumps(
        {"inputs": [{"name": "amount", "datatype": "FP64", "shape": [2], "data": [1.0]}]}))
    assert r.status_code == 400 and r.json()["code"] == "invalid_request"


def serving_input_example(gateway, model: str) -> dict:
    """The payload MLflow wrote from the model's input example when it was logged."""
    import mlflow

    folder = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model}/1",
                                                 tracking_uri=gateway.settings.tracking_uri)
    return json.loads((Path(folder) / "serving_input_example.json").read_text())


@pytest.mark.parametrize("model", [MODEL, PYFUNC])
def test_mlflows_own_serving_example_works_unchanged_on_mlflow_and_databricks_paths(gateway, model):
    from mlflow.models import convert_input_example_to_serving_input

    logged = serving_input_example(gateway, model)
    frame = instances(gateway, 5)
    generated = json.loads(convert_input_example_to_serving_input(frame))
    for payload in (logged, generated):
        rows = pd.DataFrame(**payload["dataframe_split"])[FEATURE_NAMES] if "dataframe_split" in payload \
            else pd.DataFrame(payload["dataframe_records"])[FEATURE_NAMES]
        expected = native(gateway, {"instances": records(rows)}, model)
        for path in (f"/v1/models/{model}/invocations", f"/serving-endpoints/{model}/invocations"):
            r = httpx.post(gateway.base + path, content=json.dumps(payload), timeout=30,
                           headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            got = r.json()["predictions"]
            assert got == [{k: v for k, v in p.items() if k not in ("source", "model_version")} for p in expected] \
                or got == [p["prediction"] for p in expected]


def test_csv_and_kserve_v1_bodies_answer_like_native_predict(gateway):
    frame = instances(gateway, 4)
    expected = [{"label": p["label"], "probability": p["probability"]}
                for p in native(gateway, {"instances": records(frame)})]
    r = httpx.post(f"{gateway.base}/v1/models/{MODEL}/invocations", content=frame.to_csv(index=False),
                   headers={"content-type": "text/csv"}, timeout=30)
    assert r.status_code == 200 and r.json()["predictions"] == expected, r.text
    r = httpx.post(f"{gateway.base}/v1/models/{MODEL}:predict", json={"instances": records(frame)}, timeout=30)
    assert r.status_code == 200 and r.json()["predictions"] == expected, r.text
    r = httpx.post(f"{gateway.base}/invocations", json={"instances": records(frame)}, timeout=30)
    assert (r.status_code, r.json()["code"], r.json()["error_code"]) == (404, "model_not_found",
                                                                         "RESOURCE_DOES_NOT_EXIST")
    text = httpx.get(f"{gateway.base}/metrics", timeout=30).text
    for protocol in ("mlflow", "databricks", "v1", "v2"):
        assert f'mlgate_protocol_requests_total{{outcome="ok",protocol="{protocol}"}}' in text
