"""Unit-test fixtures: small in-memory models, no Ray, no Redis, no network."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pytest

from serving.runtime.base import FeatureSpec, ModelSpec


def make_spec(name: str = "toy", **overrides) -> ModelSpec:
    inputs = (FeatureSpec("amount", "double"), FeatureSpec("count", "long"),
              FeatureSpec("is_online", "boolean"), FeatureSpec("score", "double", required=False))
    fields = dict(name=name, version="3", alias="champion", uri=f"models:/{name}/3", flavor="onnx",
                  inputs=inputs, outputs=("label", "probability"),
                  input_example=({"amount": 10.0, "count": 2, "is_online": True, "score": 0.5},))
    fields.update(overrides)
    return ModelSpec(**fields)


class ToyRuntime:
    """probability = sigmoid(amount / 100); label = probability > 0.5. Records its calls."""

    def __init__(self, spec: ModelSpec | None = None, fail_with: Exception | None = None) -> None:
        self.spec = spec or make_spec()
        self.calls: list[int] = []
        self.fail_with = fail_with

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.fail_with is not None:
            raise self.fail_with
        amount = np.asarray(inputs["amount"], dtype=np.float64)
        self.calls.append(len(amount))
        p = 1 / (1 + np.exp(-amount / 100))
        return {"label": (p > 0.5).astype(np.int64), "probability": p.astype(np.float32)}

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_outside_mlflow_uri(monkeypatch):
    """Unit tests see only their own settings, whatever the shell (or MLflow) exported."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def spec() -> ModelSpec:
    return make_spec()


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No MLGATE_* variable from the shell, and a state folder of the test's own (command-line tests)."""
    import os

    for name in list(os.environ):
        if name.startswith("MLGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MLGATE_STATE_DIR", str(tmp_path / "state"))
