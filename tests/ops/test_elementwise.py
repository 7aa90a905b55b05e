"""Add/Sub/Mul/Div/Mod/Sum/Min/Max/Mean on float32 and integer tensors: kernels against their
references, references against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.errors import DtypeRefused, InputValueError, ShapeError, UnsupportedOp
from flexnnd.ops.elementwise import (
    Add,
    Div,
    Max,
    Mean,
    Min,
    Mod,
    Mul,
    Sub,
    Sum,
    binary_path,
    collapsed,
    element_strides,
)
from tests.ops.harness import arena_views, assert_no_numpy_allocations, ort_run, run_in_arena

BINARY = [Add, Sub, Mul, Div]


def operands(shape_a, shape_b, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape_a).astype(np.float32)
    b = rng.standard_normal(shape_b).astype(np.float32)
    return a, np.where(np.abs(b) < 0.1, 0.5, b).astype(np.float32)  # keep Div away from 0


# (a, b, the kernel bind picks); channel counts 1, 3, 13, 24 and odd sizes.
BROADCAST_CASES = [
    ((2, 13, 5, 7), (2, 13, 5, 7), "flat"),
    ((7,), (7,), "flat"),
    ((1, 24, 5, 7), (24, 5, 7), "flat"),
    ((2, 3, 5, 7), (), "scalar"),
    ((1,), (2, 13, 3), "scalar"),
    ((2, 1, 1, 1), (1, 1, 1), "scalar"),
    ((2, 24, 5, 7), (1, 24, 1, 1), "block"),
    ((13, 1, 1), (2, 13, 5, 7), "block"),
    ((2, 3, 5, 7), (7,), "block"),
    ((2, 3, 5, 7), (3, 5, 1), "block"),
    ((5, 7), (2, 1, 5, 7), "block"),
    ((2, 1, 5, 1), (1, 3, 1, 7), "broadcast"),
    ((3, 1), (1, 13), "broadcast"),
    ((2, 13, 5, 7), (2, 1, 5, 1), "broadcast"),
    ((2, 3, 1, 4, 1, 3), (3, 1, 5, 3), "broadcast"),
]


@pytest.mark.parametrize("cls", BINARY, ids=lambda c: c.op_type)
@pytest.mark.parametrize(("shape_a", "shape_b", "path"), BROADCAST_CASES)
def test_binary_matches_reference(cls, shape_a, shape_b, path):
    assert binary_path(cls.op_type, shape_a, shape_b)[0] == path
    op = cls()
    for a_shape, b_shape in ((shape_a, shape_b), (shape_b, shape_a)):  # either side may be the small one
        a, b = operands(a_shape, b_shape)
        kernel, (y,) = run_in_arena(op, [a, b])
        kernel()
        want = op.reference([a, b])[0]
        assert want.shape == y.shape
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("activation", "alpha", "beta"),
    [("Relu", 0.0, 0.0), ("Clip", -0.5, 0.7), ("LeakyRelu", 0.1, 0.0), ("HardSigmoid", 0.2, 0.5)],
)
@pytest.mark.parametrize(("shape_a", "shape_b"), [(a, b) for a, b, _ in BROADCAST_CASES[::2]])
def test_fused_activation(activation, alpha, beta, shape_a, shape_b):
    op = Add(activation=activation, activation_alpha=alpha, activation_beta=beta)
    a, b = operands(shape_a, shape_b, seed=1)
    kernel, (y,) = run_in_arena(op, [a, b])
    kernel()
    np.testing.assert_allclose(y, op.reference([a, b])[0], rtol=1e-6, atol=1e-6)


def test_fused_add_relu_spans_blocks():
    """A ResNet-sized residual add + Relu: many fused blocks and a partial last one."""
    op = Add(activation="Relu")
    a, b = operands((1, 24, 29, 31), (1, 24, 29, 31), seed=2)
    kernel, (y,) = run_in_arena(op, [a, b])
    kernel()
    np.testing.assert_array_equal(y, np.maximum(a + b, 0))


def test_unknown_fused_activation_is_refused():
    with pytest.raises(UnsupportedOp, match="NoSuchActivation"):
        Add(activation="NoSuchActivation").check("add1", 13)


@pytest.mark.parametrize(
    "shapes",
    [
        [(2, 13, 5, 7)],
        [(2, 13, 5, 7), (1, 13, 1, 1)],
        [(7,), (2, 13, 5, 7), (1, 13, 1, 1)],
        [(2, 13, 5, 7), (1, 13, 1, 1), (7,), (2, 1, 5, 1)],
        [(3, 1), (1, 24), (2, 1, 1)],  # no two of them make the output shape
    ],
)
def test_sum_matches_reference(shapes):
    rng = np.random.default_rng(len(shapes))
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    kernel, (y,) = run_in_arena(Sum(), xs)
    kernel()
    np.testing.assert_allclose(y, Sum().reference(xs)[0], rtol=1e-6, atol=1e-6)


# ---- references vs onnxruntime, errors --------------------------------------------------------


@pytest.mark.parametrize("cls", BINARY, ids=lambda c: c.op_type)
@pytest.mark.parametrize(
    ("shape_a", "shape_b"), [((2, 13, 5, 7), (13, 1, 1)), ((1,), (3, 4)), ((3, 1), (1, 13))]
)
def test_binary_reference_matches_onnxruntime(cls, shape_a, shape_b):
    a, b = operands(shape_a, shape_b, seed=5)
    np.testing.assert_allclose(cls().reference([a, b])[0], ort_run(cls.op_type, [a, b]), rtol=1e-6)


def test_sum_reference_matches_onnxruntime():
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal(s).astype(np.float32) for s in [(2, 3, 4), (3, 1), (4,)]]
    np.testing.assert_allclose(Sum().reference(xs)[0], ort_run("Sum", xs), rtol=1e-6)


def test_shapes_that_do_not_broadcast():
    for cls in BINARY:
        with pytest.raises(ShapeError, match=r"\(2, 3\).*\(4,\)"):
            cls().infer([(2, 3), (4,)], [None, None])
    with pytest.raises(ShapeError, match=r"\(2, 3\).*\(3, 2\)"):
        Sum().infer([(2, 3), (3, 2), (2, 3)], [None] * 3)
    y = np.empty((2, 4), np.float32)
    with pytest.raises(ShapeError, match=r"\(2, 3\).*\(2, 4\)"):
        Add().bind([np.ones((2, 3), np.float32), np.ones((3,), np.float32)], [y], None)


# ---- no allocation per call -------------------------------------------------------------------


ALLOCATION_CASES = [  # one per kernel, each far larger than the 2 KiB peak allowance
    ((2, 24, 29, 31), (2, 24, 29, 31)),
    ((2, 24, 29, 31), ()),
    ((2, 24, 29, 31), (24, 1, 1)),
    ((2, 24, 29, 31), (31,)),
    ((2, 1, 29, 31), (1, 24, 1, 31)),
    ((2, 3, 4, 29, 1, 31), (3, 1, 29, 5, 31)),
]


@pytest.mark.parametrize(("shape_a", "shape_b"), ALLOCATION_CASES)
@pytest.mark.parametrize("activation", ["", "Relu"])
def test_binary_allocates_nothing_per_call(shape_a, shape_b, activation):
    a, b = operands(shape_a, shape_b)
    kernel, _ = run_in_arena(Sub(activation=activation), [a, b])
    assert_no_numpy_allocations(kernel)


@pytest.mark.parametrize("n", [1, 3])
def test_sum_allocates_nothing_per_call(n):
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((2, 24, 13, 17)).astype(np.float32) for _ in range(n)]
    kernel, _ = run_in_arena(Sum(), xs)
    assert_no_numpy_allocations(kernel)


# ---- integer tensors, Mod, Min/Max/Mean ---------------------------------------------------------

INTEGER_OPS = [Add(), Sub(), Mul(), Div(), Mod(), Mod(fmod=1), Min(), Max()]
INTEGER_SHAPES = [((2, 3, 4), (3, 1)), ((7,), ()), ((1, 2, 1, 3, 1), (2, 1, 5, 1, 1)), ((5, 1), (5, 1))]


def integer_operands(dtype, shape_a, shape_b, seed=0):
    """Values of both signs near the type's ends, divisors never 0."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, shape_a, endpoint=True, dtype=dtype)
    b = rng.integers(max(info.min, -9), min(info.max, 9), shape_b, endpoint=True, dtype=dtype)
    return a, np.where(b == 0, np.array(7, dtype), b).astype(dtype)


