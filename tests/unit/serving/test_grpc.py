"""OIP v2 over gRPC, called with Triton's own client (tritonclient.grpc) against an in-process
grpc.aio server over the toy model: the same answers as the REST path, raw and typed contents,
errors as gRPC status codes with mlgate's code in the trailing metadata, auth from metadata, and
the protocol metrics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from observability.metrics import GatewayMetrics
from serving.http.app import authenticator, build_app
from serving.http.predict_route import PredictRoute
from serving.models import InProcessModel, ModelTable
from serving.pipeline import Pipeline
from serving.protocols.base import ModelInputs
from serving.protocols.grpc_codec import OipGrpc
from serving.rpc.proto import protocol, proto_text
from serving.rpc.server import GrpcServer
from serving.rpc.service import InferenceService, peer_host
from serving.runtime.base import FeatureSpec
from serving.settings import Settings
from tests.unit.conftest import ToyRuntime
from tests.unit.serving.test_auth import clean_env  # noqa: F401 (autouse)
from tests.unit.serving.test_auth_http import bearer, keyring
from tests.unit.serving.test_http_api import ROW, sample
from tests.unit.serving.test_protocols_http import DATATYPES, NAMES, ROWS, oip_body
from tests.unit.serving.test_replica_server import free_port

DTYPES = {"amount": np.float64, "count": np.int64, "is_online": np.bool_, "score": np.float64}
INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Gateway:
    client: grpcclient.InferenceServerClient
    channel: grpc.Channel
    metrics: GatewayMetrics
    rest: Callable[..., httpx.Response]
    """``rest(path, body=None)``: POST ``body`` as JSON (None: GET) to the same pipeline's HTTP
    app, from the scenario's thread."""

    def infer_message(self, request: service_pb2.ModelInferRequest, metadata=()) -> service_pb2.ModelInferResponse:
        """One ModelInfer call with a message built by hand (Triton's own message classes)."""
        call = self.channel.unary_unary(INFER, request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                                        response_deserializer=service_pb2.ModelInferResponse.FromString)
        return call(request, metadata=metadata, timeout=10)


def serve(scenario, factory=None, wait_ready=True, **settings):
    """Run the synchronous ``scenario(gateway)`` in a thread while a grpc.aio server (and the
    HTTP app, for comparison) serve the toy model on this loop."""
    settings = Settings(models=[{"name": "toy"}], **settings)
    metrics = GatewayMetrics()
    factory = factory or (lambda m: InProcessModel(ToyRuntime(), metrics))

    async def main():
        table = ModelTable(settings, metrics, factory, retry_initial_s=0.01)
        table.start()
        if wait_ready:
            await asyncio.wait_for(table.wait_ready(), 5)
        pipeline = Pipeline(settings, table, metrics)
        port = free_port()
        service = InferenceService(PredictRoute(pipeline, authenticator(settings)), protocol())
        server = GrpcServer(service, "127.0.0.1", port, settings.protocols.grpc.max_message_bytes, drain_s=0.1)
        await server.start()
        loop = asyncio.get_running_loop()
        transport = httpx.ASGITransport(app=build_app(pipeline), raise_app_exceptions=False)
        http = httpx.AsyncClient(transport=transport, base_url="http://test")

        def rest(path: str, body: Any = None) -> httpx.Response:
            call = http.get(path) if body is None else http.post(
                path, content=orjson.dumps(body), headers={"content-type": "application/json"})
            return asyncio.run_coroutine_threadsafe(call, loop).result(10)

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            return await asyncio.to_thread(scenario, Gateway(client, channel, metrics, rest))
        finally:
            client.close()
            channel.close()
            await http.aclose()
            await server.stop()
            table.close()

    return asyncio.run(main())


def inputs_of(rows: list[dict]) -> list[grpcclient.InferInput]:
    out = []
    for name in NAMES:
        tensor = grpcclient.InferInput(name, [len(rows)], DATATYPES[name])
        tensor.set_data_from_numpy(np.array([r[name] for r in rows], dtype=DTYPES[name]))
        out.append(tensor)
    return out


