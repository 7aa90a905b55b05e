"""Add/Sub/Mul/Div/Sum kernels against their references, references against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.elementwise import Add, Div, Mul, Sub, Sum, binary_path
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

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
    with pytest.raises(UnsupportedOp, match="Swish"):
        Add(activation="Swish").check("add1", 13)


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
