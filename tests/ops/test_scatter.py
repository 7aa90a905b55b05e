"""ScatterND, ScatterElements (and Scatter), OneHot: kernels against their references on awkward
shapes, every reduction and several element types; references against onnxruntime; out-of-range
indices failing the request; models end to end."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd.errors import DtypeRefused, InputValueError, ShapeError, UnsupportedOp
from flexnnd.ops.base import Part, op_class
from flexnnd.ops.scatter import OneHot, Scatter, ScatterElements, ScatterND
from tests.conftest import assert_model_matches_ort
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

REDUCTIONS = ["none", "add", "mul", "max", "min"]


def values(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if dtype == "float32":
        return rng.standard_normal(shape).astype(np.float32)
    return rng.integers(-50 if np.dtype(dtype).kind == "i" else 0, 50, shape).astype(dtype)


def distinct_tuples(dims, count, seed):
    """`count` distinct index tuples into `dims`, some written from the end (negative)."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(int(np.prod(dims)), count, replace=False)
    tuples = np.stack(np.unravel_index(flat, dims), axis=-1).astype(np.int64)
    return np.where(rng.random(tuples.shape) < 0.3, tuples - np.array(dims), tuples)


# ---- ScatterND ----------------------------------------------------------------------------------

ND_CASES = [  # data shape, indices shape (the last dimension is k)
    ((8,), (4, 1)),
    ((4, 3), (2, 2)),
    ((4, 5, 3), (2, 1)),
    ((2, 1, 4, 3), (3, 3)),
    ((3, 2, 2, 1, 5), (2, 2, 2)),
]


