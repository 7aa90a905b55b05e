"""Pow with an integer base or an integer exponent: ONNX Runtime's semantics (pow in float64, then
truncated to the base's integer type, INT_MIN where out of range) for every type pair, exponent form
(computed, constant tensor, constant scalar) and broadcast, and an int64 model end to end. (Float
Pow is tested with the unary ops, tests/ops/test_unary.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd.errors import DtypeRefused
from flexnnd.ops.pow import Pow
from tests.conftest import assert_model_matches_ort
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

BASES = np.array([-3, -2, -1, 0, 1, 2, 3, 7, 46341, -46341, 5, 9])
EXPONENTS = {
    "negative": np.array([-1, -1, -1, -1, -1, -2, -1, -3, -1, -1, -1, 0]),  # 2**-1 is 0, 0**-1 INT_MIN
    "overflowing": np.array([2, 3, 31, 0, 62, 31, 21, 11, 2, 2, 27, 20]),  # past int32: INT_MIN
    "fractional": np.array([0.5, 2.7, -2.7, 0.5, 1.5, 3.3, -1.0, 4.1, 0.5, 1.5, 0.25, 2.5]),
}


def pair(base_dtype, exp_dtype, kind):
    e = EXPONENTS[kind]
    if np.dtype(exp_dtype).kind != "f":
        e = np.trunc(e)
    return BASES.astype(base_dtype), e.astype(exp_dtype)


@pytest.mark.parametrize("kind", sorted(EXPONENTS))
@pytest.mark.parametrize(
    ("base_dtype", "exp_dtype"),
    [
        ("int32", "int32"),
        ("int32", "int64"),
        ("int64", "int64"),
        ("int64", "int32"),
        ("int32", "float32"),
        ("int64", "float32"),
        ("float32", "int32"),
        ("float32", "int64"),
    ],
)
def test_integer_pow_computed_exponent_equals_ort(base_dtype, exp_dtype, kind):
    x, e = pair(base_dtype, exp_dtype, kind)
    op, kept = Pow.from_onnx({}, [None, None], "p", 15)
    assert kept == (0, 1)
    run, (y,) = run_in_arena(op, [x, e])
    run()
    want = ort_run("Pow", [x, e], opset=15)
    assert y.dtype == want.dtype == np.dtype(base_dtype)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(op.reference([x, e])[0], want)
    assert_no_numpy_allocations(run)


def test_integer_pow_wraps_to_int_min_like_ort():
    """The two rules a repeated-squaring integer power would get wrong against ORT."""
    x, e = np.array([2, 0, 2, -2], np.int32), np.array([-1, -1, 31, 31], np.int32)
    op, _ = Pow.from_onnx({}, [None, None], "p", 15)
    run, (y,) = run_in_arena(op, [x, e])
    run()
    assert y.tolist() == [0, -(2**31), -(2**31), -(2**31)]


@pytest.mark.parametrize("exponent", [2, 3, 4])
def test_integer_pow_single_exponent_of_two_or_three_multiplies_like_ort(exponent):
    """ORT computes x*x and x*x*x in the integer type for a one-element exponent (wrapping), and
    pow(double) otherwise (INT_MIN past the range)."""
    x = np.array([46341, -46341, 3, -7], np.int32)
    e = np.array([exponent], np.int64)
    op, _ = Pow.from_onnx({}, [None, None], "p", 15)
    run, (y,) = run_in_arena(op, [x, e])
    run()
    want = ort_run("Pow", [x, e], opset=15)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(op.reference([x, e])[0], want)
    wrapped = (x.astype(np.int64) ** exponent + 2**31) % 2**32 - 2**31
    assert (y[:2] == wrapped[:2]).all() == (exponent < 4)


@pytest.mark.parametrize(
    ("x_shape", "e_shape"),
    [((2, 3, 4), (4,)), ((3, 1), (1, 5)), ((1, 2, 1, 3, 1, 2), (4, 1, 3, 1, 5, 1))],
    ids=str,
)
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_pow_constant_tensor_exponent_broadcasts(x_shape, e_shape, dtype):
    rng = np.random.default_rng(sum(x_shape))
    x = rng.integers(-9, 10, x_shape).astype(dtype)
    e = rng.integers(-2, 12, e_shape).astype(np.int64)
    op, kept = Pow.from_onnx({}, [None, e], "p", 15)
    assert kept == (0, 1)
    prepared = op.prepare([None, e])[1]
    assert prepared.dtype == np.int64  # an integer exponent keeps its type
    run, (y,) = run_in_arena(op, [x, prepared], consts=[None, e])
    run()
    want = ort_run("Pow", [x], consts=[e], opset=15)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(op.reference([x, e])[0], want)
    assert_no_numpy_allocations(run)


@pytest.mark.parametrize(
    "exponent", [np.array(-1, np.int64), np.array(2.5, np.float32), np.array([[3]], np.int32)]
)
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_pow_constant_scalar_exponent(exponent, dtype):
    x = BASES.astype(dtype).reshape(3, 4)
    op, kept = Pow.from_onnx({}, [None, exponent], "p", 15)
    assert kept == (0,)
    run, (y,) = run_in_arena(op, [x])
    run()
    want = ort_run("Pow", [x], consts=[exponent], opset=15)
    assert y.shape == want.shape
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(op.reference([x])[0], want)
    assert_no_numpy_allocations(run)


def test_pow_refuses_other_types():
    op, _ = Pow.from_onnx({}, [None, None], "p", 15)
    with pytest.raises(DtypeRefused, match="base is uint8"):
        op.output_dtypes(["uint8", "int32"])
    with pytest.raises(DtypeRefused, match="exponent is bool"):
        op.output_dtypes(["int32", "bool"])
    assert op.output_dtypes(["int64", "float32"]) == ["int64"]
    assert op.output_dtypes(["float32", "int64"]) == ["float32"]


def test_integer_pow_model_matches_ort(tmp_path):
    """int64 in: squares and a computed exponent (x mod 4), as index arithmetic writes it."""
    graph = helper.make_graph(
        [
            helper.make_node("Pow", ["n", "two"], ["sq"]),
            helper.make_node("Abs", ["n"], ["a"]),
            helper.make_node("Pow", ["sq", "a"], ["p"]),
            helper.make_node("Pow", ["f", "n"], ["fp"]),
        ],
        "ints",
        [
            helper.make_tensor_value_info("n", TensorProto.INT64, [2, 5]),
            helper.make_tensor_value_info("f", TensorProto.FLOAT, [2, 5]),
        ],
        [
            helper.make_tensor_value_info("p", TensorProto.INT64, [2, 5]),
            helper.make_tensor_value_info("fp", TensorProto.FLOAT, [2, 5]),
        ],
        [numpy_helper.from_array(np.array(2, np.int64), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    n = np.array([[-3, -1, 0, 2, 3], [4, -2, 1, 5, 7]], np.int64)
    f = np.linspace(-2, 2, 10, dtype=np.float32).reshape(2, 5)
    assert_model_matches_ort(model, {"n": n, "f": f}, tmp_path)
