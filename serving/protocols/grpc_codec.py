"""Open Inference Protocol v2 over gRPC: ``ModelInferRequest`` onto :class:`oip.InferRequest`,
output tensors onto ``ModelInferResponse``.

Only the translation lives here: every check of names, datatypes, shapes, element counts and
values is the one REST uses (``serving/protocols/tensors.py``), and the payload and the outputs
are built by ``oip.to_payload``/``oip.outputs_of``. The message classes are handed in (compiled
by ``serving/rpc/proto.py``), so this module needs no transport.

Raw and typed contents. A request sends every input as ``raw_input_contents`` (Triton's clients
always do) or every input in its typed ``contents``; the answer follows suit — raw outputs for raw
inputs or when asked for (``binary_data``/``binary_data_output`` parameters), else typed. The
protocol allows no mix within one message, so one raw output makes them all raw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import orjson
from google.protobuf.message import DecodeError

from serving.errors import InvalidRequest, MlgateError
from serving.protocols import oip, tensors
from serving.protocols.base import Decoded, Headers, ModelInputs, timeout_ms_of
from serving.protocols.tensors import Tensor

# The typed contents field of each datatype (FP16 has none: it travels raw).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}
CONTENTS_FIELDS = tuple(sorted(set(CONTENTS.values())))
MAX_OUTPUTS = 64


@dataclass
class Call:
    """What an answer must remember of its request: the request, and whether it came raw."""

    request: oip.InferRequest
    raw: bool


class OipGrpc:
    """The ``ModelInfer`` codec. ``messages``: the compiled protocol (``ModelInferRequest``,
    ``ModelInferResponse`` attributes)."""

    name = "v2-grpc"

    def __init__(self, max_elements: int, messages: Any) -> None:
        self.max_elements = max_elements
        self.messages = messages

    def accepts(self, headers: Mapping[bytes, bytes]) -> bool:
        return True  # the media type is gRPC's own, checked by the transport

    def parse(self, raw: bytes) -> Any:
        """A ``ModelInferRequest`` from its bytes; 400 for bytes that are none."""
        try:
            return self.messages.ModelInferRequest.FromString(raw)
        except DecodeError:
            raise InvalidRequest("the message is not a ModelInferRequest") from None

    def decode(self, raw: bytes, headers: Mapping[bytes, bytes], inputs: ModelInputs, max_rows: int) -> Decoded:
        return self.decode_message(self.parse(raw), inputs, max_rows)

    def decode_message(self, message: Any, inputs: ModelInputs, max_rows: int,
                       deadline_s: float | None = None) -> Decoded:
        """The pipeline's payload of a parsed request. ``deadline_s``: the time the caller's gRPC
        deadline leaves, the pipeline's timeout unless the request's ``timeout`` parameter says."""
        request = self.infer_request(message)
        payload = oip.to_payload(request, inputs, max_rows)
        if deadline_s is not None and "timeout_ms" not in payload:
            payload["timeout_ms"] = timeout_ms_of(max(deadline_s, 0.001), 1000, "the gRPC deadline")
        return Decoded(payload, Call(request, bool(message.raw_input_contents)))

    def infer_request(self, message: Any) -> oip.InferRequest:
        if len(message.id) > 256:
            raise InvalidRequest("'id' must be at most 256 characters")
        raw = message.raw_input_contents
        if raw and len(raw) != len(message.inputs):
            raise InvalidRequest(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs")
        budget = self.max_elements
        inputs = []
        for i, item in enumerate(message.inputs):
            name, datatype, shape = tensors.check_header(item.name, item.datatype, list(item.shape), budget)
            parameters = _parameters(item.parameters, f"{name}.parameters")
            if raw:
                if item.HasField("contents"):
                    raise InvalidRequest(f"{name}: send contents or raw_input_contents, not both")
                data = tensors.from_raw(name, datatype, shape, raw[i])
            else:
                data = tensors.from_elements(name, datatype, shape, _contents(name, datatype, item.contents))
            budget -= len(data)
            inputs.append(Tensor(name, datatype, shape, data, parameters))
        if len(message.outputs) > MAX_OUTPUTS:
            raise InvalidRequest(f"at most {MAX_OUTPUTS} outputs may be asked for")
        outputs = [(o.name, _parameters(o.parameters, f"{o.name[:64]}.parameters")) for o in message.outputs]
        return oip.InferRequest(message.id or None, inputs, _parameters(message.parameters, "parameters"), outputs)

    def encode(self, result: dict[str, Any], decoded: Decoded, disclose: bool) -> tuple[bytes, Headers]:
        call: Call = decoded.context
        response = self.messages.ModelInferResponse(model_name=result["model"], id=call.request.id or "")
        if disclose:
            response.model_version = result["version"]
        outputs = oip.outputs_of(result, call.request, binary_default=call.raw)
        raw = any(o.binary or o.datatype not in CONTENTS for o in outputs)
        for out in outputs:
            tensor = response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
            if raw:
                response.raw_output_contents.append(tensors.to_raw(out.data, out.datatype))
            else:
                values = tensors.as_bytes(out.data) if out.datatype == "BYTES" else tensors.flat_list(out.data)
                getattr(tensor.contents, CONTENTS[out.datatype]).extend(values)
        return response.SerializeToString(), []

    def error(self, exc: MlgateError, rid: str) -> bytes:
        """As REST's: the transport reads the message and code out of it for the gRPC status."""
        return orjson.dumps({"error": exc.message, "code": exc.code, "request_id": rid})

    def bind(self, message: Any, deadline_s: float | None = None) -> BoundCall:
        """A codec for one call whose request is already parsed (the transport needed its model
        name before admission): decoding it again would parse the message twice."""
        return BoundCall(self, message, deadline_s)


class BoundCall:
    """:class:`OipGrpc` for one already parsed request (see :meth:`OipGrpc.bind`)."""

    def __init__(self, codec: OipGrpc, message: Any, deadline_s: float | None) -> None:
        self.codec, self.message, self.deadline_s = codec, message, deadline_s
        self.name = codec.name

    def accepts(self, headers: Mapping[bytes, bytes]) -> bool:
        return True

    def decode(self, raw: bytes, headers: Mapping[bytes, bytes], inputs: ModelInputs, max_rows: int) -> Decoded:
        return self.codec.decode_message(self.message, inputs, max_rows, self.deadline_s)

    def encode(self, result: dict[str, Any], decoded: Decoded, disclose: bool) -> tuple[bytes, Headers]:
        return self.codec.encode(result, decoded, disclose)

    def error(self, exc: MlgateError, rid: str) -> bytes:
        return self.codec.error(exc, rid)


def _contents(name: str, datatype: str, contents: Any) -> list:
    """The typed elements of a tensor: its datatype's field, and no other."""
    field = CONTENTS.get(datatype)
    if field is None:
        raise InvalidRequest(f"{name}: {datatype} has no typed contents; send it as raw_input_contents")
    given = contents.ListFields()  # only the fields that hold elements
    stray = next((f.name for f, _ in given if f.name != field), None)
    if stray is not None:
        raise InvalidRequest(f"{name}: a {datatype} tensor's elements go in {field}, not {stray}")
    return list(given[0][1]) if given else []


def _parameters(parameters: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidRequest(f"{where}.{key[:64]}: the parameter has no value")
        out[key] = getattr(value, choice)
    return out
