"""Gemm and MatMul against their numpy references; weight slicing by output columns; no allocation
per call."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.base import Part, SliceAxis, op_class
from flexnnd.ops.gemm import Gemm, MatMul
from tests.ops.harness import arena_views, assert_no_numpy_allocations

ACTIVATIONS = [
    ("", 0.0, 0.0),
    ("Relu", 0.0, 0.0),
    ("Clip", -1.0, 1.0),
    ("LeakyRelu", 0.1, 0.0),
    ("Sigmoid", 0.0, 0.0),
    ("HardSigmoid", 0.2, 0.5),
    ("HardSwish", 0.0, 0.0),
]


def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    err = float(np.max(np.abs(got.astype(np.float64) - ref)))
    assert err <= 1e-4 * max(1.0, float(np.max(np.abs(ref)))), f"max |diff| {err}"


def bind_on_arena(op, values, consts, out_shape, part=None):
    """Prepare the constants, put every input and the output in one arena, bind. -> (kernel, y)."""
    prepared = op.prepare(consts)
    ins = [p if c is not None else v for v, c, p in zip(values, consts, prepared, strict=True)]
    if part is not None:
        ins = [
            ins[0],
            ins[1][part.start : part.stop],
            *[c[part.start : part.stop] for c in ins[2:] if c is not None],
        ]
    present = [v for v in ins if v is not None]
    *views, y = arena_views([v.shape for v in present] + [out_shape])
    for view, v in zip(views, present, strict=True):
        view[...] = v
    y[...] = np.nan  # anything left unwritten shows up
    it = iter(views)
    ins = [None if v is None else next(it) for v in ins]
    return op.bind(ins, [y], None, part), y


def gemm_case(m, k, n, c_shape=(-1,), activation=("", 0.0, 0.0), seed=0, **attrs):
    """-> (op, values in ONNX layout, consts, output shape); c_shape None = no C, -1 = N."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if attrs.get("transA") else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if attrs.get("transB") else (k, n), dtype=np.float32)
    values = [a, b]
    if c_shape is not None:
        values.append(rng.standard_normal(tuple(n if d == -1 else d for d in c_shape)).astype(np.float32))
    consts = [None, *values[1:]]
    op, _ = Gemm.from_onnx(attrs, consts, "gemm", 13)
    name, alpha, beta = activation
    op = dataclasses.replace(op, activation=name, activation_alpha=alpha, activation_beta=beta)
    (out_shape,) = op.infer([v.shape for v in values], consts)
    return op, values, consts, out_shape


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=[a[0] or "none" for a in ACTIVATIONS])
@pytest.mark.parametrize(
    ("m", "k", "n", "c_shape", "attrs"),
    [
        (1, 29, 37, (-1,), {}),
        (3, 29, 37, (1, -1), {"transB": 1}),
        (3, 13, 24, (), {"transA": 1, "alpha": 0.5, "beta": 2.0}),
        (2, 24, 13, (1,), {"transA": 1, "transB": 1, "beta": -1.0}),
        (1, 7, 13, (1, -1), {"alpha": 3.0}),
        (5, 24, 1, None, {}),
        (3, 13, 24, (3, -1), {"beta": 0.5}),
        (4, 13, 7, (4, 1), {"transA": 1}),
    ],
    ids=[
        "vector",
        "transB-row-bias",
        "transA-scalar-bias",
        "both-trans",
        "M1-full-C",
        "no-C",
        "matrix-C",
        "column-C",
    ],
)
def test_gemm_matches_reference(m, k, n, c_shape, attrs, activation):
    op, values, consts, out_shape = gemm_case(m, k, n, c_shape, activation, **attrs)
    kernel, y = bind_on_arena(op, values, consts, out_shape)
    kernel()
    assert_close(y, op.reference(values)[0])


@pytest.mark.parametrize(("transB", "c_shape"), [(0, (-1,)), (1, (-1,)), (1, (3, -1))])
def test_gemm_channel_parts_cover_the_whole_op(transB, c_shape):
    op, values, consts, out_shape = gemm_case(3, 29, 37, c_shape, ("Relu", 0.0, 0.0), transB=transB)
    whole, y_whole = bind_on_arena(op, values, consts, out_shape)
    whole()
    cuts = [0, 1, 16, 37]
    _, y = bind_on_arena(op, values, consts, out_shape)
    prepared = op.prepare(consts)
    for n0, n1 in itertools.pairwise(cuts):
        kernel = op.bind(
            [values[0], prepared[1][n0:n1], prepared[2][n0:n1]], [y], None, Part("channels", n0, n1)
        )
        kernel()
    np.testing.assert_allclose(y, y_whole, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="part"):
        op.bind([values[0], prepared[1], prepared[2]], [y], None, Part("rows", 0, 1))


