"""3-D Conv: the im2col and pointwise kernels against the reference on awkward shapes, whole and in
the parts the op declares; the reference against onnxruntime; a small video classifier end to end."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import helper

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.base import Axis, Part, SliceAxis
from flexnnd.ops.conv import Conv
from flexnnd.ops.conv3d import Conv3D
from tests.conftest import assert_model_matches_ort, make_model
from tests.ops.harness import arena_views, assert_no_numpy_allocations, ort_run

# (input, weight, attributes): size-1 axes, asymmetric pads, strides, dilations, groups, auto_pad.
CASES = [
    ((2, 4, 5, 7, 6), (6, 4, 3, 3, 3), {"pads": (1, 1, 1, 1, 1, 1)}),
    (
        (1, 3, 4, 9, 8),
        (8, 3, 2, 3, 3),
        {"strides": (2, 2, 1), "pads": (1, 0, 1, 0, 2, 1), "dilations": (1, 2, 1)},
    ),
    ((1, 6, 3, 5, 5), (6, 2, 3, 1, 3), {"group": 3, "pads": (1, 0, 1, 1, 0, 1)}),
    ((1, 5, 3, 5, 5), (5, 1, 3, 3, 3), {"group": 5, "pads": (1, 1, 1, 1, 1, 1), "strides": (1, 2, 2)}),
    ((1, 13, 4, 6, 9), (13, 1, 3, 3, 3), {"group": 13, "pads": (1, 1, 1, 1, 1, 1)}),
    (
        (2, 3, 5, 7, 10),
        (3, 1, 2, 3, 3),
        {"group": 3, "strides": (2, 1, 3), "dilations": (1, 2, 1), "pads": (0, 2, 1, 1, 0, 2)},
    ),
    ((2, 4, 3, 4, 5), (7, 4, 1, 1, 1), {}),  # pointwise
    ((1, 13, 2, 3, 3), (24, 13, 1, 1, 1), {"strides": (1, 2, 1)}),  # 1x1x1 strided: im2col
    ((1, 2, 5, 6, 7), (3, 2, 2, 2, 3), {"auto_pad": "SAME_UPPER", "strides": (2, 2, 3)}),
    ((1, 2, 1, 1, 7), (3, 2, 1, 1, 3), {"auto_pad": "SAME_LOWER"}),
    ((1, 3, 6, 5, 4), (13, 3, 3, 2, 2), {"auto_pad": "VALID", "dilations": (2, 1, 2)}),
    ((1, 1, 4, 4, 4), (1, 1, 4, 4, 4), {}),  # one output cell
]


def make(x_shape, w_shape, attrs, seed=0, activation=""):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    op, _ = Conv.from_onnx(attrs, [None, w, b], "conv3d", 17)
    if activation:
        op = Conv3D(**{**op.to_dict(), "activation": activation})
    return op, x, w, b


def bind(op, x, w, b, parts=(None,), residual=None):
    """Bind `parts` on arena views as the executor does (one scratch, each channel part given its
    weight rows); returns (kernels, output view)."""
    shapes = [x.shape, w.shape, b.shape]
    _, wp, bp = op.prepare([None, w, b])
    y_shape = op.infer(shapes, [None, w, b])[0]
    need = max(op.scratch_bytes(shapes, part) for part in parts) // 4
    extra = [residual.shape] if residual is not None else []
    xv, wv, bv, yv, sv, *rv = arena_views([x.shape, wp.shape, bp.shape, y_shape, (max(need, 1),), *extra])
    xv[...], wv[...], bv[...], yv[...] = x, wp, bp, np.nan  # NaN: an unwritten cell shows up
    if residual is not None:
        rv[0][...] = residual
    kernels = []
    for part in parts:
        wk, bk = wv, bv
        if part is not None and part.axis is Axis.CHANNELS:
            wk, bk = wv[part.start : part.stop], bv[part.start : part.stop]
        ins = [xv, wk, bk, *rv]
        kernels.append(op.bind(ins, [yv], sv[:need] if need else None, part))
    return kernels, yv


def assert_close(got, want):
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    assert err <= 1e-4 * max(1.0, float(np.max(np.abs(want)))), f"max |diff| {err}"


# ---- kernels vs reference ---------------------------------------------------------------------


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), CASES)
def test_kernel_matches_reference(x_shape, w_shape, attrs):
    op, x, w, b = make(x_shape, w_shape, attrs)
    assert isinstance(op, Conv3D)
    (kernel,), y = bind(op, x, w, b)
    kernel()
    assert_close(y, op.reference([x, w, b])[0])


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), CASES)
def test_declared_parts_cover_the_output(x_shape, w_shape, attrs):
    """Each declared axis cut into uneven parts computes the same output as the whole op."""
    op, x, w, b = make(x_shape, w_shape, attrs, seed=1)
    shapes = [x.shape, w.shape, b.shape]
    axes = op.slice_axes(shapes, op.infer(shapes, [None, w, b]))
    assert axes
    for axis in axes:
        cuts = sorted({0, axis.extent, *range(1, axis.extent, 3)})
        parts = [Part(axis.name, a, z) for a, z in itertools.pairwise(cuts)]
        kernels, y = bind(op, x, w, b, parts)
        for kernel in kernels:
            kernel()
        assert_close(y, op.reference([x, w, b])[0])


@pytest.mark.parametrize("activation", ["Relu", "Sigmoid"])
def test_fused_activation_and_residual(activation):
    op, x, w, b = make((1, 4, 3, 6, 5), (8, 4, 3, 3, 3), {"pads": (1, 1, 1, 1, 1, 1)}, activation=activation)
    (kernel,), y = bind(op, x, w, b)
    kernel()
    assert_close(y, op.reference([x, w, b])[0])
    residual = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
    op = Conv3D(**{**op.to_dict(), "residual": True})
    (kernel,), y = bind(op, x, w, b, residual=residual)
    kernel()
    assert_close(y, op.reference([x, w, b, residual])[0])


def test_bands_of_rows_bound_the_scratch():
    """A conv whose im2col exceeds a band runs in several bands, with the scratch of one."""
    op, x, w, b = make((1, 16, 6, 20, 20), (8, 16, 3, 3, 3), {"pads": (1, 1, 1, 1, 1, 1)})
    shapes = [x.shape, w.shape, b.shape]
    whole_im2col = 16 * 27 * 6 * 20 * 20 * 4
    assert op.scratch_bytes(shapes) < whole_im2col
    (kernel,), y = bind(op, x, w, b)
    kernel()
    assert_close(y, op.reference([x, w, b])[0])


# ---- reference vs onnxruntime -----------------------------------------------------------------


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), CASES)
def test_reference_matches_onnxruntime(x_shape, w_shape, attrs):
    op, x, w, b = make(x_shape, w_shape, attrs, seed=2)
    want = ort_run("Conv", [x], consts=[w, b], **attrs)
    got = op.reference([x, w, b])[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ---- allocation, slicing, round trip, refusals ----------------------------------------------


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"), [CASES[0], CASES[3], CASES[6]], ids=["im2col", "depthwise", "pointwise"]
)
def test_no_numpy_allocation_per_call(x_shape, w_shape, attrs):
    op, x, w, b = make(x_shape, w_shape, attrs)
    (kernel,), _ = bind(op, x, w, b)
    assert_no_numpy_allocations(kernel)


def test_slicing_declared():
    op, x, w, b = make(*CASES[0])
    shapes = [x.shape, w.shape, b.shape]
    assert op.slice_axes(shapes, op.infer(shapes, [None, w, b])) == (
        SliceAxis(Axis.CHANNELS, 6),
        SliceAxis(Axis.ROWS, 5 * 7, 6),
    )
    grouped, x, w, b = make(*CASES[2])  # grouped, not depthwise: rows only
    shapes = [x.shape, w.shape, b.shape]
    assert grouped.slice_axes(shapes, grouped.infer(shapes, [None, w, b])) == (
        SliceAxis(Axis.ROWS, 3 * 5, 5),
    )
    assert not op.shares_operand(shapes, Part(Axis.CHANNELS, 2, 4))


def test_saved_op_comes_back_as_conv3d():
    op, *_ = make(*CASES[1])
    assert Conv.from_dict(op.to_dict()) == op
    assert type(Conv.from_dict(op.to_dict())) is Conv3D
    assert op.op_type == "Conv"


def test_refusals_name_the_numbers():
    w6 = np.zeros((2, 1, 2, 2, 2, 2), dtype=np.float32)
    with pytest.raises(UnsupportedOp, match="4-D convolution"):
        Conv.from_onnx({}, [None, w6], "conv4d", 17)
    w5 = np.zeros((2, 1, 2, 2, 2), dtype=np.float32)
    with pytest.raises(UnsupportedOp, match=r"pads=\[1, 1, 1, 1\]"):
        Conv.from_onnx({"pads": [1, 1, 1, 1]}, [None, w5], "conv", 17)
    op, _ = Conv.from_onnx({}, [None, w5], "conv", 17)
    with pytest.raises(ShapeError, match=r"5-D.*\(1, 1, 4, 4\)"):
        op.infer([(1, 1, 4, 4), w5.shape], [None, w5])
    with pytest.raises(ShapeError, match=r"empty output.*\(1, 1, 1, 4, 4\)"):
        op.infer([(1, 1, 1, 4, 4), w5.shape], [None, w5])
    with pytest.raises(ShapeError, match="3 channels"):
        op.infer([(1, 3, 4, 4, 4), w5.shape], [None, w5])


# ---- a small video classifier end to end ----------------------------------------------------


def test_video_classifier_matches_onnxruntime(tmp_path):
    """Conv3d -> BatchNorm -> Relu -> MaxPool3d -> Conv3d -> Relu -> Conv3d 1x1x1 -> GlobalAveragePool
    -> Flatten -> Gemm on an 8-frame 32x32 clip; the middle conv's 0.9 MB of weights make the
    smallest plan cut it into channel parts."""
    rng = np.random.default_rng(21)

    def randn(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = [
        ("w1", randn(32, 3, 3, 3, 3, scale=0.3)),
        ("b1", randn(32)),
        ("gamma", 1 + randn(32)),
        ("beta", randn(32)),
        ("mean", randn(32)),
        ("var", (1 + np.abs(randn(32))).astype(np.float32)),
        ("w2", randn(256, 32, 3, 3, 3)),
        ("w3", randn(256, 256, 1, 1, 1)),
        ("wfc", randn(5, 256)),
        ("bfc", randn(5)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1, 1, 1], strides=[1, 2, 2]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], kernel_shape=[2, 3, 3], strides=[2, 2, 2], pads=[0, 1, 1, 0, 1, 1]
        ),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"]),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wfc", "bfc"], ["y"], transB=1),
    ]
    model = make_model(nodes, [("x", [1, 3, 8, 32, 32])], [("y", None)], inits, opset=17)
    full, smallest = assert_model_matches_ort(model, {"x": randn(1, 3, 8, 32, 32, scale=1.0)}, tmp_path)
    assert smallest < full
