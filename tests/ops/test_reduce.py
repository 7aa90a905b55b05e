"""The reductions and ArgMax/ArgMin: kernels against their references on awkward shapes and every
dtype they take, references against onnxruntime, both forms of axes, refusals, whole models."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import flexnnd
from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import Part, op_class
from flexnnd.ops.reduce import (
    ArgMax,
    ArgMin,
    ReduceL1,
    ReduceL2,
    ReduceLogSum,
    ReduceLogSumExp,
    ReduceMax,
    ReduceMean,
    ReduceMin,
    ReduceProd,
    ReduceSum,
    ReduceSumSquare,
    reduced_blocks,
)
from tests.conftest import assert_model_matches_ort, make_model, save
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

FLOAT_ONLY = [ReduceMean, ReduceL1, ReduceL2, ReduceSumSquare, ReduceLogSum, ReduceLogSumExp]
WITH_INTS = [ReduceSum, ReduceMax, ReduceMin, ReduceProd]
ALL = WITH_INTS + FLOAT_ONLY

# (shape, axes): every block pattern the kernel sees, size-1 axes, negative and unsorted axes.
CASES = [
    ((), ()),
    ((7,), ()),
    ((7,), (0,)),
    ((1,), (-1,)),
    ((3, 1), (1,)),
    ((5, 13), (-1,)),
    ((5, 13), (0,)),
    ((2, 3, 4), (0, 2)),
    ((2, 13, 5, 7), (2, 3)),
    ((2, 13, 5, 7), (1,)),
    ((2, 13, 5, 7), (-3, -1)),
    ((2, 13, 5, 7), (3, 0, 2)),
    ((3, 1, 4, 1, 5), (0, 2, 4)),
    ((2, 3, 1, 5, 6), (1, 3)),
    ((2, 3, 4, 5, 6), (0, 1, 2, 3, 4)),
]


def values(cls, shape, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.bool_:
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind in "iu":
        lo = 0 if np.dtype(dtype).kind == "u" else -3
        return rng.integers(lo, 4, shape).astype(dtype)  # small: products stay exact in any dtype
    if cls in (ReduceLogSum, ReduceProd):  # positive sums to take the log of; products near 1
        return rng.uniform(0.6, 1.5, shape).astype(np.float32)
    return (rng.standard_normal(shape) * 3).astype(np.float32)


def check_kernel(op, x):
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    want = op.reference([x])[0]
    assert y.shape == want.shape and y.dtype == want.dtype
    if y.dtype == np.float32:
        np.testing.assert_allclose(y, want, rtol=2e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.op_type)
@pytest.mark.parametrize(("shape", "axes"), CASES, ids=str)
def test_float_kernels_match_reference(cls, shape, axes):
    x = values(cls, shape)
    for keepdims in (0, 1):
        check_kernel(cls(axes=axes, keepdims=keepdims), x)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.op_type)
def test_empty_axes_reduce_all_or_nothing(cls):
    x = values(cls, (3, 4, 5))
    check_kernel(cls(axes=(), keepdims=0), x)
    assert cls(axes=(), keepdims=0).infer([x.shape], [None]) == [()]
    noop = cls(axes=(), noop_with_empty_axes=1)
    assert noop.infer([x.shape], [None]) == [x.shape]
    check_kernel(noop, x)  # no reduction, but the map still applies: SumSquare squares


@pytest.mark.parametrize("cls", WITH_INTS, ids=lambda c: c.op_type)
@pytest.mark.parametrize("dtype", ["int32", "int64"])
@pytest.mark.parametrize(
    ("shape", "axes"), [((7,), ()), ((2, 13, 5, 7), (2, 3)), ((2, 3, 4), (0, 2)), ((5, 6), (0,))]
)
def test_integer_kernels_match_reference(cls, dtype, shape, axes):
    check_kernel(cls(axes=axes, keepdims=1), values(cls, shape, dtype))


@pytest.mark.parametrize("cls", [ReduceMax, ReduceMin], ids=lambda c: c.op_type)
@pytest.mark.parametrize("dtype", ["uint8", "bool"])
def test_max_min_take_bytes_and_bools(cls, dtype):
    for shape, axes in [((3, 1, 4, 5), (2, 3)), ((2, 3, 4), (0, 2)), ((6,), ())]:
        check_kernel(cls(axes=axes, keepdims=0), values(cls, shape, dtype))


def test_integer_overflow_wraps_as_numpy():
    """ONNX does not say; numpy wraps, ONNX Runtime saturates (2**31 - 1 here). flexnn wraps."""
    x = np.full((2, 3), 2**30, np.int32)
    for op in (ReduceSum(axes=(1,)), ReduceProd(axes=(1,))):
        kernel, (y,) = run_in_arena(op, [x])
        kernel()
        np.testing.assert_array_equal(y, op.reference([x])[0])
        assert y[0, 0] == (-(2**30) if isinstance(op, ReduceSum) else 0)


def test_max_min_order_signed_zeros_and_infinities():
    x = np.array([[0.0, -0.0, 0.0], [-np.inf, -1e30, -np.inf], [np.inf, 5.0, -np.inf]], np.float32)
    for cls, want in [(ReduceMax, [0.0, -1e30, np.inf]), (ReduceMin, [-0.0, -np.inf, -np.inf])]:
        kernel, (y,) = run_in_arena(cls(axes=(1,), keepdims=0), [x])
        kernel()
        np.testing.assert_array_equal(y, np.array(want, np.float32))
        assert np.signbit(y[0]) == (cls is ReduceMin)


def test_log_sum_exp_neither_overflows_nor_loses_infinities():
    x = np.array([[100.0, 100.0, 99.0], [-np.inf, -np.inf, -np.inf], [np.inf, 0.0, 1.0]], np.float32)
    op = ReduceLogSumExp(axes=(1,), keepdims=0)
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    want = np.array([100.0 + np.log(2.0 + np.exp(-1.0)), -np.inf, np.inf], np.float32)
    np.testing.assert_allclose(y, want, rtol=1e-6)
    np.testing.assert_allclose(op.reference([x])[0], want, rtol=1e-6)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.op_type)
def test_reference_matches_onnxruntime(cls):
    x = values(cls, (2, 5, 3, 4), seed=1)
    opset = 13 if cls is ReduceSum else 18
    for axes, keepdims in [((1,), 1), ((-1, 1), 0), ((0, 2, 3), 1)]:
        want = ort_run(cls.op_type, [x], consts=[np.array(axes, np.int64)], opset=opset, keepdims=keepdims)
        got = cls(axes=axes, keepdims=keepdims).reference([x])[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    noop = ort_run(cls.op_type, [x], consts=[np.zeros(0, np.int64)], opset=opset, noop_with_empty_axes=1)
    np.testing.assert_allclose(cls(noop_with_empty_axes=1).reference([x])[0], noop, rtol=1e-5, atol=1e-6)
    # The attribute form of older opsets.
    want = ort_run(cls.op_type, [x], opset=11, axes=[2], keepdims=0)
    np.testing.assert_allclose(cls(axes=(2,), keepdims=0).reference([x])[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", WITH_INTS, ids=lambda c: c.op_type)
def test_integer_reference_matches_onnxruntime(cls):
    x = values(cls, (2, 5, 3), "int64", seed=2)
    opset = 13 if cls is ReduceSum else 18
    want = ort_run(cls.op_type, [x], consts=[np.array([0, 2])], opset=opset, keepdims=0)
    np.testing.assert_array_equal(cls(axes=(0, 2), keepdims=0).reference([x])[0], want)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.op_type)
def test_kernel_allocates_nothing(cls):
    kernel, _ = run_in_arena(cls(axes=(1, 3)), [values(cls, (2, 13, 5, 7))])
    assert_no_numpy_allocations(kernel)
    kernel, _ = run_in_arena(cls(axes=(2, 3)), [values(cls, (1, 24, 7, 7))])
    assert_no_numpy_allocations(kernel)


def test_axes_from_attribute_or_constant_input():
    op, kept = ReduceMean.from_onnx({"axes": [2, 3], "keepdims": 0}, [None], "n", 13)
    assert (op.axes, op.keepdims, kept) == ((2, 3), 0, (0,))
    op, kept = ReduceMean.from_onnx({}, [None, np.array([-1], np.int64)], "n", 18)
    assert (op.axes, kept) == ((-1,), (0,))
    op, _ = ReduceSum.from_onnx({"noop_with_empty_axes": 1}, [None, np.zeros(0, np.int64)], "n", 13)
    assert (op.axes, op.noop_with_empty_axes) == ((), 1)
    with pytest.raises(UnsupportedOp, match="both as attribute and as input 1"):
        ReduceMean.from_onnx({"axes": [1]}, [None, np.array([1])], "n", 18)
    with pytest.raises(UnsupportedOp, match="keepdims 2"):
        ReduceMean.from_onnx({"keepdims": 2}, [None], "n", 13)


def test_refusals_name_what_is_wrong():
    with pytest.raises(ShapeError, match=r"axis 4 is out of range for shape \(2, 3, 4\)"):
        ReduceSum(axes=(4,)).infer([(2, 3, 4)], [None])
    with pytest.raises(ShapeError, match=r"repeat an axis"):
        ReduceSum(axes=(1, -2)).infer([(2, 3, 4)], [None])
    with pytest.raises(DtypeRefused, match="input 0 is int32; ReduceMean runs on float32"):
        ReduceMean().output_dtypes(["int32"])
    with pytest.raises(DtypeRefused, match="input 0 is uint8; ReduceSum runs on float32, int32, int64"):
        ReduceSum().output_dtypes(["uint8"])
    assert ReduceMax().output_dtypes(["bool"]) == ["bool"]
    with pytest.raises(
        DtypeRefused, match="input 0 is int8; ReduceMin runs on float32, int32, int64, uint8, bool"
    ):
        ReduceMin().output_dtypes(["int8"])
    with pytest.raises(UnsupportedOp, match="alternate more than 6 times"):
        ReduceSum(axes=(0, 2, 4, 6)).infer([(2,) * 7], [None])
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="not sliced"):
        ReduceSum(axes=(1,)).bind([x], [np.zeros((2, 1), np.float32)], None, Part("rows", 0, 1))
    with pytest.raises(ShapeError, match=r"expected output \(2, 1\) float32"):
        ReduceSum(axes=(1,)).bind([x], [np.zeros((2,), np.float32)], None)


def test_blocks_merge_kept_and_reduced_runs():
    assert reduced_blocks("R", (1, 1280, 7, 7), (2, 3)) == (1, 1, 1, 1, 1280, 49)
    assert reduced_blocks("R", (1, 197, 768), (2,)) == (1, 1, 1, 1, 197, 768)
    assert reduced_blocks("R", (2, 13, 5, 7), (1,)) == (1, 1, 2, 13, 35, 1)
    assert reduced_blocks("R", (2, 3, 4), (0, 2)) == (1, 1, 1, 2, 3, 4)
    assert reduced_blocks("R", (2, 3, 4, 5, 6, 7), (1, 3, 5)) == (2, 3, 4, 5, 6, 7)


@pytest.mark.parametrize("cls", [*ALL, ArgMax, ArgMin], ids=lambda c: c.op_type)
def test_registered_never_sliced_priced_by_bytes(cls):
    assert op_class(cls.op_type) is cls
    op = cls()
    assert op.slice_axes([(2, 3)], op.infer([(2, 3)], [None])) == ()
    assert op.cost_kind([(2, 3)]) == "memory"
    scratch = op.scratch_bytes([(2, 3)])
    assert scratch == (4 if cls is ReduceLogSumExp else 0)
    assert op.flops([(2, 3)], op.infer([(2, 3)], [None])) == 6  # the input's elements, not the output's


# ---- ArgMax / ArgMin ----------------------------------------------------------------------------

ARG_CASES = [
    ((7,), 0),
    ((1,), 0),
    ((3, 1), 1),
    ((5, 13), -1),
    ((5, 13), 0),
    ((2, 13, 5, 7), 1),
    ((3, 1, 4, 1, 5), -3),
]


@pytest.mark.parametrize("cls", [ArgMax, ArgMin], ids=lambda c: c.op_type)
@pytest.mark.parametrize("dtype", ["float32", "int32", "int64"])
@pytest.mark.parametrize(("shape", "axis"), ARG_CASES, ids=str)
def test_arg_kernels_match_reference(cls, dtype, shape, axis):
    x = np.random.default_rng(3).integers(-2, 3, shape).astype(dtype)  # many ties
    for keepdims in (0, 1):
        for last in (0, 1):
            op = cls(axis=axis, keepdims=keepdims, select_last_index=last)
            kernel, (y,) = run_in_arena(op, [x])
            kernel()
            want = op.reference([x])[0]
            assert y.dtype == np.int64 and y.shape == want.shape
            np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("cls", [ArgMax, ArgMin], ids=lambda c: c.op_type)
def test_arg_reference_matches_onnxruntime(cls):
    rng = np.random.default_rng(4)
    for x in (rng.integers(-2, 3, (3, 4, 5)).astype(np.float32), rng.integers(-2, 3, (3, 4, 5))):
        for axis, keepdims, last in [(0, 1, 0), (-1, 0, 1), (1, 1, 1)]:
            op = cls(axis=axis, keepdims=keepdims, select_last_index=last)
            want = ort_run(cls.op_type, [x], opset=13, axis=axis, keepdims=keepdims, select_last_index=last)
            np.testing.assert_array_equal(op.reference([x])[0], want)


def test_arg_kernel_allocates_nothing_and_refuses_clearly():
    kernel, _ = run_in_arena(ArgMax(axis=1), [values(ArgMax, (2, 13, 5, 7))])
    assert_no_numpy_allocations(kernel)
    assert ArgMax().output_dtypes(["int32"]) == ["int64"]
    with pytest.raises(DtypeRefused, match="input 0 is bool; ArgMin runs on float32, int32, int64"):
        ArgMin().output_dtypes(["bool"])
    with pytest.raises(ShapeError, match=r"axis -3 is out of range for shape \(2, 3\)"):
        ArgMax(axis=-3).infer([(2, 3)], [None])
    with pytest.raises(UnsupportedOp, match="select_last_index 2"):
        ArgMax.from_onnx({"select_last_index": 2}, [None], "n", 13)


# ---- whole models -------------------------------------------------------------------------------


def test_pooling_and_layernorm_models_match_onnxruntime(tmp_path):
    """A dynamo-style global average pool (ReduceMean over H, W) and a hand-written LayerNorm
    (ReduceMean over the last axis, twice), both with axes as an input (opset 18)."""
    hw, last = np.array([2, 3], np.int64), np.array([-1], np.int64)
    nodes = [
        helper.make_node("ReduceMean", ["x", "hw"], ["pooled"], keepdims=1),
        helper.make_node("Reshape", ["pooled", "rows"], ["r"]),
        helper.make_node("ReduceMean", ["r", "last"], ["mu"]),
        helper.make_node("Sub", ["r", "mu"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2", "last"], ["var"]),
        helper.make_node("ReduceMax", ["var", "zero"], ["vmax"], keepdims=0),
        helper.make_node("ReduceSum", ["d2", "last"], ["ss"], keepdims=0),
    ]
    model = make_model(
        nodes,
        [("x", [1, 24, 7, 7])],
        [("var", None), ("vmax", None), ("ss", None), ("mu", None)],
        [("hw", hw), ("last", last), ("zero", np.array([0], np.int64)), ("rows", np.array([4, 6], np.int64))],
        opset=18,
    )
    x = np.random.default_rng(5).standard_normal((1, 24, 7, 7)).astype(np.float32)
    assert_model_matches_ort(model, {"x": x}, tmp_path)


def _typed_model(nodes, inputs, outputs, initializers=(), opset=13):
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def test_integer_and_argmax_model_matches_onnxruntime(tmp_path):
    """int64 token ids summed and maxed (attribute axes, opset 11); float logits to int64 classes."""
    nodes = [
        helper.make_node("ReduceSum", ["ids"], ["total"], axes=[1], keepdims=0),
        helper.make_node("ReduceMax", ["ids"], ["top"], axes=[0, 1]),
        helper.make_node("ArgMax", ["logits"], ["cls"], axis=-1, keepdims=0),
        helper.make_node("ArgMin", ["logits"], ["low"], axis=1, select_last_index=1),
    ]
    model = _typed_model(
        nodes,
        [("ids", TensorProto.INT64, [2, 9]), ("logits", TensorProto.FLOAT, [3, 10])],
        [
            ("total", TensorProto.INT64),
            ("top", TensorProto.INT64),
            ("cls", TensorProto.INT64),
            ("low", TensorProto.INT64),
        ],
        opset=12,
    )
    rng = np.random.default_rng(6)
    feeds = {"ids": rng.integers(0, 30000, (2, 9)), "logits": rng.integers(-3, 3, (3, 10)).astype(np.float32)}
    assert_model_matches_ort(model, feeds, tmp_path)


def test_runtime_axes_are_refused_naming_the_input(tmp_path):
    model = _typed_model(
        [helper.make_node("ReduceMean", ["x", "axes"], ["y"])],
        [("x", TensorProto.FLOAT, [2, 3]), ("axes", TensorProto.INT64, [1])],
        [("y", TensorProto.FLOAT)],
        opset=18,
    )
    path = save(model, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedOp, match=r"ReduceMean.*input 1 \('axes'\) must be a constant"):
        flexnnd.Session(path, cache_dir=tmp_path / "cache")


def test_constant_reductions_fold_at_import(tmp_path):
    """A reduction of constants is computed at import with the reference, in the constant's dtype."""
    model = _typed_model(
        [
            helper.make_node("ReduceProd", ["c"], ["p"], axes=[0], keepdims=1),
            helper.make_node("Add", ["x", "p"], ["y"]),
        ],
        [("x", TensorProto.FLOAT, [3])],
        [("y", TensorProto.FLOAT)],
        [("c", np.array([[1.5, 2.0, -1.0], [2.0, 0.5, 3.0]], np.float32))],
    )
    x = np.ones(3, np.float32)
    assert_model_matches_ort(model, {"x": x}, tmp_path)
