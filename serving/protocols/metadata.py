"""Open Inference Protocol v2 metadata of a served model: inputs from the MLflow signature (and
the entity keys that make a request entity-keyed), outputs as the gateway answers them.

Output datatypes and shapes are what the model gives once its answer is encoded (a classifier's
``label`` and ``probability``), so they are read from one answer of the loaded version to a row
of zeros, once per version, rather than guessed from the ONNX graph.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as package_version
from typing import Any

import numpy as np

from serving import codec
from serving.errors import ModelNotReady
from serving.models import ModelBackend
from serving.pipeline import Pipeline
from serving.protocols import tensors
from serving.protocols.base import ROW_FACTS, pinned_variant
from serving.routing import CHAMPION
from serving.runtime.base import NUMPY_DTYPES

PLATFORMS = {"onnx": "onnx_onnxv1", "pyfunc": "mlflow_pyfunc"}


def mlgate_version() -> str:
    """The server version OIP's server metadata names (REST and gRPC)."""
    try:
        return package_version("mlgate")
    except PackageNotFoundError:
        return "0"


class Describer:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._outputs: dict[tuple[str, str], list[dict[str, Any]]] = {}

    async def model(self, name: str, version: str | None, disclose: bool) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{version}]``: 404 for a version not serving (for
        callers without ``route``: other than the champion's), 503 while none is loaded."""
        backend = self._backend(name, version, disclose)
        spec = backend.spec
        keys, request = self.pipeline.inputs_of(name)
        inputs = [{"name": k.name, "datatype": tensors.SIGNATURE_DATATYPES[k.type], "shape": [-1]} for k in keys]
        inputs += [{"name": f.name, "datatype": tensors.SIGNATURE_DATATYPES[f.dtype], "shape": [-1]}
                   for f in request or ()]
        versions = sorted({v.version for v in self.pipeline.models.variants(name).values() if v.version}) \
            if disclose else [spec.version]
        return {"name": name, "versions": versions, "platform": PLATFORMS.get(spec.flavor, spec.flavor),
                "inputs": inputs, "outputs": await self.outputs(backend)}

    def _backend(self, name: str, version: str | None, disclose: bool) -> ModelBackend:
        models = self.pipeline.models
        variant = pinned_variant(models, name, version, disclose) if version is not None else CHAMPION
        return models.get(name, variant)  # ModelNotFound, ModelNotReady

    async def outputs(self, backend: ModelBackend) -> list[dict[str, Any]]:
        spec = backend.spec
        key = (spec.name, spec.version)
        found = self._outputs.get(key)
        if found is None:
            zeros = {f.name: np.zeros(1, dtype=NUMPY_DTYPES[f.dtype]) for f in spec.inputs}
            row = codec.encode(await backend.predict(zeros))[0]
            found = self._outputs[key] = [_output(name, value) for name, value in row.items() if name not in ROW_FACTS]
        return found

    def ready(self, name: str, version: str | None, disclose: bool) -> bool:
        try:
            self._backend(name, version, disclose)
        except ModelNotReady:
            return False
        return True


def _output(name: str, value: Any) -> dict[str, Any]:
    array = np.asarray([value])
    if array.dtype.kind in "US":
        array = array.astype(object)
    return {"name": name, "datatype": tensors.datatype_of(array), "shape": [-1, *array.shape[1:]]}
