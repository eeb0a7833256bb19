"""The slow path: any MLflow model through ``mlflow.pyfunc`` (pandas in, pandas/numpy out)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from serving.errors import ModelValidationError
from serving.runtime.base import ModelSpec


class PyfuncRuntime:
    def __init__(self, model_path: str, spec: ModelSpec) -> None:
        import mlflow.pyfunc  # heavy import, only for models that need it

        try:
            self._model = mlflow.pyfunc.load_model(model_path)
        except Exception as exc:
            raise ModelValidationError(f"mlflow.pyfunc cannot load the model: {exc}") from exc
        self.spec = spec
        self._names = [f.name for f in spec.inputs]

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        frame = pd.DataFrame({name: inputs[name] for name in self._names})
        result = self._model.predict(frame)
        if isinstance(result, pd.DataFrame):
            return {str(c): result[c].to_numpy() for c in result.columns}
        if isinstance(result, dict):
            return {str(k): np.asarray(v) for k, v in result.items()}
        return {"prediction": np.asarray(result)}

    def close(self) -> None:
        self._model = None
