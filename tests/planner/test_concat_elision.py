"""Concat elision: producers write straight into their slice of the output, when that is safe."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import flexnnd
from flexnnd.graph.elision import elidable_concats
from tests.conftest import make_model, save


def branches(axis, shape, reuse_input=False):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ra"),
        helper.make_node("Sigmoid", ["x"], ["b"], name="sb"),
        helper.make_node("Concat", ["a", "x" if reuse_input else "b", "a2"], ["c"], axis=axis, name="cat"),
        helper.make_node("Relu", ["c"], ["y"], name="out"),
    ]
    nodes.insert(2, helper.make_node("HardSwish", ["x"], ["a2"], name="hs"))
    return make_model(nodes, [("x", shape)], [("y", None)])


@pytest.mark.parametrize(
    ("axis", "shape", "reuse_input", "elided"),
    [
        (1, [1, 3, 5, 7], False, True),  # channels of one image: contiguous slices
        (-3, [1, 3, 5, 7], False, True),
        (2, [1, 3, 5, 7], False, False),  # rows: each slice is strided
        (1, [1, 3, 5, 7], True, False),  # a graph input has its own memory
        (0, [2, 3, 4, 4], False, True),
    ],
)
def test_concat_elision(tmp_path, axis, shape, reuse_input, elided):
    path = save(branches(axis, shape, reuse_input), tmp_path / "m.onnx")
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    with flexnnd.Session(path, cache_dir=tmp_path / "c") as sess:
        assert ("cat" in elidable_concats(sess.package.graph)) == elided
        assert ("cat" not in [s.node for s in sess.plan.steps]) == elided
        got = sess.run({"x": x})["y"]
    parts = [np.maximum(x, 0), x if reuse_input else 1 / (1 + np.exp(-x)), x * np.clip(x / 6 + 0.5, 0, 1)]
    np.testing.assert_allclose(got, np.maximum(np.concatenate(parts, axis=axis), 0), rtol=1e-6, atol=1e-6)
