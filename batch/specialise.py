"""A tree-ensemble graph specialised to the inputs a batch job holds constant.

A batch score feeds every row the same request-time values (the training medians, see
``batch.score.typical_request``). Every split of a tree on one of those inputs therefore goes the
same way for every row of the job, so it can be decided once, here, instead of once per row by
onnxruntime: the split is replaced by the subtree it leads to. Each row still reaches the same
leaf of every tree, trees keep their number and order, and leaf weights, base values and the
post-transform are untouched, so onnxruntime sums the same weights in the same order and the
scores are the original graph's bit for bit (``tests/unit/test_batch_specialise.py``).

Only ``ai.onnx.ml`` ``TreeEnsembleClassifier`` and ``TreeEnsembleRegressor`` nodes fed directly
by the graph's single float32 2-D input are rewritten (column ``j`` of that input is feature id
``j``, compared in float32 as onnxruntime does); anything else in the graph is left as it is, and a
graph with nothing to rewrite comes back unchanged.

Once specialised, a tree ensemble may no longer read some columns at all (every split on them
was under a decided one): :func:`read_columns` says which columns a graph still reads, so a batch
job need not ship the others to the worker.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from typing import Any, Callable, Mapping

import numpy as np

_WEIGHT_PREFIX = {"TreeEnsembleClassifier": "class_", "TreeEnsembleRegressor": "target_"}
_NODE_ATTRS = ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
               "nodes_truenodeids", "nodes_falsenodeids", "nodes_hitrates", "nodes_missing_value_tracks_true")
# How onnxruntime decides a split: true branch when ``value <op> threshold`` (IEEE, so NaN is
# false except for NEQ), or when the value is NaN and the node says missing values go true.
_SPLITS: dict[bytes, Callable[[Any, Any], bool]] = {
    b"BRANCH_LEQ": operator.le, b"BRANCH_LT": operator.lt, b"BRANCH_GTE": operator.ge,
    b"BRANCH_GT": operator.gt, b"BRANCH_EQ": operator.eq, b"BRANCH_NEQ": operator.ne}


def specialise(model_bytes: bytes, constants: Mapping[int, float]) -> bytes:
    """``model_bytes`` with every tree split on a column in ``constants`` (column index -> the
    value every row has there) decided in advance. The graph still takes the same input."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    matrix = _float_matrix_input(model.graph)
    if not constants or matrix is None:
        return model_bytes
    changed = False
    for node in model.graph.node:
        if _is_tree_ensemble(node) and list(node.input) == [matrix]:
            changed |= _specialise_node(node, _WEIGHT_PREFIX[node.op_type], constants)
    return model.SerializeToString() if changed else model_bytes


def read_columns(model_bytes: bytes) -> set[int] | None:
    """The columns of the graph's single input that it can read: the feature ids of the tree
    ensembles' splits when tree ensembles are the input's only consumers, else ``None`` (all)."""
    import onnx
    from onnx import helper

    graph = onnx.load_from_string(model_bytes).graph
    matrix = _float_matrix_input(graph)
    if matrix is None or matrix in {o.name for o in graph.output}:
        return None
    columns: set[int] = set()
    for node in graph.node:
        if matrix not in node.input:
            continue
        if not _is_tree_ensemble(node) or list(node.input) != [matrix]:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        columns.update(f for f, mode in zip(attrs["nodes_featureids"], attrs["nodes_modes"]) if mode != b"LEAF")
    return columns


def _float_matrix_input(graph) -> str | None:
    """The name of the graph's one float32 input, if it has exactly one."""
    from onnx import TensorProto

    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        return None
    return inputs[0].name


def _is_tree_ensemble(node) -> bool:
    return node.domain == "ai.onnx.ml" and node.op_type in _WEIGHT_PREFIX


def _specialise_node(node, prefix: str, constants: Mapping[int, float]) -> bool:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if any(name.endswith("_as_tensor") for name in attrs):  # double thresholds or weights: not handled
        return False
    weight_attrs = [f"{prefix}treeids", f"{prefix}nodeids", f"{prefix}ids", f"{prefix}weights"]
    nodes = {name: list(attrs[name]) for name in _NODE_ATTRS if name in attrs}
    weights = {name: list(attrs[name]) for name in weight_attrs}
    pruned_nodes, pruned_weights = _prune(nodes, weights, prefix, constants)
    if len(pruned_nodes["nodes_nodeids"]) == len(nodes["nodes_nodeids"]):
        return False
    kept = [a for a in node.attribute if a.name not in nodes and a.name not in weights]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.extend(helper.make_attribute(name, values)
                          for name, values in {**pruned_nodes, **pruned_weights}.items())
    return True


