"""The ONNX runtime and load-time validation, on a small model trained here."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from examples.fraud.train import to_onnx
from serving.errors import ModelValidationError
from serving.runtime.base import FeatureSpec
from serving.runtime.loader import validate
from serving.runtime.onnx_runtime import OnnxRuntime, session_options
from serving.settings import OnnxSettings
from tests.unit.conftest import ToyRuntime, make_spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    model = GradientBoostingClassifier(n_estimators=10, random_state=0).fit(x, y)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    onnx.save(to_onnx(model, 3), str(path))
    return model, str(path), x


def spec3(**kw):
    fields = {"inputs": tuple(FeatureSpec(n, "double") for n in ("a", "b", "c")),
              "input_example": ({"a": 0.1, "b": 0.2, "c": 0.3},), "outputs": ()}
    return make_spec(**{**fields, **kw})


def test_onnx_runtime_matches_sklearn_with_columns_fed_in_signature_order(trained):
    model, path, x = trained
    rt = OnnxRuntime(path, spec3(), OnnxSettings())
    # Columns arrive as a mapping in any order; the runtime must place them by signature.
    out = rt.predict({"c": x[:, 2], "a": x[:, 0], "b": x[:, 1]})
    assert rt.spec.outputs == ("label", "probability")
    np.testing.assert_allclose(out["probability"], model.predict_proba(x)[:, 1], atol=1e-5)
    assert out["label"].tolist() == model.predict(x).tolist()


def test_session_options_are_deliberate():
    opts = session_options(OnnxSettings(intra_op_threads=1, graph_optimization="extended"))
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_graph_that_does_not_fit_the_signature_is_refused(trained):
    _, path, _ = trained
    wrong = spec3(inputs=(FeatureSpec("a", "double"), FeatureSpec("b", "double")))
    with pytest.raises(ModelValidationError, match="graph inputs"):
        OnnxRuntime(path, wrong, OnnxSettings())


def test_unreadable_file_is_refused(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelValidationError, match="cannot open"):
        OnnxRuntime(str(bad), spec3(), OnnxSettings())


def test_validate_scores_the_input_example(trained):
    _, path, _ = trained
    rt = validate(OnnxRuntime(path, spec3(), OnnxSettings()))
    assert rt.spec.outputs == ("label", "probability")


class _Broken(ToyRuntime):
    def __init__(self, outputs):
        super().__init__()
        self._outputs = outputs

    def predict(self, inputs):
        return self._outputs


@pytest.mark.parametrize("outputs, reason", [
    ({"probability": np.array([0.1, 0.2])}, "rows"),
    ({"probability": np.array([np.nan])}, "not finite"),
])
def test_validate_refuses_wrong_shapes_and_non_finite_scores(outputs, reason):
    with pytest.raises(ModelValidationError, match=reason):
        validate(_Broken(outputs))


def test_validate_refuses_a_model_without_example_or_raising():
    with pytest.raises(ModelValidationError, match="without an input example"):
        validate(ToyRuntime(make_spec(input_example=())))
    with pytest.raises(ModelValidationError, match="scoring the input example failed"):
        validate(ToyRuntime(fail_with=ValueError("boom")))
    mismatched = make_spec(input_example=({"amount": 1.0},))
    with pytest.raises(ModelValidationError, match="does not match"):
        validate(ToyRuntime(replace(mismatched)))


def test_input_dtypes_say_what_the_graph_takes_per_signature_input(trained):
    _, path, x = trained
    rt = OnnxRuntime(path, spec3(), OnnxSettings())  # one float32 [n, 3] tensor fed from three doubles
    assert rt.input_dtypes == {"a": np.float32, "b": np.float32, "c": np.float32}
    # Columns already of that dtype score exactly as the doubles they were rounded from.
    doubles = {n: x[:, i].astype(np.float64) + 1e-9 for i, n in enumerate("abc")}
    floats = {n: v.astype(rt.input_dtypes[n]) for n, v in doubles.items()}
    np.testing.assert_array_equal(rt.predict(floats)["probability"], rt.predict(doubles)["probability"])


def test_a_graph_over_the_size_limit_is_refused_before_it_is_opened(trained, monkeypatch):
    _, path, _ = trained
    size = len(open(path, "rb").read())
    monkeypatch.setattr("onnxruntime.InferenceSession",
                        lambda *a, **kw: pytest.fail("a session opened on a graph over the limit"))
    for model in (path, open(path, "rb").read()):  # a file (gateway) or its bytes (batch workers)
        with pytest.raises(ModelValidationError, match=r"over the limit of .*onnx\.max_model_bytes"):
            OnnxRuntime(model, spec3(), OnnxSettings(max_model_bytes=size - 1))


def test_a_graph_at_the_size_limit_opens(trained):
    _, path, _ = trained
    size = len(open(path, "rb").read())
    assert OnnxRuntime(path, spec3(), OnnxSettings(max_model_bytes=size)).spec.outputs == ("label", "probability")
    assert OnnxSettings().max_model_bytes == 512 * 2**20