def _attrs(op):
    return {"fmod": op.fmod} if op.op_type == "Mod" else {}


@pytest.mark.parametrize("op", INTEGER_OPS, ids=lambda o: f"{o.op_type}{_attrs(o).get('fmod', '')}")
@pytest.mark.parametrize("dtype", ["int64", "int32", "int16", "int8", "uint16", "uint8"])
def test_integer_ops_match_reference_and_onnxruntime(op, dtype):
    for shape_a, shape_b in INTEGER_SHAPES:
        for a_shape, b_shape in ((shape_a, shape_b), (shape_b, shape_a)):
            a, b = integer_operands(dtype, a_shape, b_shape)
            kernel, (y,) = run_in_arena(op, [a, b])
            kernel()
            want = op.reference([a, b])[0]
            assert y.dtype == want.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(y, want)
    if op.op_type in ("Min", "Max") and dtype in ("int16", "uint16"):
        return  # ONNX Runtime has no such kernel
    a, b = integer_operands(dtype, (2, 3, 4), (3, 1), seed=1)
    np.testing.assert_array_equal(op.reference([a, b])[0], ort_run(op.op_type, [a, b], **_attrs(op)))


def test_integer_div_truncates_and_wraps():
    a = np.array([7, -7, 7, -7, np.iinfo(np.int64).min, 5], dtype=np.int64)
    b = np.array([2, 2, -2, -2, -1, -1], dtype=np.int64)
    for op, want in [
        (Div(), [3, -3, -3, 3, np.iinfo(np.int64).min, -5]),
        (Mod(), [1, 1, -1, -1, 0, 0]),
        (Mod(fmod=1), [1, -1, 1, -1, 0, 0]),
    ]:
        kernel, (y,) = run_in_arena(op, [a, b])
        kernel()
        np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("op", [Div(), Mod(), Mod(fmod=1)], ids=lambda o: f"{o.op_type}{_attrs(o)}")