@pytest.mark.parametrize("data_shape,index_shape", ND_CASES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_scatter_nd_matches_reference(data_shape, index_shape, reduction):
    k = index_shape[-1]
    count = int(np.prod(index_shape[:-1]))
    idx = distinct_tuples(data_shape[:k], count, seed=1).reshape(index_shape)
    data = values(data_shape, "float32", 2)
    updates = values(index_shape[:-1] + data_shape[k:], "float32", 3)
    op = ScatterND(reduction=reduction)
    kernel, (y,) = run_in_arena(op, [data, idx, updates])
    kernel()
    np.testing.assert_array_equal(y, op.reference([data, idx, updates])[0])


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8", "bool"])
def test_scatter_nd_other_element_types(dtype):
    data, updates = values((5, 4), dtype, 4), values((3, 4), dtype, 5)
    idx = np.array([[4], [-5], [2]], np.int64)
    for reduction in ("none",) if dtype == "bool" else ("none", "add", "max"):
        op = ScatterND(reduction=reduction)
        assert op.output_dtypes([dtype, "int64", dtype]) == [dtype]
        kernel, (y,) = run_in_arena(op, [data, idx, updates])
        kernel()
        np.testing.assert_array_equal(y, op.reference([data, idx, updates])[0])


def test_scatter_nd_reference_matches_onnxruntime():
    data = values((4, 5, 3), "float32", 6)
    idx = np.array([[[0, 1], [3, -1]], [[0, 1], [2, 4]]], np.int64)  # a duplicate: reductions combine both
    updates = values((2, 2, 3), "float32", 7)
    for reduction in REDUCTIONS[1:]:
        np.testing.assert_allclose(
            ScatterND(reduction=reduction).reference([data, idx, updates])[0],
            ort_run("ScatterND", [data, idx, updates], reduction=reduction, opset=18),
            rtol=1e-6,
        )
    unique = idx[:, 1:]
    np.testing.assert_array_equal(
        ScatterND().reference([data, unique, updates[:, 1:]])[0],
        ort_run("ScatterND", [data, unique, updates[:, 1:]], opset=13),
    )


def test_scatter_nd_out_of_range_writes_nothing():
    data = values((4, 3), "float32")
    kernel, (y,) = run_in_arena(
        ScatterND(), [data, np.array([[1, 2], [4, 0]], np.int64), values((2,), "float32")]
    )
    with pytest.raises(InputValueError, match="index 4 is out of range for data dimensions of size 4"):
        kernel()
    np.testing.assert_array_equal(y, data)  # the copy of data, no update
    with pytest.raises(ShapeError, match="updates"):
        ScatterND().infer([(4, 3), (2, 1), (2, 2)], [None] * 3)


# ---- ScatterElements ----------------------------------------------------------------------------

ELEMENTS_CASES = [  # data shape, indices shape, axis
    ((6,), (4,), 0),
    ((3, 4), (3, 2), 1),
    ((3, 4), (2, 4), 0),
    ((2, 1, 5, 3), (2, 1, 3, 2), -2),
    ((2, 3, 1, 2, 4), (1, 3, 1, 2, 3), 4),
]


@pytest.mark.parametrize("data_shape,index_shape,axis", ELEMENTS_CASES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_scatter_elements_matches_reference(data_shape, index_shape, axis, reduction):
    n = data_shape[axis]
    idx = np.random.default_rng(8).integers(-n, n, index_shape).astype(np.int32)
    data, updates = values(data_shape, "float32", 9), values(index_shape, "float32", 10)
    op = ScatterElements(axis=axis, reduction=reduction)
    kernel, (y,) = run_in_arena(op, [data, idx, updates])
    kernel()
    np.testing.assert_allclose(y, op.reference([data, idx, updates])[0], rtol=1e-6)


def test_scatter_elements_reference_matches_onnxruntime():
    data = values((3, 4, 5), "float32", 11)
    for axis, shape in ((0, (2, 4, 5)), (-1, (3, 2, 4)), (1, (3, 4, 2))):
        n = data.shape[axis]
        idx = np.random.default_rng(axis + 12).integers(-n, n, shape).astype(np.int64)
        updates = values(shape, "float32", 13)
        for reduction in REDUCTIONS:
            np.testing.assert_allclose(
                ScatterElements(axis=axis, reduction=reduction).reference([data, idx, updates])[0],
                ort_run("ScatterElements", [data, idx, updates], axis=axis, reduction=reduction, opset=18),
                rtol=1e-6,
            )


def test_scatter_elements_integers_and_old_scatter():
    data, updates = values((4, 3), "int64", 14), values((2, 3), "int64", 15)
    idx = np.array([[3, -1, 0], [1, 2, -4]], np.int64)
    for op in (ScatterElements(reduction="add"), Scatter(axis=0)):
        kernel, (y,) = run_in_arena(op, [data, idx, updates])
        kernel()
        np.testing.assert_array_equal(y, op.reference([data, idx, updates])[0])
    assert op_class("Scatter") is Scatter and Scatter.onnx_attribute_names() == {"axis"}
    np.testing.assert_array_equal(
        Scatter(axis=0).reference([data, idx, updates])[0],
        ort_run("Scatter", [data, idx, updates], axis=0, opset=10),
    )


def test_scatter_elements_out_of_range_and_refusals():
    data = values((3, 4), "float32")
    idx = np.array([[0, 4]], np.int64)
    kernel, _ = run_in_arena(ScatterElements(axis=1), [data, idx, values((1, 2), "float32")])
    with pytest.raises(InputValueError, match="index 4 is out of range for axis 1 of size 4"):
        kernel()
    with pytest.raises(ShapeError, match="reach outside axis 1"):
        ScatterElements(axis=1).infer([(3, 4), (1, 2), (1, 2)], [None, idx, None])
    with pytest.raises(UnsupportedOp, match="reduction 'sum'"):
        ScatterElements.from_onnx({"reduction": "sum"}, [None] * 3, "s", 18)
    with pytest.raises(DtypeRefused, match="reduction 'add' on bool"):
        ScatterND(reduction="add").output_dtypes(["bool", "int64", "bool"])
    with pytest.raises(DtypeRefused, match="data is float32 and updates int64"):
        ScatterND().output_dtypes(["float32", "int64", "int64"])
    with pytest.raises(ValueError, match="not sliced"):
        x = np.zeros((3,), np.float32)
        ScatterND().bind([x, np.zeros((1, 1), np.int64), x[:1]], [x.copy()], None, Part("rows", 0, 1))


# ---- OneHot -------------------------------------------------------------------------------------


def one_hot(axis, depth, values_, indices):
    op, kept = OneHot.from_onnx({"axis": axis}, [None, np.asarray(depth), np.asarray(values_)], "oh", 11)
    assert kept == (0,)
    assert op.output_dtypes([str(indices.dtype)]) == [op.values_dtype]
    return op


@pytest.mark.parametrize("axis", [-1, 0, 1, -3])
@pytest.mark.parametrize("index_type", ["int64", "int32", "float32"])
def test_one_hot_matches_reference(axis, index_type):
    indices = np.random.default_rng(16).integers(-7, 7, (2, 3)).astype(index_type)  # some outside [-5, 5)
    op = one_hot(axis, np.array([5], np.int64), np.array([0.5, 3.0], np.float32), indices)
    kernel, (y,) = run_in_arena(op, [indices])
    kernel()
    want = op.reference([indices])[0]
    assert y.shape == want.shape and y.dtype == np.float32
    np.testing.assert_array_equal(y, want)


def test_one_hot_reference_matches_onnxruntime_and_integer_values():
    indices = np.array([[1, -1, 9], [0, 4, -6]], np.int64)
    depth, pair = np.array([5], np.int64), np.array([0.0, 1.0], np.float32)
    op = one_hot(1, depth, pair, indices)
    np.testing.assert_array_equal(
        op.reference([indices])[0], ort_run("OneHot", [indices], consts=(depth, pair), axis=1, opset=11)
    )
    op = one_hot(-1, np.array(4.0, np.float32), np.array([-1, 7], np.int64), indices)
    kernel, (y,) = run_in_arena(op, [indices])
    kernel()
    assert y.dtype == np.int64 and y.shape == (2, 3, 4)
    np.testing.assert_array_equal(y, op.reference([indices])[0])


def test_one_hot_refusals():
    with pytest.raises(UnsupportedOp, match="depth and values must be constants"):
        OneHot.from_onnx({}, [None, None, np.array([0, 1])], "oh", 11)
    with pytest.raises(ShapeError, match="depth 0"):
        one_hot(-1, np.array(0), np.array([0, 1], np.float32), np.zeros(2, np.int64)).infer([(2,)], [None])
    with pytest.raises(DtypeRefused, match="bool"):
        one_hot(-1, np.array(3), np.array([0, 1], np.float32), np.zeros(2, np.int64)).output_dtypes(["bool"])


# ---- all ----------------------------------------------------------------------------------------


def test_kernels_allocate_nothing():
    data = values((8, 40, 6), "float32")
    idx_nd = distinct_tuples((8, 40), 30, seed=2).reshape(30, 2)
    idx_el = np.random.default_rng(3).integers(0, 40, (8, 10, 6)).astype(np.int64)
    cases = [
        (ScatterND(), [data, idx_nd, values((30, 6), "float32")]),
        (ScatterND(reduction="add"), [data, idx_nd, values((30, 6), "float32")]),
        (ScatterElements(axis=1, reduction="max"), [data, idx_el, values((8, 10, 6), "float32")]),
        (one_hot(1, np.array(9), np.array([0, 1], np.float32), idx_el), [idx_el]),
    ]
    for op, ins in cases:
        kernel, _ = run_in_arena(op, ins)
        assert_no_numpy_allocations(kernel)
        assert op.slice_axes([x.shape for x in ins], []) == ()


def test_cache_update_and_one_hot_model_matches_onnxruntime(tmp_path):
    """A cache written at positions fed at run time (ScatterND), scores gathered back through
    ScatterElements, and token ids turned into one-hot rows that a MatMul projects."""
    rng = np.random.default_rng(17)
    weight = rng.standard_normal((10, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Relu", ["cache"], ["cache_r"]),
        helper.make_node("ScatterND", ["cache_r", "positions", "new"], ["cache_out"], reduction="add"),
        helper.make_node("ScatterElements", ["cache_out", "cols", "marks"], ["marked"], axis=2),
        helper.make_node("OneHot", ["ids", "depth", "onoff"], ["hot"], axis=-1),
        helper.make_node("MatMul", ["hot", "weight"], ["projected"]),
    ]
    graph = helper.make_graph(
        nodes,
        "scatter",
        [
            helper.make_tensor_value_info("cache", TensorProto.FLOAT, [1, 6, 4]),
            helper.make_tensor_value_info("positions", TensorProto.INT64, [1, 2, 2]),
            helper.make_tensor_value_info("new", TensorProto.FLOAT, [1, 2, 4]),
            helper.make_tensor_value_info("cols", TensorProto.INT64, [1, 6, 1]),
            helper.make_tensor_value_info("marks", TensorProto.FLOAT, [1, 6, 1]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [3]),
        ],
        [
            helper.make_tensor_value_info("marked", TensorProto.FLOAT, [1, 6, 4]),
            helper.make_tensor_value_info("projected", TensorProto.FLOAT, [3, 4]),
        ],
        [
            numpy_helper.from_array(np.array([10], np.int64), "depth"),
            numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "onoff"),
            numpy_helper.from_array(weight, "weight"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    feeds = {
        "cache": rng.standard_normal((1, 6, 4)).astype(np.float32),
        "positions": np.array([[[0, 5], [0, -2]]], np.int64),
        "new": rng.standard_normal((1, 2, 4)).astype(np.float32),
        "cols": rng.integers(-4, 4, (1, 6, 1)).astype(np.int64),
        "marks": rng.standard_normal((1, 6, 1)).astype(np.float32),
        "ids": np.array([3, 9, -1], np.int64),
    }
    assert_model_matches_ort(model, feeds, tmp_path)
