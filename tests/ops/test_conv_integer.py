"""ConvInteger: the exact kernel against its reference and ONNX Runtime (equal, not close) for every
type pair and Conv attribute, allocation-free runs, refusals, and a model quantized by
onnxruntime.quantization.quantize_dynamic end to end."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import COST_GEMM
from flexnnd.ops.conv_integer import ConvInteger
from tests.conftest import assert_model_matches_ort
from tests.ops.harness import arena_views, assert_no_numpy_allocations, ort_run

CASES = [
    # x shape, w shape, x type, w type, x zero point, w zero point, attributes
    ((1, 2, 5, 5), (3, 2, 3, 3), "uint8", "uint8", 3, 2, {}),
    (
        (2, 4, 9, 7),
        (6, 2, 3, 3),
        "uint8",
        "int8",
        128,
        0,
        {"pads": [1, 0, 2, 1], "strides": [2, 1], "group": 2},
    ),
    ((1, 3, 8, 8), (4, 3, 3, 3), "int8", "int8", 0, None, {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ((1, 3, 9, 8), (4, 3, 3, 2), "int8", "int8", -5, 3, {"dilations": [2, 3], "pads": [2, 2, 1, 0]}),
    ((1, 3, 8, 8), (4, 3, 1, 1), "int8", "uint8", None, None, {}),
    ((2, 3, 11), (4, 3, 3), "uint8", "uint8", 7, 9, {"pads": [2, 1], "strides": [2]}),  # 1-D
    ((1, 4, 6, 5), (4, 1, 3, 3), "uint8", "uint8", 255, 255, {"group": 4, "auto_pad": "SAME_UPPER"}),
    ((1, 16, 40, 40), (8, 16, 3, 3), "uint8", "int8", 100, 0, {"pads": [1, 1, 1, 1]}),  # several bands
    ((1, 2, 6, 6), (3, 2, 3, 3), "uint8", "int8", None, 5, {"pads": [1, 1, 1, 1]}),  # x's zero point left out
]


def integers(shape, dtype, rng):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def bind_case(x, w, x_zero, w_zero, attrs):
    """The op built as the importer builds it, bound on arena views of the prepared weight."""
    consts = [None, w]
    if x_zero is not None or w_zero is not None:
        consts.append(None)
    if w_zero is not None:
        consts.append(w_zero)
    op, kept = ConvInteger.from_onnx(attrs, consts, "conv", 10)
    assert kept == tuple(range(min(len(consts), 3)))  # w's zero point is absorbed
    shapes = [x.shape, w.shape, None if x_zero is None else x_zero.shape]
    (y_shape,) = op.infer(shapes, [None, w, None])
    assert op.output_dtypes([x.dtype.name, w.dtype.name, None if x_zero is None else x_zero.dtype.name]) == [
        "int32"
    ]
    wp = op.prepare([None, w, None])[1]
    need = op.scratch_bytes(shapes)
    given = [x, wp] + ([x_zero] if x_zero is not None else [])
    views = arena_views(
        [a.shape for a in given] + [y_shape, (need // 4,)], [a.dtype for a in given] + ["int32", "float32"]
    )
    for view, a in zip(views, given, strict=False):
        view[...] = a
    ins = views[: len(given)] + ([None] if x_zero is None else [])
    y = views[len(given)]
    return op, op.bind(ins, [y], views[-1]), y


@pytest.mark.parametrize(("xs", "ws", "xt", "wt", "xz", "wz", "attrs"), CASES)
def test_conv_integer_equals_reference_and_ort(xs, ws, xt, wt, xz, wz, attrs):
    rng = np.random.default_rng(len(xs) + sum(ws))
    x, w = integers(xs, xt, rng), integers(ws, wt, rng)
    x_zero = None if xz is None else np.array(xz, xt)
    w_zero = None if wz is None else np.array(wz, wt)
    op, run, y = bind_case(x, w, x_zero, w_zero, attrs)
    y[...] = -7  # every element is written
    run()
    want = op.reference([x, w, x_zero])[0]
    np.testing.assert_array_equal(y, want)
    consts = [w]
    if x_zero is not None or w_zero is not None:
        consts.append(x_zero if x_zero is not None else np.array(0, xt))
    if w_zero is not None:
        consts.append(w_zero)
    np.testing.assert_array_equal(ort_run("ConvInteger", [x], consts, opset=10, **attrs), want)
    assert_no_numpy_allocations(run)


def test_conv_integer_per_channel_weight_zero_point_matches_reference():
    """The spec allows a zero point per output channel (ONNX Runtime refuses it): against the
    reference, computed independently per channel."""
    rng = np.random.default_rng(5)
    x, w = integers((1, 3, 6, 7), "uint8", rng), integers((4, 3, 3, 3), "uint8", rng)
    x_zero, w_zero = np.array(7, np.uint8), np.array([1, 2, 130, 255], np.uint8)
    op, run, y = bind_case(x, w, x_zero, w_zero, {"pads": [1, 1, 1, 1]})
    run()
    np.testing.assert_array_equal(y, op.reference([x, w, x_zero])[0])
    for c in range(4):  # channel c alone with its scalar zero point
        single, _ = ConvInteger.from_onnx(
            {"pads": [1, 1, 1, 1]}, [None, w[c : c + 1], None, w_zero[c]], "c", 10
        )
        np.testing.assert_array_equal(y[:, c : c + 1], single.reference([x, w[c : c + 1], x_zero])[0])


def test_conv_integer_weight_is_stored_compactly():
    w = np.array([[[[0, 255]]], [[[128, 7]]]], np.uint8)
    op, _ = ConvInteger.from_onnx({}, [None, w, None, np.array(128, np.uint8)], "c", 10)
    prepared = op.prepare([None, w, None])[1]
    assert prepared.dtype == np.int8 and prepared.tolist() == [[-128, 127], [0, -121]]
    op, _ = ConvInteger.from_onnx({}, [None, w, None, np.array(0, np.uint8)], "c", 10)
    assert op.prepare([None, w, None])[1].dtype == np.int16  # 255 does not fit an int8


def test_conv_integer_declares_whole_runs():
    op, _ = ConvInteger.from_onnx({}, [None, np.zeros((4, 3, 3, 3), np.uint8)], "c", 10)
    shapes = [(1, 3, 8, 8), (4, 3, 3, 3)]
    assert op.slice_axes(shapes, [(1, 4, 6, 6)]) == ()
    assert op.cost_kind(shapes) == COST_GEMM
    assert op.flops(shapes, [(1, 4, 6, 6)]) == 2 * 4 * 36 * 27


def test_conv_integer_refuses_clearly():
    w = np.zeros((4, 3, 3, 3), np.uint8)
    with pytest.raises(UnsupportedOp, match="weight W"):
        ConvInteger.from_onnx({}, [None, None], "c", 10)
    with pytest.raises(UnsupportedOp, match="w_zero_point"):
        ConvInteger.from_onnx({}, [None, w, None, None], "c", 10)
    with pytest.raises(UnsupportedOp, match="3-D convolution"):
        ConvInteger.from_onnx({}, [None, np.zeros((4, 3, 3, 3, 3), np.uint8)], "c", 10)
    with pytest.raises(UnsupportedOp, match="auto_pad"):
        ConvInteger.from_onnx({"auto_pad": "BOGUS"}, [None, w], "c", 10)
    with pytest.raises(ShapeError, match="neither a scalar nor one per output channel"):
        ConvInteger.from_onnx({}, [None, w, None, np.zeros(3, np.uint8)], "c", 10)
    op, _ = ConvInteger.from_onnx({}, [None, w], "c", 10)
    with pytest.raises(DtypeRefused, match="x is float32"):
        op.output_dtypes(["float32", "uint8"])
    with pytest.raises(ShapeError, match="x_zero_point must be a scalar"):
        op.infer([(1, 3, 8, 8), w.shape, (3,)], [None, w, None])
    with pytest.raises(ShapeError, match="disagree with group"):
        op.infer([(1, 4, 8, 8), w.shape], [None, w])


def dynamically_quantized_cnn(tmp_path):
    """A float CNN quantized by onnxruntime.quantization.quantize_dynamic: DynamicQuantizeLinear ->
    ConvInteger -> Cast -> Mul by the scales (-> Add the bias) per conv."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(11)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = (rng.standard_normal((6, 8, 3, 3)) * 0.3).astype(np.float32)
    w3 = (rng.standard_normal((4, 6, 1, 1)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1], group=2),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("b1", b1), ("w2", w2[:, :4]), ("w3", w3))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, str(tmp_path / "float.onnx"))
    quantize_dynamic(
        str(tmp_path / "float.onnx"),
        str(tmp_path / "quant.onnx"),
        op_types_to_quantize=["Conv"],
        weight_type=QuantType.QUInt8,
    )
    return onnx.load(str(tmp_path / "quant.onnx"))


def test_dynamically_quantized_cnn_matches_ort(tmp_path):
    model = dynamically_quantized_cnn(tmp_path)
    assert [n.op_type for n in model.graph.node].count("ConvInteger") == 3
    x = np.random.default_rng(12).standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert_model_matches_ort(model, {"x": x}, tmp_path)