def test_integer_division_by_zero_fails_the_request(op):
    a, b, y = arena_views([(3, 4), (4,), (3, 4)], ["int32"] * 3)
    a[...] = np.arange(12).reshape(3, 4)
    b[...] = [1, 0, 2, 0]
    kernel = op.bind([a, b], [y], None)
    with pytest.raises(InputValueError, match=rf"{op.op_type}.*division by zero \(6 of 12"):
        kernel()
    with pytest.raises(InputValueError, match="division by zero"):
        op.reference([a, b])
    b[...] = 3
    kernel()  # the same binding runs again once the divisors are good
    np.testing.assert_array_equal(y, op.reference([a, b])[0])


@pytest.mark.parametrize("fmod", [0, 1])
def test_float_mod_matches_onnxruntime(fmod):
    rng = np.random.default_rng(9)
    a = (rng.standard_normal((3, 5, 4)) * 10).astype(np.float32)
    b = np.array([3.0, -3.0, 0.5, 0.0], dtype=np.float32)
    a[0, 0, :] = [0.0, -0.0, np.inf, 4.0]
    op, _ = Mod.from_onnx({"fmod": fmod}, [None, None], "m", 28)
    kernel, (y,) = run_in_arena(op, [a, b])
    kernel()
    want = ort_run("Mod", [a, b], opset=28, fmod=fmod)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(op.reference([a, b])[0], want, rtol=1e-6, atol=1e-6)


VARIADIC_SHAPES = [
    [(2, 13, 5, 7)],
    [(2, 13, 5, 7), (1, 13, 1, 1)],
    [(7,), (2, 13, 5, 7), (1, 13, 1, 1)],
    [(3, 1), (1, 24), (2, 1, 1)],
]


@pytest.mark.parametrize("cls", [Min, Max, Mean], ids=lambda c: c.op_type)
@pytest.mark.parametrize("shapes", VARIADIC_SHAPES, ids=len)
def test_variadic_match_reference_and_onnxruntime(cls, shapes):
    rng = np.random.default_rng(len(shapes))
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    xs[0].reshape(-1)[1] = np.nan
    kernel, (y,) = run_in_arena(cls(), xs)
    kernel()
    want = ort_run(cls.op_type, xs, opset=13)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cls().reference(xs)[0], want, rtol=1e-6, atol=1e-6)