def test_gemm_weight_layout_is_output_major():
    op, values, consts, _ = gemm_case(2, 5, 7, alpha=2.0, beta=3.0)
    w, bias = op.prepare(consts)[1:]
    assert w.shape == (7, 5) and w.flags.c_contiguous
    np.testing.assert_allclose(w, 2.0 * values[1].T)
    np.testing.assert_allclose(bias, 3.0 * values[2])
    op, values, consts, _ = gemm_case(2, 5, 7, (2, -1), beta=3.0)
    bias = op.prepare(consts)[2]  # a C that varies along M is stored transposed: channel slices
    assert bias.shape == (7, 2) and bias.flags.c_contiguous
    np.testing.assert_allclose(bias, 3.0 * values[2].T)
    assert op.flops([v.shape for v in values], [(2, 7)]) == 2 * 2 * 5 * 7


def test_gemm_errors():
    b = np.zeros((4, 5), np.float32)
    with pytest.raises(UnsupportedOp, match="constant"):
        Gemm.from_onnx({}, [None, None], "gemm", 13)
    with pytest.raises(ShapeError, match="rank 2"):
        Gemm().infer([(2, 3, 4), (4, 5)], [None, b])
    with pytest.raises(ShapeError, match="disagree on K"):
        Gemm().infer([(2, 3), (4, 5)], [None, b])
    with pytest.raises(ShapeError, match="broadcast"):
        Gemm().infer([(2, 4), (4, 5), (3,)], [None, b, np.zeros(3, np.float32)])
    with pytest.raises(UnsupportedOp, match="attribute"):
        Gemm.from_onnx({"activation": "Relu"}, [None, b], "gemm", 13)


# ---- MatMul ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a_shape", "b_shape", "b_const"),
    [
        ((3, 29), (29, 37), True),
        ((2, 3, 29), (29, 37), True),
        ((29,), (29, 37), True),
        ((3, 29), (29,), True),
        ((2, 3, 5, 7), (3, 7, 4), False),
        ((2, 1, 5, 7), (3, 7, 4), False),
        ((7,), (7, 4), False),
        ((2, 5, 7), (7,), False),
        ((2, 5, 7), (2, 7, 3), True),
    ],
    ids=["2d-const", "batched-const", "vector-const", "matrix-vector-const", "batched", "broadcast", "vector",
         "matrix-vector", "3d-const"],
)  # fmt: skip
def test_matmul_matches_reference(a_shape, b_shape, b_const):
    rng = np.random.default_rng(2)
    values = [rng.standard_normal(a_shape, dtype=np.float32), rng.standard_normal(b_shape, dtype=np.float32)]
    consts = [None, values[1] if b_const else None]
    op, kept = MatMul.from_onnx({}, consts, "matmul", 13)
    assert kept == (0, 1)
    assert op.const_b == (b_const and len(b_shape) <= 2)
    (out_shape,) = op.infer([a_shape, b_shape], consts)
    assert out_shape == np.matmul(values[0], values[1]).shape
    kernel, y = bind_on_arena(op, values, consts, out_shape)
    kernel()
    assert_close(y, op.reference(values)[0])
    assert_no_numpy_allocations(kernel)


def matmul_case(a_shape, n, seed=3):
    """-> (op, values in ONNX layout, consts, output shape) of A @ B with a constant (K, n) B."""
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(a_shape, dtype=np.float32)]
    values.append(rng.standard_normal((a_shape[-1], n), dtype=np.float32))
    consts = [None, values[1]]
    op, _ = MatMul.from_onnx({}, consts, "matmul", 13)
    (out_shape,) = op.infer([v.shape for v in values], consts)
    return op, values, consts, out_shape


@pytest.mark.parametrize(
    ("a_shape", "n", "cuts"),
    [
        ((3, 29), 37, [0, 1, 16, 37]),
        ((1, 7, 24), 33, [0, 11, 22, 33]),  # transformer-like [1, S, K], odd N, 3 equal parts
        ((2, 3, 5, 24), 50, [0, 16, 33, 50]),  # rank 4: batch dims flattened into rows
        ((24,), 41, [0, 13, 27, 41]),  # a vector A: output [N]
        ((1, 1, 64), 101, [0, 34, 68, 101]),  # one token, N not divisible by the part count
        ((1, 9, 16), 17, [0, 17]),  # one part that is the whole
    ],
    ids=["2d", "batched", "rank4", "vector", "one-row", "whole-part"],
)
def test_matmul_column_parts_equal_the_whole_op(a_shape, n, cuts):
    op, values, consts, out_shape = matmul_case(a_shape, n)
    assert op.slice_axes([v.shape for v in values], [out_shape]) == (SliceAxis("channels", n),)
    whole, y_whole = bind_on_arena(op, values, consts, out_shape)
    whole()
    assert_close(y_whole, op.reference(values)[0])
    y = arena_views([out_shape])[0]
    y[...] = np.nan  # a column no part writes shows up
    for n0, n1 in itertools.pairwise(cuts):
        a, w = arena_views([values[0].shape, (n1 - n0, a_shape[-1])])
        a[...], w[...] = values[0], op.prepare(consts)[1][n0:n1]  # the part's rows of the weight
        kernel = op.bind([a, w], [y], None, Part("channels", n0, n1))
        kernel()
        assert_no_numpy_allocations(kernel)
    # Each output element is one dot product over the same K values: within float rounding of
    # the whole op (BLAS may block a narrow column block differently).
    np.testing.assert_allclose(y, y_whole, rtol=1e-5, atol=1e-5)


