"""QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger: kernels against their
references, the references against ONNX Runtime, and two quantized models end to end."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd.ops.quantize import DequantizeLinear, DynamicQuantizeLinear, MatMulInteger, QuantizeLinear
from tests.conftest import assert_model_matches_ort
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

RNG = np.random.default_rng(7)


def x_of(shape, scale=3.0):
    values = (RNG.standard_normal(shape) * scale).astype(np.float32)
    values.reshape(-1)[:4] = [0.5, 1.5, -2.5, 254.5]  # halves: rounding is to even
    return values


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("per_axis", [False, True], ids=["tensor", "axis"])
def test_quantize_and_dequantize_match_reference_and_ort(dtype, per_axis):
    x = x_of((2, 3, 5, 4))
    scale = np.array([0.05, 0.1, 0.2], np.float32) if per_axis else np.array(0.1, np.float32)
    zero = (
        (np.array([3, 128, 0], dtype) if dtype == "uint8" else np.array([-3, 0, 7], dtype))
        if per_axis
        else np.array(5, dtype)
    )
    q = QuantizeLinear(axis=1)
    run, (y,) = run_in_arena(q, [x, scale, zero], consts=[None, scale, zero])
    run()
    want = q.reference([x, scale, zero])[0]
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(want, ort_run("QuantizeLinear", [x], [scale, zero], axis=1))
    assert_no_numpy_allocations(run)
    dq = DequantizeLinear(axis=1)
    run, (back,) = run_in_arena(dq, [y, scale, zero], consts=[None, scale, zero])
    run()
    np.testing.assert_array_equal(back, dq.reference([y, scale, zero])[0])
    np.testing.assert_allclose(back, ort_run("DequantizeLinear", [y], [scale, zero], axis=1), rtol=1e-6)
    assert QuantizeLinear().slice_axes([x.shape, (), ()], [x.shape]) == ()


def test_dynamic_quantize_matches_ort():
    x = x_of((4, 33))
    op = DynamicQuantizeLinear()
    run, outs = run_in_arena(op, [x])
    run()
    want = ort_run("DynamicQuantizeLinear", [x], outputs=3)
    for got, ref, mine in zip(outs, want, op.reference([x]), strict=True):
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(mine, ref)
    assert_no_numpy_allocations(run)


@pytest.mark.parametrize("b_zero", ["scalar", "per_column"])
def test_matmul_integer_is_exact_int32(b_zero):
    a = RNG.integers(0, 256, (2, 3, 40), dtype=np.uint8)
    b = RNG.integers(-128, 128, (40, 6), dtype=np.int8)
    az = np.array(117, np.uint8)
    bz = np.array(-3, np.int8) if b_zero == "scalar" else RNG.integers(-5, 5, 6, dtype=np.int8)
    op = MatMulInteger()
    run, (y,) = run_in_arena(op, [a, b, az, bz], consts=[None, b, az, bz])
    run()
    want = ort_run("MatMulInteger", [a], [b, az, bz])
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(op.reference([a, b, az, bz])[0], want)
    assert_no_numpy_allocations(run)


def test_refusals_name_what_is_wrong():
    import flexnnd

    with pytest.raises(flexnnd.UnsupportedOp, match="blocked quantization"):
        QuantizeLinear.from_onnx({"block_size": 32}, [None, None], "q", 21)
    with pytest.raises(flexnnd.errors.DtypeRefused, match="takes uint8 or int8"):
        MatMulInteger().output_dtypes(["int32", "int8"])


def qdq_conv_model():
    """A QDQ int8 conv net: int8 weights behind DequantizeLinear (folded at import), the input
    quantized and dequantized, as quantize_static writes it. (A Quantize after a float conv is left
    out: ONNX Runtime fuses DQ-Conv-Q into an integer QLinearConv whose rounding differs from the
    spec's float conv by one step where a value lands near .5; flexnn computes the spec's.)"""
    rng = np.random.default_rng(2)
    w1 = rng.integers(-127, 128, (8, 3, 3, 3), dtype=np.int8)
    w2 = rng.integers(-127, 128, (4, 8, 3, 3), dtype=np.int8)
    inits = {
        "w1_q": w1, "w1_s": np.full(8, 0.01, np.float32), "w1_z": np.zeros(8, np.int8),
        "w2_q": w2, "w2_s": np.array(0.02, np.float32), "w2_z": np.array(0, np.int8),
        "a_s": np.array(0.05, np.float32), "a_z": np.array(128, np.uint8),
    }  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "a_s", "a_z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w1_q", "w1_s", "w1_z"], ["w1"], axis=0),
        helper.make_node("Conv", ["xd", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("DequantizeLinear", ["w2_q", "w2_s", "w2_z"], ["w2"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def dynamic_mlp_model():
    """A dynamically quantized MatMul as quantize_dynamic writes it: DynamicQuantizeLinear on the
    activation, MatMulInteger with int8 weights, Cast, and the scales multiplied back."""
    rng = np.random.default_rng(4)
    inits = {
        "w_q": rng.integers(-127, 128, (64, 32), dtype=np.int8),
        "w_s": np.array(0.01, np.float32),
        "w_z": np.array(0, np.int8),
    }
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "x_s", "x_z"]),
        helper.make_node("MatMulInteger", ["xq", "w_q", "x_z", "w_z"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x_s", "w_s"], ["s"]),
        helper.make_node("Mul", ["accf", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_qdq_int8_conv_net_matches_ort(tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert_model_matches_ort(qdq_conv_model(), {"x": x}, tmp_path)


def test_dynamically_quantized_matmul_matches_ort(tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 10, 64)).astype(np.float32)
    assert_model_matches_ort(dynamic_mlp_model(), {"x": x}, tmp_path)


def test_matmul_integer_is_exact_at_the_extremes():
    """The largest products (255 x -128) summed over K = 4096 stay exact through the float64 BLAS."""
    a = np.full((3, 4096), 255, np.uint8)
    a[1] = RNG.integers(0, 256, 4096, dtype=np.uint8)
    b = np.full((4096, 5), -128, np.int8)
    b[:, 1] = RNG.integers(-128, 128, 4096, dtype=np.int8)
    zeros = [np.array(0, np.uint8), np.array(0, np.int8)]
    run, (y,) = run_in_arena(MatMulInteger(), [a, b, *zeros], consts=[None, b, *zeros])
    run()
    np.testing.assert_array_equal(y, ort_run("MatMulInteger", [a], [b, *zeros]))
    assert y[0, 0] == 255 * -128 * 4096


@pytest.mark.parametrize("b_zero", ["scalar", "per_column"])
def test_matmul_integer_in_column_blocks_with_a_ragged_last_one(b_zero):
    """K = 2048 widens B 64 columns at a time: 150 columns are blocks of 64, 64 and 22."""
    a = RNG.integers(0, 256, (2, 5, 2048), dtype=np.uint8)
    b = RNG.integers(-128, 128, (2048, 150), dtype=np.int8)
    az = np.array(3, np.uint8)
    bz = np.array(-7, np.int8) if b_zero == "scalar" else RNG.integers(-5, 5, 150, dtype=np.int8)
    op = MatMulInteger()
    assert op.scratch_bytes([a.shape, b.shape, (), bz.shape]) < b.size * 8
    run, (y,) = run_in_arena(op, [a, b, az, bz], consts=[None, b, az, bz])
    run()
    np.testing.assert_array_equal(y, ort_run("MatMulInteger", [a], [b, az, bz]))
    assert_no_numpy_allocations(run)
