"""x * Sigmoid(x) becomes Swish and then a Conv's epilogue; x * HardSigmoid(x) becomes HardSwish."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from flexnnd.graph.onnx_import import import_onnx
from tests.conftest import assert_model_matches_ort, make_model

RNG = np.random.default_rng(9)
W = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) / 3
B = RNG.standard_normal(8).astype(np.float32)


def conv_then(gate_nodes, x="c"):
    nodes = [helper.make_node("Conv", ["inp", "w", "b"], ["c"], pads=[1, 1, 1, 1]), *gate_nodes]
    return make_model(nodes, [("inp", [1, 3, 12, 12])], [("y", None)], [("w", W), ("b", B)])


def feed():
    return {"inp": RNG.standard_normal((1, 3, 12, 12)).astype(np.float32) * 2}


@pytest.mark.parametrize("order", [("c", "s"), ("s", "c")])
def test_conv_sigmoid_mul_becomes_a_conv_with_swish(order, tmp_path):
    model = conv_then(
        [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", list(order), ["y"])]
    )
    graph, _ = import_onnx(model)
    assert [(n.op_type, getattr(n.op, "activation", None)) for n in graph.nodes] == [("Conv", "Swish")]
    assert_model_matches_ort(model, feed(), tmp_path)


def test_a_standalone_silu_is_one_swish_node(tmp_path):
    nodes = [
        helper.make_node("Add", ["c", "c"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Sigmoid", ["a"], ["s"]),
        helper.make_node("Mul", ["a", "s"], ["m"]),
        helper.make_node("Add", ["m", "r"], ["y"]),
    ]
    graph, _ = import_onnx(conv_then(nodes))
    assert "Swish" in [n.op_type for n in graph.nodes] and "Sigmoid" not in [n.op_type for n in graph.nodes]
    assert_model_matches_ort(conv_then(nodes), feed(), tmp_path)


def test_hardsigmoid_with_the_hard_swish_constants_becomes_hardswish(tmp_path):
    nodes = [
        helper.make_node("HardSigmoid", ["c"], ["s"], alpha=1.0 / 6.0, beta=0.5),
        helper.make_node("Mul", ["c", "s"], ["y"]),
    ]
    graph, _ = import_onnx(conv_then(nodes))
    assert [(n.op_type, n.op.activation) for n in graph.nodes] == [("Conv", "HardSwish")]
    assert_model_matches_ort(conv_then(nodes), feed(), tmp_path)


def test_a_gate_read_elsewhere_or_another_hardsigmoid_is_left_alone():
    shared = [
        helper.make_node("Sigmoid", ["c"], ["s"]),
        helper.make_node("Mul", ["c", "s"], ["m"]),
        helper.make_node("Add", ["m", "s"], ["y"]),  # the sigmoid is read twice
    ]
    other = [
        helper.make_node("HardSigmoid", ["c"], ["s"]),  # the default 0.2/0.5: not hard-swish
        helper.make_node("Mul", ["c", "s"], ["y"]),
    ]
    for nodes in (shared, other):
        graph, _ = import_onnx(conv_then(nodes))
        assert not {"Swish", "HardSwish"} & {n.op_type for n in graph.nodes}
        assert not any(getattr(n.op, "activation", "") in ("Swish", "HardSwish") for n in graph.nodes)