def test_matmul_part_refusals():
    op, values, consts, out_shape = matmul_case((2, 5, 8), 20)
    w = op.prepare(consts)[1]
    y = np.empty(out_shape, np.float32)
    with pytest.raises(ValueError, match="part"):
        op.bind([values[0], w], [y], None, Part("rows", 0, 1))
    with pytest.raises(ValueError, match="part"):
        op.bind([values[0], w[0:30]], [y], None, Part("channels", 10, 30))
    with pytest.raises(ShapeError, match=r"want B \(10, 8\)"):
        op.bind([values[0], w], [y], None, Part("channels", 0, 10))  # the whole weight for a part
    dynamic, _ = MatMul.from_onnx({}, [None, None], "scores", 13)
    with pytest.raises(ValueError, match="run-time operands"):
        dynamic.bind([values[0], values[1]], [y], None, Part("channels", 0, 10))


def test_matmul_declared_slicing():
    b = np.zeros((8, 4), np.float32)
    const, _ = MatMul.from_onnx({}, [None, b], "fc", 13)
    # A constant 2-D B: output columns, which are the rows of the prepared (N, K) weight.
    assert const.prepare([None, b])[1].shape == (4, 8)
    assert const.slice_axes([(2, 8), (8, 4)], [(2, 4)]) == (SliceAxis("channels", 4),)
    assert const.slice_axes([(1, 128, 8), (8, 4)], [(1, 128, 4)]) == (SliceAxis("channels", 4),)
    assert const.cost_kind([(2, 8), (8, 4)]) == "fc"
    assert const.shared_bytes([(1, 128, 8), (8, 4)]) == 4 * 128 * 8  # every part reads A whole
    # Two run-time operands (attention scores), a vector B, or a constant A: never cut.
    dynamic, _ = MatMul.from_onnx({}, [None, None], "scores", 13)
    assert dynamic.slice_axes([(1, 4, 9, 8), (1, 4, 8, 9)], [(1, 4, 9, 9)]) == ()
    vector, _ = MatMul.from_onnx({}, [None, np.zeros(8, np.float32)], "mv", 13)
    assert vector.const_b and vector.slice_axes([(2, 8), (8,)], [(2,)]) == ()
    both, _ = MatMul.from_onnx({}, [np.zeros((2, 8), np.float32), b], "cc", 13)
    assert not both.const_b and both.slice_axes([(2, 8), (8, 4)], [(2, 4)]) == ()


def test_matmul_errors():
    with pytest.raises(ShapeError, match="disagree on K"):
        MatMul().infer([(3, 4), (5, 6)], [None, None])
    with pytest.raises(ShapeError, match="do not broadcast"):
        MatMul().infer([(2, 3, 4), (3, 4, 6)], [None, None])
    with pytest.raises(ShapeError, match="rank >= 1"):
        MatMul().infer([(), (3,)], [None, None])


# ---- no allocation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("m", "c_shape"), [(1, (-1,)), (4, (-1,)), (4, (4, -1))])
def test_gemm_allocates_nothing(m, c_shape):
    op, values, consts, out_shape = gemm_case(m, 64, 300, c_shape, ("Sigmoid", 0.0, 0.0), transB=1)
    kernel, _ = bind_on_arena(op, values, consts, out_shape)
    assert_no_numpy_allocations(kernel)
    kernel, _ = bind_on_arena(op, values, consts, out_shape, Part("channels", 100, 300))
    assert_no_numpy_allocations(kernel)


def test_registered():
    assert op_class("Gemm") is Gemm
    assert op_class("MatMul") is MatMul
    # Cut by output channels (the rows of the prepared weight); a MatMul only with a constant B.
    assert Gemm().slice_axes([(2, 8), (8, 4), None], [(2, 4)]) == (SliceAxis("channels", 4),)
    assert MatMul().slice_axes([(2, 8), (8, 4)], [(2, 4)]) == ()
    assert MatMul(const_b=True).slice_axes([(2, 8), (8, 4)], [(2, 4)]) == (SliceAxis("channels", 4),)