def test_dtype_refusals():
    with pytest.raises(DtypeRefused, match=r"different element types \['int64', 'int32'\]"):
        Add().output_dtypes(["int64", "int32"])
    with pytest.raises(DtypeRefused, match="not bool"):
        Mul().output_dtypes(["bool", "bool"])
    with pytest.raises(DtypeRefused, match="Mean takes float32, not int64"):
        Mean().output_dtypes(["int64", "int64"])
    with pytest.raises(DtypeRefused, match="fused Relu runs on float32, not int32"):
        Add(activation="Relu").output_dtypes(["int32", "int32"])
    with pytest.raises(DtypeRefused, match="float32"):
        Sum().output_dtypes(["int64", "int64"])
    with pytest.raises(DtypeRefused, match="fmod=1 before opset 28"):
        Mod.from_onnx({}, [None, None], "m", 27)[0].output_dtypes(["float32", "float32"])
    assert Mod.from_onnx({"fmod": 1}, [None, None], "m", 13)[0].output_dtypes(["float32"] * 2) == ["float32"]
    with pytest.raises(UnsupportedOp, match="fmod=2"):
        Mod.from_onnx({"fmod": 2}, [None, None], "m", 13)
    assert Max().output_dtypes(["uint8", None, "uint8"]) == ["uint8"]
    for op in [*INTEGER_OPS, Mean(), Sum()]:
        assert op.slice_axes([(2, 3)], [(2, 3)]) == ()


@pytest.mark.parametrize(
    ("op", "dtype", "shapes"),
    [
        (Add(), "int64", [(2, 24, 29, 31), (24, 1, 1)]),
        (Div(), "int32", [(2, 24, 29, 31), (1, 1, 31)]),
        (Mod(fmod=1), "float32", [(2, 24, 29, 31), (24, 1, 1)]),
        (Max(), "int64", [(2, 24, 29, 31), (31,), (2, 1, 1, 1)]),
        (Mean(), "float32", [(2, 24, 29, 31), (31,), (2, 1, 1, 1)]),
        (Min(), "float32", [(2, 24, 29, 31)]),
    ],
    ids=lambda v: getattr(v, "op_type", str(v)),
)
def test_integer_and_variadic_allocate_nothing_per_call(op, dtype, shapes):
    rng = np.random.default_rng(10)
    xs = [
        (rng.integers(1, 50, s) if dtype != "float32" else rng.standard_normal(s)).astype(dtype)
        for s in shapes
    ]
    kernel, _ = run_in_arena(op, xs)
    assert_no_numpy_allocations(kernel)


def test_integer_model_matches_onnxruntime(tmp_path):
    """Token-id arithmetic as exporters write it (int64 input, int64 constants), end to end."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.conftest import assert_model_matches_ort

    nodes = [
        helper.make_node("Add", ["ids", "offset"], ["a"]),
        helper.make_node("Mul", ["a", "three"], ["m"]),
        helper.make_node("Div", ["m", "seven"], ["d"]),
        helper.make_node("Mod", ["d", "five"], ["r"]),
        helper.make_node("Sub", ["r", "ids"], ["s"]),
        helper.make_node("Max", ["s", "d", "lo"], ["y"]),
        helper.make_node("Mean", ["x", "x2"], ["z"]),
    ]
    consts = {
        "offset": np.array([-50], np.int64),
        "three": np.array(3, np.int64),
        "seven": np.array([[7], [-7]], np.int64),
        "five": np.array(5, np.int64),
        "lo": np.array([-3], np.int64),
        "x2": np.linspace(-1, 1, 11, dtype=np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "ints",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 11]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 11]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.INT64, [2, 11]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 11]),
        ],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    rng = np.random.default_rng(11)
    feeds = {
        "ids": rng.integers(0, 30000, (2, 11)).astype(np.int64),
        "x": rng.standard_normal((2, 11)).astype(np.float32),
    }
    assert_model_matches_ort(model, feeds, tmp_path)


def test_strided_kernels_merge_axes():
    """Adjacent axes both operands read alike merge, so the inner loop is long."""

    def merged(a, b):
        out = np.broadcast_shapes(a, b)
        shape, sa, sb = collapsed(out, element_strides(a, out), element_strides(b, out))
        return [int(d) for d in shape if d != 1], list(sa[-2:]), list(sb[-2:])

    assert merged((2, 3, 4), (2, 3, 4)) == ([24], [0, 1], [0, 1])
    assert merged((1, 12, 197, 197), (197,)) == ([2364, 197], [197, 1], [0, 1])
    assert merged((2, 3, 4), (3, 1)) == ([2, 3, 4], [4, 1], [1, 0])
    assert merged((5, 1), ()) == ([5], [0, 1], [0, 0])
