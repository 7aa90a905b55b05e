"""Unary math and activations, PRelu and Pow: kernels against their references on awkward shapes
and every dtype they take, references against onnxruntime, no allocation, refusals, and small
models end to end against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import Part, op_class
from flexnnd.ops.pow import Pow
from flexnnd.ops.unary import PRelu
from tests.conftest import assert_model_matches_ort, make_model
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

SHAPES = [(), (1,), (7,), (3, 1), (2, 13, 5, 7), (1, 24, 3, 3, 2)]
# op type, attributes, the opset ORT checks it at, the spread of the test values
FLOAT_OPS = [
    ("Exp", {}, 13, 30.0),
    ("Log", {}, 13, 10.0),
    ("Sqrt", {}, 13, 10.0),
    ("Tanh", {}, 13, 5.0),
    ("Sin", {}, 13, 10.0),
    ("Cos", {}, 13, 10.0),
    ("Abs", {}, 13, 10.0),
    ("Neg", {}, 13, 10.0),
    ("Reciprocal", {}, 13, 10.0),
    ("Floor", {}, 13, 10.0),
    ("Ceil", {}, 13, 10.0),
    ("Round", {}, 13, 10.0),
    ("Sign", {}, 13, 10.0),
    ("Gelu", {}, 20, 5.0),
    ("Gelu", {"approximate": "tanh"}, 20, 5.0),
    ("Mish", {}, 18, 10.0),
    ("Softplus", {}, 13, 30.0),
    ("Softsign", {}, 13, 10.0),
    ("Elu", {"alpha": 0.7}, 13, 3.0),
    ("Selu", {}, 13, 3.0),
    ("Selu", {"alpha": 1.5, "gamma": 2.0}, 13, 3.0),
    ("Celu", {"alpha": 2.0}, 13, 3.0),
    ("ThresholdedRelu", {"alpha": 0.5}, 13, 3.0),
]
IDS = [f"{t}{a or ''}" for t, a, _, _ in FLOAT_OPS]


def values(shape, spread, seed=0):
    """Normal values times `spread`, with special points first (zeros, tiny, halves, large)."""
    x = np.asarray(np.random.default_rng(seed).standard_normal(shape) * spread, np.float32)
    special = np.array([0.0, -0.0, 1e-6, -1e-6, 0.5, -2.5, 1.5, 100.0, -100.0, 1e-3], np.float32)
    flat = x.reshape(-1)
    flat[: min(flat.size, special.size)] = special[: min(flat.size, special.size)]
    return x


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(("op_type", "attrs", "opset", "spread"), FLOAT_OPS, ids=IDS)
def test_kernel_matches_reference(op_type, attrs, opset, spread, shape):
    op = op_class(op_type)(**attrs)
    x = values(shape, spread)
    kernel, (y,) = run_in_arena(op, [x])
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel()
        want = op.reference([x])[0]
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("op_type", "attrs", "opset", "spread"), FLOAT_OPS, ids=IDS)
def test_reference_matches_onnxruntime(op_type, attrs, opset, spread):
    x = values((2, 3, 5, 4), spread, seed=1)
    if op_type in ("Log", "Sqrt"):
        x = np.abs(x)  # ORT and numpy agree on NaN for negatives, but ORT warns
    with np.errstate(invalid="ignore", divide="ignore"):
        want = ort_run(op_type, [x], opset=opset, **attrs)
        got = op_class(op_type)(**attrs).reference([x])[0]
    # ORT's tanh Gelu loses digits where 1 + tanh cancels (x < 0): absolute 3e-7 there
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=5e-7)


@pytest.mark.parametrize(("op_type", "attrs", "opset", "spread"), FLOAT_OPS, ids=IDS)
def test_kernel_allocates_nothing(op_type, attrs, opset, spread):
    kernel, _ = run_in_arena(op_class(op_type)(**attrs), [np.abs(values((2, 13, 5, 7), spread))])
    assert_no_numpy_allocations(kernel)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16"])
@pytest.mark.parametrize("op_type", ["Abs", "Neg", "Sign"])
def test_integer_abs_neg_sign(op_type, dtype):
    info = np.iinfo(dtype)
    if op_type == "Neg" and info.min == 0:
        with pytest.raises(DtypeRefused, match=dtype):
            op_class(op_type)().output_dtypes([dtype])
        return
    x = np.random.default_rng(2).integers(max(info.min, -1000), min(info.max, 1000), (3, 7, 5)).astype(dtype)
    x.reshape(-1)[:3] = [0, 1, info.max]
    op = op_class(op_type)()
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, op.reference([x])[0])
    np.testing.assert_array_equal(y, ort_run(op_type, [x], opset=13))
    assert_no_numpy_allocations(kernel)


@pytest.mark.parametrize(
    ("op_type", "attrs"),
    [
        ("Softplus", {}),
        ("Mish", {}),
        ("Gelu", {}),
        ("Gelu", {"approximate": "tanh"}),
        ("Elu", {}),
        ("Exp", {}),
    ],
)
def test_numba_math_within_a_few_ulp_over_a_sweep(op_type, attrs):
    """The vectorized exp/expm1/erfc/log1p behind these ops, on 400k points of [-60, 60], within
    2e-6 relative of float64 wherever the result is not far below 1 in magnitude (Gelu's are the
    loosest, 1.2e-6 around x = -3.5, where a float32 argument of 7 to 10 feeds exp or erfc; the
    others stay within 3e-7)."""
    x = np.linspace(-60, 60, 400_001, dtype=np.float32)
    op = op_class(op_type)(**attrs)
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    want = op.reference([x])[0].astype(np.float64)
    big = np.abs(want) > 1e-3
    assert big.sum() > 100_000
    np.testing.assert_allclose(y[big], want[big], rtol=2e-6 if op_type == "Gelu" else 3e-7)
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=1e-9)


def test_round_is_half_to_even_and_specials_pass():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999998, np.inf, -np.inf, np.nan], np.float32)
    kernel, (y,) = run_in_arena(op_class("Round")(), [x])
    kernel()
    np.testing.assert_array_equal(y, [0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 2.0, np.inf, -np.inf, np.nan])


@pytest.mark.parametrize(("op_type", "attrs", "opset", "spread"), FLOAT_OPS, ids=IDS)
def test_limits_match_reference(op_type, attrs, opset, spread):
    """+-inf, NaN and values where exp overflows or underflows give what the reference gives."""
    x = np.array([np.inf, -np.inf, np.nan, 88.0, 89.0, -87.0, -104.0, 20.0, 44.0, -9.0], np.float32)
    op = op_class(op_type)(**attrs)
    kernel, (y,) = run_in_arena(op, [x])
    with np.errstate(all="ignore"):
        kernel()
        want = op.reference([x])[0]
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)


def test_registered_never_sliced_and_refusals():
    for op_type, attrs, _, _ in FLOAT_OPS:
        op = op_class(op_type)(**attrs)
        assert op.slice_axes([(2, 3)], [(2, 3)]) == ()
        assert op.cost_kind([(2, 3)]) == "memory"
        assert op.infer([(2, 3)], [None]) == [(2, 3)]
    with pytest.raises(DtypeRefused, match="int32"):
        op_class("Sqrt")().output_dtypes(["int32"])
    with pytest.raises(UnsupportedOp, match="approximate"):
        op_class("Gelu").from_onnx({"approximate": "erf"}, [None], "g", 20)
    with pytest.raises(UnsupportedOp, match="alpha"):
        op_class("Celu").from_onnx({"alpha": 0.0}, [None], "c", 12)
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="not sliced"):
        op_class("Exp")().bind([x], [x.copy()], None, Part("rows", 0, 1))
    with pytest.raises(ShapeError, match="output"):
        op_class("Tanh")().bind([x], [np.zeros((3, 2), np.float32)], None)


# ---- PRelu ----------------------------------------------------------------------------------
PRELU_SLOPES = [(13, 1, 1), (7,), (1,), (2, 13, 5, 7), (5, 1), (13, 5, 1), (2, 1, 5, 1), (1, 13, 1, 7)]


@pytest.mark.parametrize("slope_shape", PRELU_SLOPES, ids=str)
def test_prelu_matches_reference_and_onnxruntime(slope_shape):
    rng = np.random.default_rng(4)
    x = values((2, 13, 5, 7), 3.0)
    slope = rng.standard_normal(slope_shape).astype(np.float32)
    op = PRelu()
    assert op.infer([x.shape, slope.shape], [None, slope]) == [x.shape]
    kernel, (y,) = run_in_arena(op, [x, op.prepare([None, slope])[1]], consts=[None, slope])
    kernel()
    want = op.reference([x, slope])[0]
    np.testing.assert_array_equal(y, want)
    np.testing.assert_allclose(want, ort_run("PRelu", [x], consts=[slope], opset=16), rtol=1e-6)
    assert_no_numpy_allocations(kernel)


def test_prelu_refuses_a_slope_that_does_not_fit():
    with pytest.raises(ShapeError, match="broadcast"):
        PRelu().infer([(2, 3, 4), (3,)], [None, np.ones(3, np.float32)])
    with pytest.raises(ShapeError, match="broadcast"):
        PRelu().infer([(3, 4), (2, 3, 4)], [None, np.ones((2, 3, 4), np.float32)])
    assert PRelu.const_inputs == (1,)


# ---- Pow ------------------------------------------------------------------------------------
def pow_op(exponent, base_shape=None):
    op, kept = Pow.from_onnx({}, [None, exponent], "p", 15)
    return op, kept


@pytest.mark.parametrize("e", [2.0, 0.5, 3.0, -1.0, -0.5, 0.0, 1.0, 1.7, -2.3, 4.0])
@pytest.mark.parametrize("shape", [(), (7,), (2, 13, 5, 7)], ids=str)
def test_pow_scalar_exponent(e, shape):
    x = np.asarray(np.abs(values(shape, 3.0)) if e != int(e) else values(shape, 3.0))
    exponent = np.array(e, np.float32)
    op, kept = pow_op(exponent)
    assert kept == (0,) and op.exponent == pytest.approx(e)
    kernel, (y,) = run_in_arena(op, [x])
    with np.errstate(all="ignore"):
        kernel()
        want = op.reference([x])[0]
        ort = ort_run("Pow", [x], consts=[exponent], opset=15)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(want, ort, rtol=1e-5, atol=1e-7)
    if x.size > 256:  # (numpy's overlap check of an in-place ufunc on one element makes 1 KiB of objects)
        assert_no_numpy_allocations(kernel)


def test_pow_scalar_exponent_of_higher_rank_raises_the_rank():
    op, _ = pow_op(np.full((1, 1), 2.0, np.float32))
    assert op.infer([(3,)], [None]) == [(1, 3)]
    x = np.array([1.0, -2.0, 3.0], np.float32)
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    np.testing.assert_array_equal(y, [[1.0, 4.0, 9.0]])


@pytest.mark.parametrize("e_dtype", ["float32", "int64", "int32", "uint32"])
def test_pow_constant_tensor_exponent_broadcasts(e_dtype):
    x = np.abs(values((2, 3, 7), 2.0))
    exponent = np.array([0, 1, 2, 3, 2, 1, 0], e_dtype)
    op, kept = pow_op(exponent)
    assert kept == (0, 1)
    assert op.output_dtypes(["float32", e_dtype]) == ["float32"]
    prepared = op.prepare([None, exponent])[1]
    kernel, (y,) = run_in_arena(op, [x, prepared], consts=[None, exponent])
    kernel()
    np.testing.assert_allclose(y, op.reference([x, exponent])[0], rtol=1e-6)
    if e_dtype != "uint32":  # ORT has no Pow kernel for a uint32 exponent
        np.testing.assert_allclose(y, ort_run("Pow", [x], consts=[exponent], opset=15), rtol=1e-5)
    assert_no_numpy_allocations(kernel)


@pytest.mark.parametrize(
    ("x_shape", "e_shape"),
    [((3,), (2, 1)), ((2, 13, 5, 7), (13, 1, 1)), ((1, 4, 1, 3, 1, 2), (5, 1, 2, 1, 3, 1)), ((6,), (6,))],
    ids=str,
)
def test_pow_runtime_exponent_broadcasts_both_ways(x_shape, e_shape):
    x = np.abs(values(x_shape, 2.0)) + 0.5
    e = values(e_shape, 1.0, seed=3)
    op, kept = Pow.from_onnx({}, [None, None], "p", 15)
    assert kept == (0, 1) and op.runtime_exponent
    out_shape = np.broadcast_shapes(x_shape, e_shape)
    assert op.infer([x.shape, e.shape], [None, None]) == [out_shape]
    kernel, (y,) = run_in_arena(op, [x, e])
    kernel()
    np.testing.assert_allclose(y, op.reference([x, e])[0], rtol=1e-6)
    np.testing.assert_allclose(y, ort_run("Pow", [x, e], opset=15), rtol=1e-5)
    assert_no_numpy_allocations(kernel)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_pow_integer_base_with_whole_scalar_exponent(dtype):
    x = np.arange(-6, 7, dtype=dtype).reshape(13, 1)
    op, _ = pow_op(np.array(3, np.int64))
    assert op.output_dtypes([dtype]) == [dtype]
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, x**3)
    np.testing.assert_array_equal(y, ort_run("Pow", [x], consts=[np.array(3, np.int64)], opset=15))


def test_pow_refusals():
    runtime, _ = Pow.from_onnx({}, [None, None], "p", 15)  # integer Pow: tests/ops/test_pow.py
    with pytest.raises(DtypeRefused, match="uint8"):
        runtime.output_dtypes(["uint8", "uint8"])
    with pytest.raises(ShapeError, match="broadcast"):
        runtime.infer([(2, 3), (4,)], [None, None])
    assert Pow().slice_axes([(2, 3), (1,)], [(2, 3)]) == ()


# ---- models end to end ----------------------------------------------------------------------
def test_activation_model_matches_ort(tmp_path):
    """Conv -> PRelu per channel -> Gelu -> Mish -> Pow 2 -> Sqrt -> Elu -> Softplus ... against ORT,
    all-resident and at the smallest plan."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((6, 3, 3, 3)) * 0.5).astype(np.float32)
    slope = rng.standard_normal((6, 1, 1)).astype(np.float32) * 0.3
    two, tenth = np.array(2.0, np.float32), np.array(0.1, np.float32)
    chain = [
        ("PRelu", ["slope"], {}),
        ("Gelu", [], {}),
        ("Mish", [], {}),
        ("Gelu", [], {"approximate": "tanh"}),
        ("Elu", [], {"alpha": 0.5}),
        ("Pow", ["two"], {}),
        ("Add", ["tenth"], {}),
        ("Sqrt", [], {}),
        ("Log", [], {}),
        ("Softplus", [], {}),
        ("Tanh", [], {}),
        ("Softsign", [], {}),
        ("Selu", [], {}),
        ("Exp", [], {}),
        ("Reciprocal", [], {}),
        ("Sin", [], {}),
        ("Cos", [], {}),
        ("Neg", [], {}),
        ("Abs", [], {}),
        ("Celu", [], {}),
        ("ThresholdedRelu", [], {"alpha": 0.1}),
    ]
    nodes = [helper.make_node("Conv", ["x", "w"], ["t0"], pads=[1, 1, 1, 1])]
    for i, (op_type, extra, attrs) in enumerate(chain):
        nodes.append(helper.make_node(op_type, [f"t{i}", *extra], [f"t{i + 1}"], **attrs))
    nodes.append(helper.make_node("Identity", [f"t{len(chain)}"], ["y"]))
    model = make_model(
        nodes,
        [("x", (1, 3, 11, 9))],
        [("y", (1, 6, 11, 9))],
        [("w", w), ("slope", slope), ("two", two), ("tenth", tenth)],
        opset=20,
    )
    x = (rng.standard_normal((1, 3, 11, 9)) * 2).astype(np.float32)
    assert_model_matches_ort(model, {"x": x}, tmp_path)


def test_integer_model_matches_ort(tmp_path):
    """int64 in, Abs -> Neg -> Pow 2 -> Sign, int64 out, against ORT."""
    nodes = [
        helper.make_node("Abs", ["x"], ["a"]),
        helper.make_node("Neg", ["a"], ["n"]),
        helper.make_node("Pow", ["n", "two"], ["p"]),
        helper.make_node("Sign", ["n"], ["s"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ints",
        [helper.make_tensor_value_info("x", TensorProto.INT64, (4, 5))],
        [
            helper.make_tensor_value_info("p", TensorProto.INT64, (4, 5)),
            helper.make_tensor_value_info("s", TensorProto.INT64, (4, 5)),
        ],
        [numpy_helper.from_array(np.array(2, np.int64), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    x = np.random.default_rng(6).integers(-50, 50, (4, 5)).astype(np.int64)
    x[0, 0] = 0
    assert_model_matches_ort(model, {"x": x}, tmp_path)
