"""The memory-aware node order: branches run so that the step needing the most memory runs while
the fewest activations are alive; a graph with nothing to gain keeps its order."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import helper

import flexnnd
from flexnnd.graph import memory_order, onnx_import
from flexnnd.graph.onnx_import import import_onnx
from flexnnd.planner.plan_budget import Planner
from tests.conftest import make_model, ort_run, save


def block(order=("reduce", "conv3x3", "wide")):
    """An inception-like block: x feeds a 1x1 conv and a 1x1 reduce before a 3x3 conv; the two
    branches are concatenated. In the default file order x is still alive while the 3x3 conv runs."""
    rng = np.random.default_rng(1)
    nodes = {
        "wide": helper.make_node("Conv", ["x", "wa"], ["a"], name="wide"),
        "reduce": helper.make_node("Conv", ["x", "wb"], ["b"], name="reduce"),
        "conv3x3": helper.make_node("Conv", ["b", "wc"], ["c"], pads=[1, 1, 1, 1], name="conv3x3"),
    }
    tail = [
        helper.make_node("Concat", ["a", "c"], ["cat"], axis=1, name="cat"),
        helper.make_node("Relu", ["cat"], ["y"], name="out"),
    ]
    inits = [
        ("wa", rng.standard_normal((16, 32, 1, 1)).astype(np.float32)),
        ("wb", rng.standard_normal((8, 32, 1, 1)).astype(np.float32)),
        ("wc", rng.standard_normal((16, 8, 3, 3)).astype(np.float32)),
    ]
    return make_model([nodes[n] for n in order] + tail, [("x", [1, 32, 16, 16])], [("y", None)], inits)


def names(graph):
    return [n.name for n in graph.nodes]


def peak(graph) -> int:
    """The most bytes any unsliced step needs: activations alive, its scratch, its weights."""
    return max(Planner(graph).layout({}).demand)


def test_the_big_step_runs_after_the_branch_that_frees_the_input(monkeypatch):
    graph, _ = import_onnx(block())
    order = names(graph)
    assert order.index("wide") < order.index("conv3x3")  # x's last reader runs first
    monkeypatch.setattr(onnx_import, "memory_order", lambda g: g.nodes)
    as_written, _ = import_onnx(block())
    assert names(as_written) == ["reduce", "conv3x3", "wide", "cat", "out"]
    assert peak(graph) < peak(as_written)
    # The weights file follows the new order: loads stay in file order.
    assert graph.constants.index("wa") < graph.constants.index("wc")


def test_an_order_with_nothing_to_gain_is_kept():
    graph, _ = import_onnx(block(order=("reduce", "wide", "conv3x3")))
    assert names(graph) == ["reduce", "wide", "conv3x3", "cat", "out"]


def test_the_order_is_the_same_every_time():
    first, _ = import_onnx(block())
    assert all(names(import_onnx(block())[0]) == names(first) for _ in range(3))


def test_a_segment_too_wide_to_search_keeps_the_original_order(monkeypatch, caplog):
    monkeypatch.setattr(memory_order, "MAX_STATES", 2)
    with caplog.at_level(logging.WARNING, logger="flexnnd.graph.memory_order"):
        graph, _ = import_onnx(block())
    assert names(graph) == ["reduce", "conv3x3", "wide", "cat", "out"]
    assert "partial orders" in caplog.text


@pytest.mark.parametrize("order", [("reduce", "conv3x3", "wide"), ("wide", "reduce", "conv3x3")])
def test_reordered_block_matches_onnxruntime(tmp_path, order):
    path = save(block(order), tmp_path / "m.onnx")
    x = np.random.default_rng(2).standard_normal((1, 32, 16, 16)).astype(np.float32)
    with flexnnd.Session(path, cache_dir=tmp_path / "c", threads=1) as sess:
        got = sess.run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_run(path, {"x": x})[0], rtol=1e-5, atol=1e-4)


def test_a_long_chain_keeps_its_order():
    nodes = [helper.make_node("Sigmoid", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(400)]
    graph, _ = import_onnx(make_model(nodes, [("t0", [1, 8])], [("t400", None)]))
    assert names(graph) == [f"n{i}" for i in range(400)]
