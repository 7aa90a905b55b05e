"""Equal/Less/LessOrEqual/Greater/GreaterOrEqual against numpy and onnxruntime, on every dtype."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.errors import DtypeRefused
from flexnnd.ops.compare import Equal, Greater, GreaterOrEqual, Less, LessOrEqual
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

OPS = [Equal, Less, LessOrEqual, Greater, GreaterOrEqual]
SHAPES = [((2, 3, 4), (3, 1)), ((7,), ()), ((1, 2, 1, 3, 1), (2, 1, 5, 1, 1)), ((5, 1), (5, 1))]


def operands(dtype, shape_a, shape_b, seed=0):
    """Small value ranges, so that equal pairs occur; NaNs in floats."""
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.integers(0, 2, shape_a).astype(bool), rng.integers(0, 2, shape_b).astype(bool)
    a = rng.integers(0 if dtype.startswith("u") else -3, 4, shape_a).astype(dtype)
    b = rng.integers(0 if dtype.startswith("u") else -3, 4, shape_b).astype(dtype)
    if dtype == "float32" and a.size > 2:
        a.reshape(-1)[1] = np.nan
    return a, b


@pytest.mark.parametrize("cls", OPS, ids=lambda c: c.op_type)
@pytest.mark.parametrize("dtype", ["float32", "int64", "int32", "int16", "int8", "uint16", "uint8", "bool"])
def test_compare_matches_reference_and_onnxruntime(cls, dtype):
    if dtype == "bool" and cls is not Equal:
        with pytest.raises(DtypeRefused, match="not bool"):
            cls().output_dtypes(["bool", "bool"])
        return
    for shape_a, shape_b in SHAPES:
        for a_shape, b_shape in ((shape_a, shape_b), (shape_b, shape_a)):
            a, b = operands(dtype, a_shape, b_shape)
            kernel, (y,) = run_in_arena(cls(), [a, b])
            kernel()
            want = cls().reference([a, b])[0]
            assert y.dtype == want.dtype == np.bool_
            np.testing.assert_array_equal(y, want)
    a, b = operands(dtype, (2, 3, 4), (3, 1), seed=1)
    np.testing.assert_array_equal(cls().reference([a, b])[0], ort_run(cls.op_type, [a, b]))


def test_refusals_and_slicing():
    with pytest.raises(DtypeRefused, match=r"different element types \['float32', 'int64'\]"):
        Less().output_dtypes(["float32", "int64"])
    assert Equal().output_dtypes(["int64", "int64"]) == ["bool"]
    assert Greater().slice_axes([(2, 3), (3,)], [(2, 3)]) == ()


@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_compare_allocates_nothing_per_call(dtype):
    a, b = operands(dtype, (2, 24, 29, 31), (24, 1, 1))
    kernel, _ = run_in_arena(Less(), [a, b])
    assert_no_numpy_allocations(kernel)


def test_mask_model_matches_onnxruntime(tmp_path):
    """An attention-style mask: positions compared with a length, then combined, end to end."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.conftest import assert_model_matches_ort

    nodes = [
        helper.make_node("Less", ["pos", "length"], ["valid"]),
        helper.make_node("GreaterOrEqual", ["pos", "start"], ["late"]),
        helper.make_node("And", ["valid", "late"], ["both"]),
        helper.make_node("Equal", ["both", "valid"], ["same"]),
        helper.make_node("Not", ["same"], ["y"]),
        helper.make_node("Greater", ["x", "zero"], ["positive"]),
        helper.make_node("LessOrEqual", ["x", "one"], ["small"]),
        helper.make_node("Xor", ["positive", "small"], ["z"]),
    ]
    consts = {
        "length": np.array([[5], [9]], np.int64),
        "start": np.array(2, np.int64),
        "zero": np.array(0.0, np.float32),
        "one": np.array([1.0], np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "mask",
        [
            helper.make_tensor_value_info("pos", TensorProto.INT64, [1, 12]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 12]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.BOOL, [2, 12]),
            helper.make_tensor_value_info("z", TensorProto.BOOL, [2, 12]),
        ],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    feeds = {
        "pos": np.arange(12, dtype=np.int64).reshape(1, 12),
        "x": np.random.default_rng(12).standard_normal((2, 12)).astype(np.float32) * 2,
    }
    assert_model_matches_ort(model, feeds, tmp_path)
