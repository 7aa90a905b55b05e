"""GELU chains written out in elementwise ops become one Gelu node, and still equal ONNX Runtime."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

from flexnnd.graph.onnx_import import import_onnx
from tests.conftest import assert_model_matches_ort, make_model

SHAPE = [1, 8, 32]


def scalar(name, value):
    return (name, np.array(value, dtype=np.float32))


def erf_form(variant):
    """torch's exports of nn.GELU(): x/√2 or x·(1/√2); the products in three associations."""
    first = (
        helper.make_node("Div", ["x", "sqrt2"], ["u"])
        if variant != "mul_inv"
        else helper.make_node("Mul", ["inv_sqrt2", "x"], ["u"])
    )
    nodes = [first, helper.make_node("Erf", ["u"], ["e"]), helper.make_node("Add", ["e", "one"], ["a"])]
    if variant in ("div", "mul_inv"):  # (x * a) * 0.5
        nodes += [helper.make_node("Mul", ["x", "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["g"])]
    elif variant == "half_first":  # (a * 0.5) * x
        nodes += [helper.make_node("Mul", ["a", "half"], ["m"]), helper.make_node("Mul", ["m", "x"], ["g"])]
    else:  # a * (x * 0.5)
        nodes += [helper.make_node("Mul", ["x", "half"], ["h"]), helper.make_node("Mul", ["a", "h"], ["g"])]
    return nodes


def tanh_form(cube):
    pow_nodes = (
        [helper.make_node("Pow", ["x", "three"], ["c"])]
        if cube == "pow"
        else [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Mul", ["sq", "x"], ["c"])]
    )
    return [
        *pow_nodes,
        helper.make_node("Mul", ["c", "k"], ["kc"]),
        helper.make_node("Add", ["x", "kc"], ["inner"]),
        helper.make_node("Mul", ["inner", "scale"], ["v"]),
        helper.make_node("Tanh", ["v"], ["t"]),
        helper.make_node("Add", ["t", "one"], ["a"]),
        helper.make_node("Mul", ["x", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["g"]),
    ]


CONSTS = [
    scalar("sqrt2", math.sqrt(2)),
    scalar("inv_sqrt2", 1 / math.sqrt(2)),
    scalar("one", 1.0),
    scalar("half", 0.5),
    scalar("three", 3.0),
    scalar("k", 0.044715),
    scalar("scale", math.sqrt(2 / math.pi)),
]


def model_with(nodes):
    """A MatMul feeding the chain (so x is computed), and a Relu after it (so g is not the output)."""
    w = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32) / 4
    body = [helper.make_node("MatMul", ["inp", "w"], ["x"]), *nodes, helper.make_node("Relu", ["g"], ["y"])]
    used = {i for n in body for i in n.input}
    consts = [(n, v) for n, v in CONSTS if n in used] + [("w", w)]
    return make_model(body, [("inp", SHAPE)], [("y", None)], consts)


@pytest.mark.parametrize(
    "nodes, approximate",
    [
        *[(erf_form(v), "none") for v in ("div", "mul_inv", "half_first", "half_inner")],
        (tanh_form("pow"), "tanh"),
        (tanh_form("mul"), "tanh"),
    ],
    ids=["erf-div", "erf-mul", "erf-half-first", "erf-half-inner", "tanh-pow", "tanh-mul"],
)
def test_gelu_chain_becomes_one_node_and_matches_ort(nodes, approximate, tmp_path):
    model = model_with(nodes)
    graph, _ = import_onnx(model)
    ops = [n.op_type for n in graph.nodes]
    assert ops.count("Gelu") == 1, ops
    assert not {"Erf", "Tanh", "Pow", "Div", "Add"} & set(ops), ops
    assert next(n for n in graph.nodes if n.op_type == "Gelu").op.approximate == approximate
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32) * 3
    assert_model_matches_ort(model, {"inp": x}, tmp_path)


def test_a_chain_whose_intermediate_is_read_elsewhere_is_left_alone():
    nodes = [*erf_form("div"), helper.make_node("Add", ["g", "e"], ["g2"])]  # erf's output read twice
    model = model_with(nodes)
    model.graph.output.append(helper.make_tensor_value_info("g2", 1, None))
    graph, _ = import_onnx(model)
    assert "Gelu" not in [n.op_type for n in graph.nodes]


def test_a_wrong_constant_is_not_gelu():
    model = model_with(erf_form("div"))
    for init in model.graph.initializer:
        if init.name == "half":
            init.CopyFrom(helper.make_tensor("half", 1, [], [0.6]))
    graph, _ = import_onnx(model)
    assert "Gelu" not in [n.op_type for n in graph.nodes]
