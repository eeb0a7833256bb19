"""The OIP v2 gRPC messages, compiled from ``grpc_predict_v2.proto`` at first use.

No generated ``*_pb2.py`` is kept in the repository: ``grpc_tools.protoc`` (in-process, no
subprocess) compiles the packaged ``.proto`` into a descriptor set in a temporary directory once
per process, and the message classes are built from it. They live in a descriptor pool of their
own, not protobuf's default one: Triton's client (and KServe's) register their own ``inference``
package there, and two definitions of ``inference.ModelInferRequest`` in one pool refuse to load
— a gateway's tests, or a process that both serves and calls, would break.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

log = logging.getLogger(__name__)

PROTO = "grpc_predict_v2.proto"
SERVICE = "inference.GRPCInferenceService"
MESSAGES = ("ServerLiveRequest", "ServerLiveResponse", "ServerReadyRequest", "ServerReadyResponse",
            "ModelReadyRequest", "ModelReadyResponse", "ServerMetadataRequest", "ServerMetadataResponse",
            "ModelMetadataRequest", "ModelMetadataResponse", "ModelInferRequest", "ModelInferResponse",
            "InferParameter", "InferTensorContents")


@dataclass(frozen=True)
class OipProto:
    """The compiled protocol: its pool (for server reflection), message classes by short name
    (``messages["ModelInferRequest"]``), and how long compiling took."""

    pool: descriptor_pool.DescriptorPool
    messages: dict[str, Any]
    compile_s: float

    def __getattr__(self, name: str) -> Any:  # protocol.ModelInferRequest
        try:
            return self.messages[name]
        except KeyError:
            raise AttributeError(name) from None


_lock = threading.Lock()
_compiled: OipProto | None = None


def proto_text() -> str:
    return resources.files(__package__).joinpath(PROTO).read_text()


def protocol() -> OipProto:
    """The compiled protocol, compiled on the first call of the process."""
    global _compiled
    with _lock:
        if _compiled is None:
            _compiled = _compile(proto_text())
            log.info("compiled %s in %.1f ms", PROTO, _compiled.compile_s * 1000)
        return _compiled


def _compile(text: str) -> OipProto:
    from grpc_tools import protoc  # only a process that serves gRPC pays for importing protoc

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlgate-proto-") as folder:
        source, out = Path(folder) / PROTO, Path(folder) / "descriptors.pb"
        source.write_text(text)
        status = protoc.main(["protoc", f"--proto_path={folder}", f"--descriptor_set_out={out}", str(source)])
        if status != 0:
            raise RuntimeError(f"protoc could not compile {PROTO} (exit status {status})")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    classes = message_factory.GetMessageClassesForFiles([PROTO], pool)
    messages = {name: classes[f"inference.{name}"] for name in MESSAGES}
    return OipProto(pool, messages, time.perf_counter() - started)
