"""Tree ensembles specialised to a batch job's constant inputs: same scores to the bit, fewer
splits, and the columns they no longer read; the batch plan that uses them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

import batch.score
from batch.score import specialised
from batch.specialise import probe, read_columns, specialise
from batch.outputs import score_outputs
from batch.worker import ScoringPlan
from serving.runtime.base import FeatureSpec
from serving.runtime.onnx_runtime import OnnxRuntime
from serving.settings import OnnxSettings
from tests.unit.batch.toy import convert
from tests.unit.conftest import make_spec

WIDTH = 6
CONSTANTS = {0: 0.25, 2: -1.0, 4: 3.0}  # three of six columns, the rest vary per row


def training_data(rows: int = 600):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, WIDTH)).astype(np.float32)
    score = x[:, 0] + 0.8 * x[:, 1] - 0.6 * x[:, 2] + 0.5 * x[:, 3] * x[:, 4] + 0.2 * x[:, 5]
    return x, score


@pytest.fixture(scope="module")
def classifier() -> bytes:
    x, score = training_data()
    model = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0).fit(x, score > 0)
    return convert(model, WIDTH, {"zipmap": False})


@pytest.fixture(scope="module")
def regressor() -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    x, score = training_data()
    model = GradientBoostingRegressor(n_estimators=40, max_depth=3, random_state=0).fit(x, score)
    return convert_sklearn(model, initial_types=[("features", FloatTensorType([None, WIDTH]))],
                           target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()


def run(graph: bytes, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def rows_with_constants(graph: bytes, constants=CONSTANTS) -> np.ndarray:
    rng = np.random.default_rng(7)
    x = np.concatenate([probe(graph, WIDTH, constants), rng.normal(size=(2000, WIDTH)).astype(np.float32)])
    for j, value in constants.items():
        x[:, j] = np.float32(value)
    return x


def split_count(graph: bytes) -> int:
    node = next(n for n in onnx.load_from_string(graph).graph.node if n.op_type.startswith("TreeEnsemble"))
    modes = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "nodes_modes")
    return sum(mode != b"LEAF" for mode in modes)


def assert_bit_identical(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for left, right in zip(a, b):
        assert left.dtype == right.dtype and left.shape == right.shape
        assert left.tobytes() == right.tobytes()


@pytest.mark.parametrize("graph_fixture", ["classifier", "regressor"])
def test_specialised_graph_scores_bit_for_bit_with_fewer_splits(graph_fixture, request):
    graph = request.getfixturevalue(graph_fixture)
    lean = specialise(graph, CONSTANTS)
    x = rows_with_constants(graph)
    original = run(graph, x)
    assert len(np.unique(original[-1])) > 50  # the free columns move the score: a real comparison
    assert_bit_identical(original, run(lean, x))
    assert split_count(lean) < split_count(graph)
    read = read_columns(lean)
    assert read is not None and not read & set(CONSTANTS) and read <= set(range(WIDTH))
    assert read_columns(graph) == set(range(WIDTH))


def hand_tree(mode: bytes, threshold: float, tracks_true: int = 0) -> bytes:
    """One tree: column 0 split by ``mode`` at ``threshold``, leaves 1.0 (true) / 2.0 (false),
    plus a second tree on column 1 so the graph keeps a real split."""
    node = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1,
        nodes_treeids=[0, 0, 0, 1, 1, 1], nodes_nodeids=[0, 1, 2, 0, 1, 2],
        nodes_featureids=[0, 0, 0, 1, 0, 0], nodes_modes=[mode, b"LEAF", b"LEAF", b"BRANCH_LEQ", b"LEAF", b"LEAF"],
        nodes_values=[threshold, 0.0, 0.0, 0.5, 0.0, 0.0], nodes_truenodeids=[1, 0, 0, 1, 0, 0],
        nodes_falsenodeids=[2, 0, 0, 2, 0, 0], nodes_missing_value_tracks_true=[tracks_true, 0, 0, 0, 0, 0],
        target_treeids=[0, 0, 1, 1], target_nodeids=[1, 2, 1, 2], target_ids=[0, 0, 0, 0],
        target_weights=[1.0, 2.0, 10.0, 20.0])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.mark.parametrize("mode", [b"BRANCH_LEQ", b"BRANCH_LT", b"BRANCH_GTE", b"BRANCH_GT", b"BRANCH_EQ", b"BRANCH_NEQ"])
@pytest.mark.parametrize("value", [0.5, float(np.nextafter(np.float32(0.5), np.float32(1))), 0.4, 0.6, float("nan")])
@pytest.mark.parametrize("tracks_true", [0, 1])
def test_each_split_mode_is_decided_as_onnxruntime_decides_it(mode, value, tracks_true):
    graph = hand_tree(mode, 0.5, tracks_true)
    lean = specialise(graph, {0: value})
    x = np.array([[value, 0.1], [value, 0.9]], np.float32)
    assert_bit_identical(run(graph, x), run(lean, x))
    assert split_count(lean) == 1 and read_columns(lean) == {1}


def test_graphs_it_cannot_rewrite_come_back_unchanged(classifier):
    assert specialise(classifier, {}) is classifier
    assert specialise(classifier, {WIDTH + 3: 1.0}) is classifier  # no split on that column
    double = onnx.load_from_string(hand_tree(b"BRANCH_LEQ", 0.5))
    double.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    assert specialise(double.SerializeToString(), {0: 0.1}) == double.SerializeToString()


def test_read_columns_is_none_when_something_else_reads_the_input():
    model = onnx.load_from_string(hand_tree(b"BRANCH_LEQ", 0.5))
    model.graph.node.append(helper.make_node("Identity", ["x"], ["x_copy"]))
    model.graph.output.append(helper.make_tensor_value_info("x_copy", TensorProto.FLOAT, [None, 2]))
    assert read_columns(model.SerializeToString()) is None


def plan_for(graph: bytes) -> ScoringPlan:
    names = [f"f{j}" for j in range(WIDTH)]
    spec = make_spec(inputs=tuple(FeatureSpec(n, "double") for n in names), outputs=("label", "probabilities"))
    return ScoringPlan(model_bytes=graph, spec=spec, onnx=OnnxSettings(),
                       stored={n: n for j, n in enumerate(names) if j not in CONSTANTS},
                       request_defaults={names[j]: v for j, v in CONSTANTS.items()}, snapshot="s",
                       feed_types=dict.fromkeys(names, "float"), keys=(("key", "string"),),
                       outputs=score_outputs(("label", "probabilities")))


def test_the_plan_ships_the_specialised_graph_and_only_the_columns_it_reads(classifier):
    plan = specialised(plan_for(classifier))
    assert plan.graph is not None and split_count(plan.worker_graph) < split_count(classifier)
    read = read_columns(plan.worker_graph)
    assert set(plan.shipped) == {f"f{j}" for j in read} and plan.unread == set(plan.stored) - set(plan.shipped)
    x = rows_with_constants(classifier)
    inputs = {f"f{j}": x[:, j] for j in range(WIDTH)}
    fed = {**inputs, **{name: np.zeros(len(x), np.float32) for name in plan.unread}}  # as the worker feeds them
    ours = OnnxRuntime(plan.worker_graph, plan.spec, plan.onnx).predict(fed)
    theirs = OnnxRuntime(classifier, plan.spec, plan.onnx).predict(inputs)
    assert_bit_identical([theirs["label"], theirs["probabilities"]], [ours["label"], ours["probabilities"]])


def test_the_plan_keeps_the_registered_graph_if_the_specialised_one_disagrees(classifier, monkeypatch):
    other = specialise(classifier, {0: 5.0, 2: -1.0, 4: 3.0})  # specialised to the wrong value
    monkeypatch.setattr(batch.score, "specialise", lambda graph, constants: other)
    plan = specialised(plan_for(classifier))
    assert plan.worker_graph is classifier and not plan.unread
    assert plan == plan_for(classifier)