def _prune(nodes: dict[str, list], weights: dict[str, list], prefix: str,
           constants: Mapping[int, float]) -> tuple[dict[str, list], dict[str, list]]:
    """Trees in their original order, each one's surviving nodes renumbered in preorder from 0
    (its root first, as converters emit them); leaf weights follow their leaves, in their order."""
    index = {(t, n): i for i, (t, n) in enumerate(zip(nodes["nodes_treeids"], nodes["nodes_nodeids"]))}
    fixed = {column: np.float32(value) for column, value in constants.items()}  # as the input holds it
    tracks_true = nodes.get("nodes_missing_value_tracks_true") or [0] * len(index)
    trees = list(dict.fromkeys(nodes["nodes_treeids"]))
    roots = {}
    for i, tree in enumerate(nodes["nodes_treeids"]):
        roots.setdefault(tree, i)

    def decided(i: int) -> int:
        """The node reached from ``i`` once splits on constant columns are taken."""
        while nodes["nodes_modes"][i] != b"LEAF" and nodes["nodes_featureids"][i] in fixed:
            value, threshold = fixed[nodes["nodes_featureids"][i]], np.float32(nodes["nodes_values"][i])
            goes_true = (bool(np.isnan(value)) and bool(tracks_true[i])) or _SPLITS[nodes["nodes_modes"][i]](
                value, threshold)
            child = nodes["nodes_truenodeids" if goes_true else "nodes_falsenodeids"][i]
            i = index[(nodes["nodes_treeids"][i], child)]
        return i

    out: dict[str, list] = {name: [] for name in nodes}
    renumbered: dict[tuple[int, int], int] = {}
    for tree in trees:
        order: list[int] = []
        stack = [decided(roots[tree])]
        while stack:  # preorder: a node, then its (decided) true subtree, then its false subtree
            i = stack.pop()
            order.append(i)
            if nodes["nodes_modes"][i] != b"LEAF":
                stack.append(decided(index[(tree, nodes["nodes_falsenodeids"][i])]))
                stack.append(decided(index[(tree, nodes["nodes_truenodeids"][i])]))
        new_id = {nodes["nodes_nodeids"][i]: k for k, i in enumerate(order)}
        for i in order:
            renumbered[(tree, nodes["nodes_nodeids"][i])] = new_id[nodes["nodes_nodeids"][i]]
            for name in nodes:
                value = nodes[name][i]
                if name == "nodes_nodeids":
                    value = new_id[value]
                elif name in ("nodes_truenodeids", "nodes_falsenodeids") and nodes["nodes_modes"][i] != b"LEAF":
                    value = new_id[nodes["nodes_nodeids"][decided(index[(tree, value)])]]
                elif name in ("nodes_truenodeids", "nodes_falsenodeids"):
                    value = 0
                out[name].append(value)
    kept_weights: dict[str, list] = defaultdict(list)
    for k, key in enumerate(zip(weights[f"{prefix}treeids"], weights[f"{prefix}nodeids"])):
        if key in renumbered:
            for name in weights:
                kept_weights[name].append(renumbered[key] if name == f"{prefix}nodeids" else weights[name][k])
    return out, {name: kept_weights[name] for name in weights}


def probe(model_bytes: bytes, width: int, constants: Mapping[int, float], rows: int = 4096,
          seed: int = 0) -> np.ndarray:
    """Float32 rows that exercise the graph's splits: each free column takes the thresholds its
    splits use, the float32 values just either side of them, and random values across their
    range; constant columns hold their constant. Used to check a specialised graph against the
    original before a job trusts it."""
    import onnx
    from onnx import helper

    thresholds: dict[int, list[float]] = defaultdict(list)
    for node in onnx.load_from_string(model_bytes).graph.node:
        if _is_tree_ensemble(node):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            for f, mode, value in zip(attrs["nodes_featureids"], attrs["nodes_modes"], attrs["nodes_values"]):
                if mode != b"LEAF":
                    thresholds[f].append(value)
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 100.0, (rows, width)).astype(np.float32)
    for j in range(width):
        if j in constants:
            x[:, j] = np.float32(constants[j])
        elif thresholds[j]:
            t = np.asarray(thresholds[j], np.float32)
            near = np.concatenate([t, np.nextafter(t, np.float32(-np.inf)), np.nextafter(t, np.float32(np.inf))])
            spread = rng.uniform(t.min() - 1, t.max() + 1, rows).astype(np.float32)
            x[:, j] = np.where(rng.random(rows) < 0.5, rng.choice(near, rows), spread)
    return x
