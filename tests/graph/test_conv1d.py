"""1-D convolutions run as 2-D ones of height 1, with the same answers as ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

import flexnnd
from flexnnd.graph.onnx_import import import_onnx
from tests.conftest import assert_model_matches_ort, make_model


def conv1d_model(opset, **attrs):
    rng = np.random.default_rng(5)
    group = attrs.get("group", 1)
    w1 = rng.standard_normal((16, 8 // group, 5)).astype(np.float32) / 4
    b1 = rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((4, 16, 3)).astype(np.float32) / 4
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="c1", **attrs),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="c2", pads=[1, 1]),
    ]
    return make_model(
        nodes, [("x", [1, 8, 50])], [("y", None)], [("w1", w1), ("b1", b1), ("w2", w2)], opset=opset
    )


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"pads": [2, 2], "strides": [2]},
        {"dilations": [2], "pads": [1, 3]},
        {"group": 2, "auto_pad": "SAME_UPPER"},
    ],
    ids=["plain", "stride", "dilation", "group-same"],
)
def test_conv1d_matches_onnxruntime(opset, attrs, tmp_path):
    model = conv1d_model(opset, **attrs)
    graph, _ = import_onnx(model)
    convs = [n for n in graph.nodes if n.op_type == "Conv"]
    assert len(convs) == 2 and all(len(n.in_shapes[0]) == 4 for n in convs)
    assert len(model.graph.node) == 3  # the caller's model is not rewritten
    x = np.random.default_rng(1).standard_normal((1, 8, 50)).astype(np.float32)
    assert_model_matches_ort(model, {"x": x}, tmp_path)


def test_a_conv1d_with_a_runtime_weight_is_refused_clearly():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="c")]
    model = make_model(nodes, [("x", [1, 2, 9]), ("w", [3, 2, 3])], [("y", None)])
    with pytest.raises(flexnnd.UnsupportedOp, match="weight W must be a constant"):
        import_onnx(model)


def test_a_conv1d_whose_weight_is_a_constant_node_matches_onnxruntime(tmp_path):
    """OpenVINO's exports (silero-vad's) write Conv weights as Constant nodes, not initializers."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 4, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w), name="weight"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", strides=[2], pads=[2, 1]),
    ]
    model = make_model(nodes, [("x", [1, 4, 31])], [("y", None)], opset=16)
    assert_model_matches_ort(model, {"x": rng.standard_normal((1, 4, 31)).astype(np.float32)}, tmp_path)