def typed_request(rows: list[dict], **fields) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest with typed contents (Triton's client always sends raw ones)."""
    request = service_pb2.ModelInferRequest(model_name="toy", **fields)
    for name, field in (("amount", "fp64_contents"), ("count", "int64_contents"),
                        ("is_online", "bool_contents"), ("score", "fp64_contents")):
        tensor = request.inputs.add(name=name, datatype=DATATYPES[name], shape=[len(rows)])
        getattr(tensor.contents, field).extend([r[name] for r in rows])
    return request


def refusal(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def mlgate_code(error: grpc.RpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("mlgate-code")


# -- the protocol ---------------------------------------------------------------------------------

def test_the_compiled_messages_match_tritons_field_for_field():
    """Wire compatibility: every field of every message has Triton's number and type."""
    compiled = protocol()

    def fields(descriptor):
        return {f.name: (f.number, f.type, f.is_repeated) for f in descriptor.fields}

    for name in compiled.messages:
        mine = compiled.pool.FindMessageTypeByName(f"inference.{name}")
        theirs = service_pb2.DESCRIPTOR.message_types_by_name[name]
        assert fields(mine) == fields(theirs), name
        for nested in mine.nested_types:
            assert fields(nested) == fields(theirs.nested_types_by_name[nested.name]), (name, nested.name)
    service = compiled.pool.FindServiceByName("inference.GRPCInferenceService")
    assert [m.name for m in service.methods] == ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                                 "ModelMetadata", "ModelInfer"]
    assert compiled.compile_s < 5 and "raw_input_contents" in proto_text()


def test_peer_strings_give_the_callers_address():
    assert peer_host("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host("unix:/tmp/sock") is None and peer_host(None) is None


# -- inference ------------------------------------------------------------------------------------

def test_infer_answers_what_the_rest_oip_path_answers_with_the_id_echoed():
    def scenario(gw: Gateway):
        rest = gw.rest("/v2/models/toy/infer", oip_body(ROWS, id="req-7")).json()
        result = gw.client.infer("toy", inputs_of(ROWS), request_id="req-7")
        response = result.get_response()
        assert (response.model_name, response.id) == ("toy", "req-7")
        assert response.model_version == "3"  # anonymous on a loopback gateway: trusted ("route")
        expected = {o["name"]: o for o in rest["outputs"]}
        assert result.as_numpy("label").tolist() == expected["label"]["data"] == [1, 0]
        assert result.as_numpy("label").dtype == np.int64
        assert result.as_numpy("probability").tolist() == expected["probability"]["data"]
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == \
            [(o["name"], o["datatype"], o["shape"]) for o in rest["outputs"]]
        assert len(response.raw_output_contents) == 2  # raw inputs: raw outputs
        assert sample(gw.metrics, "mlgate_protocol_requests_total", protocol="v2-grpc", outcome="ok") == 1
        assert sample(gw.metrics, "mlgate_protocol_requests_total", protocol="v2", outcome="ok") == 1
        assert sample(gw.metrics, "mlgate_requests_total", model="toy", version="3", outcome="ok") == 2
    serve(scenario)


def test_typed_contents_get_typed_outputs_and_named_outputs_in_the_order_asked():
    def scenario(gw: Gateway):
        request = typed_request(ROWS, id="t-1")
        request.outputs.add(name="source")
        request.outputs.add(name="label")
        response = gw.infer_message(request)
        assert not response.raw_output_contents and response.id == "t-1"
        source, label = response.outputs
        assert (source.name, source.datatype, list(source.contents.bytes_contents)) == \
            ("source", "BYTES", [b"online", b"online"])
        assert (label.name, label.datatype, list(label.shape), list(label.contents.int64_contents)) == \
            ("label", "INT64", [2], [1, 0])
        # asking for binary output makes every output raw (the protocol allows no mix)
        request = typed_request(ROWS)
        request.outputs.add(name="probability").parameters["binary_data"].bool_param = True
        request.outputs.add(name="label")
        response = gw.infer_message(request)
        assert len(response.raw_output_contents) == 2
        probability = np.frombuffer(response.raw_output_contents[0], "<f8")
        assert probability[0] > 0.9 and probability[1] < 0.1
        assert np.frombuffer(response.raw_output_contents[1], "<i8").tolist() == [1, 0]
    serve(scenario)


def test_one_2d_tensor_of_the_models_inputs_and_a_timeout_parameter():
    def scenario(gw: Gateway):
        matrix = grpcclient.InferInput("input-0", [2, 4], "FP64")
        matrix.set_data_from_numpy(np.array([[float(r[n]) for n in NAMES] for r in ROWS]))
        result = gw.client.infer("toy", [matrix], outputs=[grpcclient.InferRequestedOutput("label")],
                                 timeout=500_000)  # Triton's timeout: microseconds
        assert result.as_numpy("label").tolist() == [1, 0]
        assert result.as_numpy("probability") is None
    serve(scenario)


def test_a_pinned_version_answers_and_an_unknown_one_is_not_found():
    def scenario(gw: Gateway):
        assert gw.client.infer("toy", inputs_of(ROWS), model_version="3").as_numpy("label").tolist() == [1, 0]
        with pytest.raises(InferenceServerException) as info:
            gw.client.infer("toy", inputs_of(ROWS), model_version="9")
        assert info.value.status() == "StatusCode.NOT_FOUND"
    serve(scenario)


# -- errors ---------------------------------------------------------------------------------------

def _bad_datatype():
    request = typed_request(ROWS)
    request.inputs[0].datatype = "FP99"
    return request


def _bad_shape():
    request = typed_request(ROWS)
    request.inputs[0].shape[:] = [3]
    return request


def _wrong_contents_field():
    request = typed_request(ROWS)
    request.inputs[0].contents.ClearField("fp64_contents")
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    return request


def _raw_and_typed():
    request = typed_request(ROWS)
    request.raw_input_contents.extend([b"\0" * 16] * 4)
    return request


def _short_raw():
    request = service_pb2.ModelInferRequest(model_name="toy")
    request.inputs.add(name="amount", datatype="FP64", shape=[2])
    request.raw_input_contents.append(b"\0" * 15)
    return request


def _missing_feature():
    request = service_pb2.ModelInferRequest(model_name="toy")
    request.inputs.add(name="amount", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
    return request


def _out_of_range():
    request = service_pb2.ModelInferRequest(model_name="toy")
    request.inputs.add(name="amount", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    return request


def _too_many_elements():
    request = service_pb2.ModelInferRequest(model_name="toy")
    request.inputs.add(name="amount", datatype="FP64", shape=[100, 100])
    request.raw_input_contents.append(b"")
    return request


def _unknown_output():
    request = typed_request(ROWS)
    request.outputs.add(name="nope")
    return request


def _bad_timeout():
    request = typed_request(ROWS)
    request.parameters["timeout"].string_param = "soon"
    return request


@pytest.mark.parametrize("make, code", [
    (_bad_datatype, "invalid_request"),
    (_bad_shape, "invalid_request"),
    (_wrong_contents_field, "invalid_request"),
    (_raw_and_typed, "invalid_request"),
    (_short_raw, "invalid_request"),
    (_missing_feature, "missing_features"),
    (_out_of_range, "invalid_request"),
    (_too_many_elements, "invalid_request"),
    (_unknown_output, "invalid_request"),
    (_bad_timeout, "invalid_request"),
    (lambda: typed_request([ROW] * 6), "too_many_instances"),
])
def test_bad_requests_are_invalid_argument_with_mlgates_code(make, code):
    def scenario(gw: Gateway):
        error = refusal(lambda: gw.infer_message(make(), metadata=[("x-request-id", "bad-1")]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        trailing = dict(error.trailing_metadata())
        assert (trailing["mlgate-code"], trailing["x-request-id"]) == (code, "bad-1")
        assert error.details() and "Traceback" not in error.details()
        assert sample(gw.metrics, "mlgate_protocol_requests_total", protocol="v2-grpc", outcome=code) == 1
    serve(scenario, limits={"max_instances": 5}, protocols={"max_tensor_elements": 1000})


def test_an_unknown_model_is_not_found_and_a_garbled_message_invalid():
    def scenario(gw: Gateway):
        with pytest.raises(InferenceServerException) as info:
            gw.client.infer("nope", inputs_of(ROWS))
        assert info.value.status() == "StatusCode.NOT_FOUND"
        error = refusal(lambda: gw.infer_message(service_pb2.ModelInferRequest(model_name="nope")))
        assert (error.code(), mlgate_code(error)) == (grpc.StatusCode.NOT_FOUND, "model_not_found")
        assert sample(gw.metrics, "mlgate_protocol_requests_total", protocol="v2-grpc",
                      outcome="model_not_found") == 2
        garbled = gw.channel.unary_unary(INFER)  # bytes in, bytes out
        error = refusal(lambda: garbled(b"\xff\xff\xff", timeout=10))
        assert (error.code(), mlgate_code(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_request")
    serve(scenario)


def test_a_model_crash_is_internal_with_a_masked_message():
    def scenario(gw: Gateway):
        error = refusal(lambda: gw.infer_message(typed_request(ROWS)))
        assert (error.code(), mlgate_code(error)) == (grpc.StatusCode.INTERNAL, "internal_error")
        assert "secret" not in error.details()
    serve(scenario, factory=lambda m: InProcessModel(ToyRuntime(fail_with=RuntimeError("secret")), GatewayMetrics()))


def test_a_message_over_the_limit_is_refused_by_grpc():
    def scenario(gw: Gateway):
        request = typed_request([ROW] * 200)  # 200 rows of 4 values: > 2 KiB
        error = refusal(lambda: gw.infer_message(request))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    serve(scenario, protocols={"grpc": {"max_message_bytes": 2048}})


# -- health and metadata --------------------------------------------------------------------------

def test_health_and_metadata_as_rest_says():
    def scenario(gw: Gateway):
        assert gw.client.is_server_live() and gw.client.is_server_ready()
        assert gw.client.is_model_ready("toy") and gw.client.is_model_ready("toy", "3")
        server = gw.client.get_server_metadata()
        assert server.name == "mlgate" and server.version
        meta = gw.client.get_model_metadata("toy")
        rest = gw.rest("/v2/models/toy").json()
        assert (meta.name, list(meta.versions), meta.platform) == (rest["name"], rest["versions"], rest["platform"])
        assert (meta.name, list(meta.versions), meta.platform) == ("toy", ["3"], "onnx_onnxv1")
        for tensors, expected in ((meta.inputs, rest["inputs"]), (meta.outputs, rest["outputs"])):
            assert [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors] == expected
        assert {o.name: o.datatype for o in meta.outputs} == {"label": "INT64", "probability": "FP64"}
        with pytest.raises(InferenceServerException) as info:
            gw.client.get_model_metadata("toy", "9")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException) as info:
            gw.client.is_model_ready("nope")
        assert info.value.status() == "StatusCode.NOT_FOUND"
    serve(scenario)


def test_not_ready_while_the_model_loads():
    def scenario(gw: Gateway):
        assert gw.client.is_server_live()
        assert not gw.client.is_server_ready() and not gw.client.is_model_ready("toy")
        with pytest.raises(InferenceServerException) as info:
            gw.client.get_model_metadata("toy")
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        error = refusal(lambda: gw.infer_message(typed_request(ROWS)))
        assert (error.code(), mlgate_code(error)) == (grpc.StatusCode.UNAVAILABLE, "model_not_ready")
        assert dict(error.trailing_metadata())["retry-after"]
    serve(scenario, factory=lambda m: (_ for _ in ()).throw(RuntimeError("no")), wait_ready=False)


# -- auth -----------------------------------------------------------------------------------------

def test_credentials_come_from_the_metadata_as_from_http_headers():
    entries, keys = keyring(caller=("predict:toy",), elsewhere=("predict:other",))

    def scenario(gw: Gateway):
        for call in (lambda: gw.client.infer("toy", inputs_of(ROWS)),
                     lambda: gw.client.get_model_metadata("toy"), lambda: gw.client.is_model_ready("toy")):
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        for headers in (bearer(keys["caller"]), {"x-api-key": keys["caller"]}):
            result = gw.client.infer("toy", inputs_of(ROWS), headers=headers)
            assert result.as_numpy("label").tolist() == [1, 0]
            assert not result.get_response().model_version  # no route scope: the version is not told
            assert gw.client.get_model_metadata("toy", headers=headers).name == "toy"
            assert gw.client.is_model_ready("toy", headers=headers)
        error = refusal(lambda: gw.infer_message(typed_request(ROWS), metadata=list(bearer(keys["elsewhere"]).items())))
        assert (error.code(), mlgate_code(error)) == (grpc.StatusCode.PERMISSION_DENIED, "forbidden")
        error = refusal(lambda: gw.infer_message(typed_request(ROWS), metadata=[("authorization", "Bearer mlg_nope")]))
        assert (error.code(), mlgate_code(error)) == (grpc.StatusCode.UNAUTHENTICATED, "unauthorized")
        assert gw.client.is_server_live()  # health needs no credential, as over HTTP
        assert sample(gw.metrics, "mlgate_protocol_requests_total", protocol="v2-grpc", outcome="unauthorized") == 2
        assert sample(gw.metrics, "mlgate_protocol_requests_total", protocol="v2-grpc", outcome="ok") == 2
    serve(scenario, auth={"api_keys": entries})


def test_a_sooner_grpc_deadline_is_the_pipelines_timeout_unless_the_request_names_one():
    codec = OipGrpc(1000, protocol())
    inputs = ModelInputs((), (FeatureSpec("amount", "double"),))
    message = protocol().ModelInferRequest(model_name="toy")
    message.inputs.add(name="amount", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
    assert "timeout_ms" not in codec.bind(message, None).decode(b"", {}, inputs, 10).payload
    assert codec.bind(message, 0.25).decode(b"", {}, inputs, 10).payload["timeout_ms"] == 250
    message.parameters["timeout"].int64_param = 40_000  # microseconds
    assert codec.bind(message, 0.25).decode(b"", {}, inputs, 10).payload["timeout_ms"] == 40
    decoded = codec.decode(message.SerializeToString(), {}, inputs, 10)  # the unbound codec parses
    assert decoded.payload["instances"] == [{"amount": 1.0}] and decoded.context.raw is False


# -- the server -----------------------------------------------------------------------------------

def self_signed(folder) -> tuple[Any, Any, bytes]:
    """A certificate for 127.0.0.1 and its key, as files, and the certificate's PEM."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (folder / "cert.pem").write_bytes(pem)
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem", pem


def test_replicas_share_the_port_over_tls_and_reflection_lists_the_service(tmp_path):
    reflection = pytest.importorskip("grpc_reflection.v1alpha.reflection_pb2")
    from grpc_reflection.v1alpha.reflection_pb2_grpc import ServerReflectionStub

    certfile, keyfile, pem = self_signed(tmp_path)
    settings = Settings(models=[{"name": "toy"}])
    metrics = GatewayMetrics()

    def call(port: int) -> tuple[list[int], list[str]]:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}", ssl=True, root_certificates=str(certfile))
        try:
            labels = client.infer("toy", inputs_of(ROWS)).as_numpy("label").tolist()
        finally:
            client.close()
        with grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(pem)) as channel:
            ask = reflection.ServerReflectionRequest(list_services="")
            answer = next(iter(ServerReflectionStub(channel).ServerReflectionInfo(iter([ask]), timeout=10)))
        return labels, sorted(s.name for s in answer.list_services_response.service)

    async def main():
        table = ModelTable(settings, metrics, lambda m: InProcessModel(ToyRuntime(), metrics), retry_initial_s=0.01)
        table.start()
        await asyncio.wait_for(table.wait_ready(), 5)
        pipeline = Pipeline(settings, table, metrics)
        port = free_port()
        servers = [GrpcServer(InferenceService(PredictRoute(pipeline, authenticator(settings)), protocol()),
                              "127.0.0.1", port, 1 << 20, 0.1, certfile, keyfile) for _ in range(2)]
        try:
            for server in servers:  # a second replica binds the same port (grpc.so_reuseport)
                await server.start()
            assert [s.bound_port for s in servers] == [port, port]
            return await asyncio.to_thread(call, port)
        finally:
            for server in servers:
                await server.stop()
            table.close()

    labels, services = asyncio.run(main())
    assert labels == [1, 0]
    assert services == ["grpc.reflection.v1alpha.ServerReflection", "inference.GRPCInferenceService"]
