"""Conv and BatchNormalization kernels against their numpy references, on awkward shapes."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops import conv_geometry, conv_winograd
from flexnnd.ops.base import Part, SliceAxis, op_class
from flexnnd.ops.conv import Conv
from flexnnd.ops.norm import BatchNormalization
from tests.ops.harness import arena_views, assert_no_numpy_allocations, ort_run

ACTIVATIONS = [
    ("", 0.0, 0.0),
    ("Relu", 0.0, 0.0),
    ("Clip", 0.0, 6.0),
    ("LeakyRelu", 0.1, 0.0),
    ("Sigmoid", 0.0, 0.0),
    ("HardSigmoid", 0.2, 0.5),
    ("HardSwish", 0.0, 0.0),
]


def in_arena(*values):
    """Arena views (see harness.arena_views) holding `values`; a shape instead of an array gives
    a NaN-filled view, so that anything a kernel leaves unwritten shows up."""
    shapes = [v if isinstance(v, tuple) else v.shape for v in values]
    views = arena_views(shapes)
    for view, v in zip(views, values, strict=True):
        view[...] = np.nan if isinstance(v, tuple) else v
    return views


def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    err = float(np.max(np.abs(got.astype(np.float64) - ref)))
    assert err <= 1e-4 * max(1.0, float(np.max(np.abs(ref)))), f"max |diff| {err}"


@dataclasses.dataclass
class ConvCase:
    op: Conv
    x: np.ndarray  # ONNX-layout values
    w: np.ndarray
    b: np.ndarray | None
    y_shape: tuple[int, ...]

    @property
    def shapes(self):
        return [self.x.shape, self.w.shape] + ([self.b.shape] if self.b is not None else [])

    def reference(self) -> np.ndarray:
        return self.op.reference([self.x, self.w, self.b])[0]

    def bind(self, part=None, y=None, scratch_floats=None, reuse=False):
        """Bind on arena views; returns (kernel, output view). `y` reuses an output view."""
        prepared = self.op.prepare([None, self.w, self.b])
        wp, bp = prepared[1], (prepared[2] if self.b is not None else None)
        if part is not None and part.axis == "channels":
            wp = wp[part.start : part.stop]
            bp = None if bp is None else bp[part.start : part.stop]
        need = self.op.scratch_bytes(self.shapes, part) // 4 if scratch_floats is None else scratch_floats
        consts = [wp] if bp is None else [wp, bp]
        x, *weights, y_new, scratch = in_arena(self.x, *consts, self.y_shape, (max(need, 1),))
        ins = [x, *weights] if bp is not None else [x, *weights, None]
        y = y_new if y is None else y
        return self.op.bind(ins, [y], None if need == 0 else scratch[:need], part, reuse), y

    def bind_parts(self, parts):
        """Bind `parts` in order as the executor does: one input, one output and one scratch
        region (the most any part needs) for all of them, each later part that shares the
        operand told to reuse it (planner.verify.operand_reuse). Returns (kernels, input, output)."""
        prepared = self.op.prepare([None, self.w, self.b])
        need = max(self.op.scratch_bytes(self.shapes, part) // 4 for part in parts)
        x, y, scratch = in_arena(self.x, self.y_shape, (max(need, 1),))
        kernels = []
        for part in parts:
            wp, bp = prepared[1], (prepared[2] if self.b is not None else None)
            if part is not None and part.axis == "channels":
                wp = wp[part.start : part.stop]
                bp = None if bp is None else bp[part.start : part.stop]
            weights = in_arena(*(c for c in (wp, bp) if c is not None))
            ins = [x, weights[0], weights[1] if bp is not None else None]
            reuse = part is not None and part.start > 0 and self.op.shares_operand(self.shapes, part)
            kernels.append(self.op.bind(ins, [y], None if need == 0 else scratch[:need], part, reuse))
        return kernels, x, y, scratch


def conv_case(x_shape, w_shape, bias=True, activation=("", 0.0, 0.0), seed=0, **attrs) -> ConvCase:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = rng.standard_normal(w_shape, dtype=np.float32)
    b = rng.standard_normal(w_shape[0], dtype=np.float32) if bias else None
    consts = [None, w, b] if bias else [None, w]
    op, kept = Conv.from_onnx(attrs, consts, "conv", 17)
    assert kept == tuple(range(len(consts)))
    name, alpha, beta = activation
    op = dataclasses.replace(op, activation=name, activation_alpha=alpha, activation_beta=beta)
    shapes = [x.shape, w.shape] + ([b.shape] if bias else [])
    (y_shape,) = op.infer(shapes, consts)
    return ConvCase(op, x, w, b, y_shape)


# (id, input shape, weight shape, attributes): every path, on awkward shapes.
CASES = [
    # pointwise: 1×1, stride 1, no pad
    ("1x1", (1, 13, 7, 7), (24, 13, 1, 1), {}),
    ("1x1-cin1", (1, 1, 17, 13), (3, 1, 1, 1), {}),
    ("1x1-group2-batch2", (2, 24, 7, 13), (6, 12, 1, 1), {"group": 2}),
    # im2col + GEMM
    ("3x3-pad1", (1, 3, 17, 13), (24, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
    ("3x3-batch2", (2, 13, 17, 17), (24, 13, 3, 3), {"pads": [1, 1, 1, 1]}),
    ("5x5-s2-asym", (1, 13, 17, 17), (13, 13, 5, 5), {"pads": [2, 1, 0, 2], "strides": [2, 2]}),
    ("7x7-s3", (1, 3, 17, 13), (24, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [3, 3]}),
    ("11x11-s2x3", (1, 3, 31, 29), (13, 3, 11, 11), {"pads": [2, 5, 3, 1], "strides": [2, 3]}),
    ("3x3-dil2", (2, 13, 17, 13), (24, 13, 3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    (
        "3x5-dil2x1-s1x2",
        (1, 13, 17, 13),
        (1, 13, 3, 5),
        {"pads": [1, 2, 1, 2], "dilations": [2, 1], "strides": [1, 2]},
    ),
    ("1x1-s2", (1, 24, 13, 13), (13, 24, 1, 1), {"strides": [2, 2]}),
    ("1x1-pad", (1, 13, 7, 7), (24, 13, 1, 1), {"pads": [1, 0, 0, 1]}),
    ("4x4-same-upper-s2", (1, 3, 17, 13), (13, 3, 4, 4), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("4x4-same-lower-s2", (1, 3, 17, 13), (13, 3, 4, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ("3x3-same-upper", (1, 13, 7, 13), (3, 13, 3, 3), {"auto_pad": "SAME_UPPER"}),
    ("3x5-valid", (1, 13, 17, 13), (24, 13, 3, 5), {"auto_pad": "VALID"}),
    ("3x3-no-pad-wide-kernel", (1, 3, 7, 17), (13, 3, 7, 3), {}),
    # im2col_strided (column stride, kernel >= STRIDED_MIN_KW wide): the network stems and odd ones
    ("stem-7x7-s2-cin1", (1, 1, 23, 19), (5, 1, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}),
    (
        "stem-5x5-s2-cin2-asym-batch2",
        (2, 2, 17, 21),
        (13, 2, 5, 5),
        {"pads": [0, 2, 1, 3], "strides": [2, 2]},
    ),
    (
        "stem-7x7-s3-cin4-dil2",
        (1, 4, 31, 29),
        (7, 4, 7, 7),
        {"pads": [1, 4, 2, 0], "strides": [3, 3], "dilations": [2, 2]},
    ),
    ("stem-5x5-s1x2-cin3", (1, 3, 13, 22), (9, 3, 5, 5), {"pads": [2, 2, 2, 2], "strides": [1, 2]}),
    ("stem-5x5-s3x2-no-pad", (1, 4, 20, 20), (6, 4, 5, 5), {"strides": [3, 2]}),
    (
        "stem-6x5-s2x3-dil1x2",
        (1, 3, 19, 29),
        (7, 3, 6, 5),
        {"pads": [2, 3, 1, 0], "strides": [2, 3], "dilations": [1, 2]},
    ),
    # grouped (1 < group < C): per-group im2col + GEMM
    ("group2", (2, 24, 13, 13), (24, 12, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}),
    ("group3-5x5-s2", (1, 24, 17, 17), (12, 8, 5, 5), {"group": 3, "pads": [2, 2, 2, 2], "strides": [2, 2]}),
    ("depthwise-multiplier2", (1, 13, 13, 13), (26, 1, 3, 3), {"group": 13, "pads": [1, 1, 1, 1]}),
    # depthwise (group == Cin == Cout)
    ("dw3x3", (2, 24, 17, 13), (24, 1, 3, 3), {"group": 24, "pads": [1, 1, 1, 1]}),
    ("dw3x3-s2-asym", (1, 24, 17, 13), (24, 1, 3, 3), {"group": 24, "pads": [0, 1, 1, 0], "strides": [2, 2]}),
    ("dw3x3-s2-small", (1, 13, 7, 7), (13, 1, 3, 3), {"group": 13, "pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("dw3x3-s2-wide", (1, 3, 41, 45), (3, 1, 3, 3), {"group": 3, "pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("dw3x3-s1x2", (1, 13, 17, 13), (13, 1, 3, 3), {"group": 13, "pads": [1, 1, 1, 1], "strides": [1, 2]}),
    ("dw3x3-s3", (1, 13, 17, 17), (13, 1, 3, 3), {"group": 13, "pads": [1, 1, 1, 1], "strides": [3, 3]}),
    ("dw3x3-dil2", (1, 13, 17, 13), (13, 1, 3, 3), {"group": 13, "pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    ("dw5x5-s2", (1, 13, 17, 17), (13, 1, 5, 5), {"group": 13, "pads": [2, 2, 2, 2], "strides": [2, 2]}),
    ("dw7x7-s3", (1, 3, 17, 13), (3, 1, 7, 7), {"group": 3, "pads": [3, 3, 3, 3], "strides": [3, 3]}),
    ("dw11x11", (1, 3, 17, 17), (3, 1, 11, 11), {"group": 3, "pads": [5, 5, 5, 5]}),
    ("dw1x1", (1, 13, 7, 7), (13, 1, 1, 1), {"group": 13}),
    (
        "dw3x3-same-upper-s2",
        (2, 13, 17, 13),
        (13, 1, 3, 3),
        {"group": 13, "auto_pad": "SAME_UPPER", "strides": [2, 2]},
    ),
    ("dw3x3-valid", (1, 24, 7, 7), (24, 1, 3, 3), {"group": 24, "auto_pad": "VALID"}),
]


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_conv_matches_reference(x_shape, w_shape, attrs):
    case = conv_case(x_shape, w_shape, **attrs)
    kernel, y = case.bind()
    kernel()
    assert_close(y, case.reference())


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=[a[0] or "none" for a in ACTIVATIONS])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"),
    [
        ((1, 13, 7, 7), (24, 13, 1, 1), {}),
        ((1, 3, 17, 13), (24, 3, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
        ((2, 24, 13, 13), (24, 1, 3, 3), {"group": 24, "pads": [1, 1, 1, 1]}),
        ((2, 3, 19, 17), (13, 3, 7, 7), {"pads": [3, 2, 1, 3], "strides": [2, 2]}),
    ],
    ids=["pointwise", "im2col", "depthwise", "im2col-strided"],
)
def test_fused_activation(x_shape, w_shape, attrs, activation):
    case = conv_case(x_shape, w_shape, activation=activation, **attrs)
    kernel, y = case.bind()
    kernel()
    assert_close(y, case.reference())


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"),
    [
        ((1, 13, 7, 7), (24, 13, 1, 1), {}),
        ((1, 3, 17, 13), (24, 3, 3, 3), {}),
        ((1, 13, 9, 9), (13, 1, 3, 3), {"group": 13}),
    ],
    ids=["pointwise", "im2col", "depthwise"],
)
def test_without_bias(x_shape, w_shape, attrs):
    case = conv_case(x_shape, w_shape, bias=False, activation=("Relu", 0.0, 0.0), **attrs)
    kernel, y = case.bind()
    kernel()
    assert_close(y, case.reference())


def test_reference_matches_onnxruntime():
    """The oracle itself, on the attributes most easily got wrong (auto_pad, asymmetric pads)."""
    for x_shape, w_shape, attrs in [
        ((1, 3, 17, 13), (13, 3, 4, 4), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
        ((1, 3, 17, 13), (13, 3, 4, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
        ((1, 13, 17, 17), (13, 13, 5, 5), {"pads": [2, 1, 0, 2], "strides": [2, 3], "dilations": [1, 2]}),
        ((1, 24, 17, 17), (12, 8, 5, 5), {"group": 3, "pads": [2, 2, 2, 2], "strides": [2, 2]}),
    ]:
        case = conv_case(x_shape, w_shape, **attrs)
        assert_close(ort_run("Conv", [case.x], consts=(case.w, case.b), **attrs), case.reference())


# ---- Winograd -------------------------------------------------------------------------------------
@pytest.fixture
def winograd_everywhere(monkeypatch):
    """Every 3x3 stride-1 dense conv takes the Winograd path, however small."""
    monkeypatch.setattr(conv_geometry, "WINO_MIN_WIDTH", 1)
    monkeypatch.setattr(conv_geometry, "WINO_MIN_SCORE", 0)


@pytest.fixture
def winograd_tiny_blocks(monkeypatch, winograd_everywhere):
    """Bands of one tile row and chunks of one output channel: every loop of the path runs."""
    monkeypatch.setattr(conv_winograd, "WINO_BAND_BYTES", 1)
    monkeypatch.setattr(conv_winograd, "WINO_MIN_TILES", 1)
    monkeypatch.setattr(conv_winograd, "WINO_WEIGHT_BYTES", 1)


WINOGRAD_CASES = [
    ("odd-plane", (1, 13, 17, 13), (24, 13, 3, 3), {"pads": [1, 1, 1, 1]}),
    ("asym-pads", (2, 3, 16, 9), (13, 3, 3, 3), {"pads": [0, 2, 1, 0]}),
    ("no-pad", (1, 24, 9, 8), (1, 24, 3, 3), {}),
    ("same-lower", (1, 13, 7, 13), (13, 13, 3, 3), {"auto_pad": "SAME_LOWER"}),
    ("tiny", (1, 1, 3, 3), (1, 1, 3, 3), {}),
]


@pytest.mark.usefixtures("winograd_everywhere")
@pytest.mark.parametrize("activation", [("", 0.0, 0.0), ("Clip", 0.0, 6.0)], ids=["none", "clip"])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"), [c[1:] for c in WINOGRAD_CASES], ids=[c[0] for c in WINOGRAD_CASES]
)
def test_winograd_matches_reference(x_shape, w_shape, attrs, activation):
    case = conv_case(x_shape, w_shape, activation=activation, **attrs)
    assert case.op.geometry(case.x.shape, case.w.shape[0]).winograd
    kernel, y = case.bind()
    kernel()
    assert_close(y, case.reference())


@pytest.mark.usefixtures("winograd_tiny_blocks")
@pytest.mark.parametrize("bias", [True, False])
def test_winograd_in_bands_and_chunks(bias):
    case = conv_case(
        (2, 13, 17, 11), (5, 13, 3, 3), bias=bias, activation=("Relu", 0.0, 0.0), pads=[1, 1, 1, 1]
    )
    kernel, y = case.bind()
    kernel()
    assert_close(y, case.reference())


def test_winograd_is_chosen_where_it_pays():
    def path(x_shape, cout):
        return Conv(kernel_shape=(3, 3), pads=(1, 1, 1, 1)).geometry(x_shape, cout).winograd

    assert path((1, 64, 56, 56), 64) and path((1, 128, 28, 28), 128) and path((1, 64, 224, 224), 64)
    assert path((1, 32, 28, 28), 96) and path((1, 32, 27, 27), 128)
    assert path((1, 256, 14, 14), 256) and path((1, 64, 13, 13), 256)
    assert not path((1, 512, 7, 7), 512) and not path((1, 16, 55, 55), 64) and not path((1, 16, 28, 28), 32)


def test_winograd_chunks_narrow_planes_finer():
    """13-14 wide planes keep a chunk's transformed weights at WINO_NARROW_WEIGHT_BYTES."""
    geo = Conv(kernel_shape=(3, 3), pads=(1, 1, 1, 1)).geometry((1, 256, 14, 14), 256)
    plan = conv_winograd.WinogradPlan.of(geo, 14, 256)
    assert plan.buffers["u"] * 4 <= conv_winograd.WINO_NARROW_WEIGHT_BYTES < 256 * 256 * 16 * 4
    assert not Conv(kernel_shape=(3, 3), strides=(2, 2)).geometry((1, 64, 56, 56), 64).winograd


def test_winograd_row_bands_chunk_their_weights():
    """A band of rows transforms its weights in small chunks, so its scratch shrinks with the band
    (GoogLeNet inception3b's 128->192 at 28 wide: 3.7 MB for half the rows when chunked by 192)."""
    geo = Conv(kernel_shape=(3, 3), pads=(1, 1, 1, 1)).geometry((1, 128, 28, 28), 192)
    whole = conv_winograd.WinogradPlan.of(geo, 28, 192)
    band = conv_winograd.WinogradPlan.of(geo, 14, 192)
    assert whole.chunk == 192 and band.chunk <= conv_winograd.WINO_SLICED_CHUNK
    assert 4 * sum(band.buffers.values()) < 1.2e6 < 3.7e6 < 4 * sum(whole.buffers.values())
    case = conv_case((1, 128, 28, 28), (192, 128, 3, 3), activation=("Relu", 0.0, 0.0), pads=[1, 1, 1, 1])
    whole_kernel, y_whole = case.bind()
    whole_kernel()
    y = _run_parts(case, [Part("rows", 0, 14), Part("rows", 14, 28)])
    np.testing.assert_allclose(y, y_whole, rtol=1e-5, atol=1e-4)


def test_winograd_at_a_real_layer_size():
    case = conv_case((1, 64, 56, 56), (64, 64, 3, 3), activation=("Relu", 0.0, 0.0), pads=[1, 1, 1, 1])
    kernel, y = case.bind()
    kernel()
    assert_close(y, case.reference())


def test_strided_im2col_is_chosen_for_wide_strided_kernels():
    """The stems (7x7/2, 3x3/2 on 224x224) take im2col_strided; small 3x3/2, 1x1/2 and stride-1
    convs keep the per-tap gather (faster there)."""
    for w_shape, attrs in [
        ((64, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}),
        ((64, 3, 3, 3), {"strides": [2, 2]}),
        ((32, 3, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ]:
        stem = conv_case((1, 3, 224, 224), w_shape, **attrs)
        assert stem.op.geometry(stem.x.shape, w_shape[0]).strided
    for x_shape, w_shape, attrs in [
        ((1, 64, 56, 56), (128, 64, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
        ((1, 64, 224, 224), (8, 64, 1, 1), {"strides": [2, 2]}),
        ((1, 3, 32, 32), (8, 3, 7, 7), {"pads": [3, 3, 3, 3]}),
    ]:
        op = conv_case((1, 1, 9, 9), (1, 1, *w_shape[2:]), **attrs).op  # only its attributes
        assert not op.geometry(x_shape, w_shape[0], w_shape[2:]).strided


STRIDED_CASES = [c for c in CASES if c[3].get("strides", [1, 1])[1] > 1 and "group" not in c[3]]


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"), [c[1:] for c in STRIDED_CASES], ids=[c[0] for c in STRIDED_CASES]
)
def test_strided_im2col_on_any_kernel_width(monkeypatch, x_shape, w_shape, attrs):
    """im2col_strided is also right on the narrow kernels (3x3, 4x4, 1x1) it is not chosen for."""
    monkeypatch.setattr(conv_geometry, "STRIDED_MIN_KW", 1)
    case = conv_case(x_shape, w_shape, activation=("Relu", 0.0, 0.0), **attrs)
    assert case.op.geometry(case.x.shape, w_shape[0]).strided
    kernel, y = case.bind()
    kernel()
    assert_close(y, case.reference())
    assert_no_numpy_allocations(kernel)


# ---- parts -----------------------------------------------------------------------------------------
def _run_parts(case: ConvCase, parts: list[Part]) -> np.ndarray:
    kernels, _, y, _ = case.bind_parts(parts)  # y: a NaN-filled output view that every part writes into
    for kernel in kernels:
        kernel()
    return y


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"),
    [
        ((2, 13, 17, 13), (24, 13, 3, 3), {"pads": [1, 2, 0, 1], "strides": [1, 1]}),
        ((1, 13, 17, 13), (24, 13, 5, 5), {"pads": [2, 2, 2, 2], "strides": [2, 2]}),
        ((1, 13, 17, 13), (24, 13, 1, 1), {}),
        ((2, 24, 17, 13), (24, 1, 3, 3), {"group": 24, "pads": [1, 1, 1, 1]}),
        ((1, 24, 17, 13), (24, 1, 3, 3), {"group": 24, "pads": [1, 1, 1, 1], "strides": [2, 2]}),
        ((1, 24, 13, 13), (24, 12, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}),
        ((2, 3, 29, 27), (13, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}),
        ((1, 4, 31, 29), (7, 4, 5, 5), {"pads": [1, 2, 0, 2], "strides": [3, 3]}),
    ],
    ids=[
        "im2col",
        "im2col-s2",
        "pointwise",
        "depthwise",
        "depthwise-s2",
        "group2",
        "stem-7x7-s2",
        "stem-5x5-s3",
    ],
)
def test_row_bands_cover_the_whole_op(x_shape, w_shape, attrs):
    _check_row_bands(conv_case(x_shape, w_shape, activation=("Relu", 0.0, 0.0), **attrs))


@pytest.mark.usefixtures("winograd_everywhere")
def test_winograd_row_bands_cover_the_whole_op():
    case = conv_case((2, 13, 17, 13), (24, 13, 3, 3), activation=("Relu", 0.0, 0.0), pads=[1, 2, 0, 1])
    assert case.op.geometry(case.x.shape, 24).winograd
    _check_row_bands(case)


def _check_row_bands(case: ConvCase) -> None:
    whole, y_whole = case.bind()
    whole()
    rows = case.y_shape[2]
    cuts = [0, 1, 3, rows // 2 + 1, rows]
    y = _run_parts(case, [Part("rows", a, b) for a, b in itertools.pairwise(cuts)])
    np.testing.assert_allclose(y, y_whole, rtol=1e-5, atol=1e-5)
    full = case.op.scratch_bytes(case.shapes)
    band = case.op.scratch_bytes(case.shapes, Part("rows", 3, 5))
    if full:
        assert band < full


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs", "cuts"),
    [
        ((2, 13, 17, 13), (24, 13, 3, 3), {"pads": [1, 1, 1, 1]}, [0, 5, 13, 24]),
        ((1, 13, 7, 7), (24, 13, 1, 1), {}, [0, 1, 24]),
        ((1, 24, 13, 13), (24, 12, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, [0, 12, 24]),
        ((1, 24, 13, 13), (24, 8, 3, 3), {"group": 3, "pads": [1, 1, 1, 1]}, [0, 16, 24]),
        ((2, 24, 13, 13), (24, 1, 3, 3), {"group": 24, "pads": [1, 1, 1, 1]}, [0, 5, 24]),
        ((2, 3, 21, 19), (13, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}, [0, 5, 13]),
        ((1, 24, 17, 17), (12, 8, 5, 5), {"group": 3, "pads": [2, 2, 2, 2], "strides": [2, 2]}, [0, 4, 12]),
    ],
    ids=["im2col", "pointwise", "group2", "group3-two-groups-at-once", "depthwise", "stem", "group3-strided"],
)
def test_channel_parts_cover_the_whole_op(x_shape, w_shape, attrs, cuts):
    _check_channel_parts(conv_case(x_shape, w_shape, activation=("Clip", 0.0, 6.0), **attrs), cuts)


@pytest.mark.usefixtures("winograd_everywhere")
def test_winograd_channel_parts_cover_the_whole_op():
    case = conv_case((1, 13, 17, 13), (24, 13, 3, 3), activation=("Clip", 0.0, 6.0), pads=[1, 1, 1, 1])
    _check_channel_parts(case, [0, 5, 13, 24])


def _check_channel_parts(case: ConvCase, cuts) -> None:
    whole, y_whole = case.bind()
    whole()
    y = _run_parts(case, [Part("channels", a, b) for a, b in itertools.pairwise(cuts)])
    np.testing.assert_allclose(y, y_whole, rtol=1e-5, atol=1e-5)


# (id, input, weight, attributes, whether channel parts share one im2col / Winograd input)
SHARED_CASES = [
    ("im2col-3x3", (1, 32, 7, 7), (64, 32, 3, 3), {"pads": [1, 1, 1, 1]}, True),
    ("im2col-3x3-s2", (1, 32, 15, 14), (64, 32, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, True),
    ("stem-7x7-s2", (1, 3, 29, 27), (64, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}, True),
    ("winograd-14", (1, 64, 14, 14), (64, 64, 3, 3), {"pads": [1, 1, 1, 1]}, True),
    ("winograd-56-two-bands", (1, 32, 56, 56), (64, 32, 3, 3), {"pads": [1, 1, 1, 1]}, False),
    ("pointwise", (1, 64, 7, 7), (64, 64, 1, 1), {}, False),
]


def _channel_parts(cout: int, count: int) -> list[Part]:
    return [Part("channels", i * cout // count, (i + 1) * cout // count) for i in range(count)]


@pytest.mark.parametrize("count", [2, 4, 16])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs", "shared"), [c[1:] for c in SHARED_CASES], ids=[c[0] for c in SHARED_CASES]
)
def test_channel_parts_in_order_equal_the_whole_conv(x_shape, w_shape, attrs, shared, count):
    case = conv_case(x_shape, w_shape, activation=("Relu", 0.0, 0.0), **attrs)
    parts = _channel_parts(w_shape[0], count)
    assert all(case.op.shares_operand(case.shapes, part) == shared for part in parts)
    if shared:  # sharing costs no scratch: every part needs at most what the whole conv needs
        most = max(case.op.scratch_bytes(case.shapes, part) for part in parts)
        assert most <= case.op.scratch_bytes(case.shapes)
    whole, y_whole = case.bind()
    whole()
    np.testing.assert_allclose(_run_parts(case, parts), y_whole, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"),
    [c[1:4] for c in SHARED_CASES if c[4]],
    ids=[c[0] for c in SHARED_CASES if c[4]],
)
def test_later_parts_reuse_what_part_0_computed(x_shape, w_shape, attrs):
    """After the input changes, the later parts alone still compute from part 0's im2col of the
    old input (the reuse is real); run from part 0, as the executor does, all parts are right."""
    case = conv_case(x_shape, w_shape, **attrs)
    kernels, x, y, _ = case.bind_parts(_channel_parts(w_shape[0], 4))
    for kernel in kernels:
        kernel()
    old = y.copy()
    changed = dataclasses.replace(case, x=np.random.default_rng(1).standard_normal(x_shape, dtype=np.float32))
    x[...] = changed.x
    for kernel in kernels[1:]:
        kernel()
    later = slice(w_shape[0] // 4, None)
    np.testing.assert_array_equal(y[:, later], old[:, later])
    assert not np.allclose(old, changed.reference(), atol=1e-2)
    for kernel in kernels:
        kernel()
    assert_close(y, changed.reference())


def test_reuse_only_for_a_later_part_that_shares():
    """bind() takes `reuse` from the plan and refuses it where there is nothing to reuse: for the
    first part, or for a conv whose parts each compute their own im2col (batch 2)."""
    case = conv_case((1, 32, 7, 7), (64, 32, 3, 3), pads=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="cannot reuse"):
        case.bind(Part("channels", 0, 16), reuse=True)
    batch2 = conv_case((2, 32, 7, 7), (64, 32, 3, 3), pads=[1, 1, 1, 1])
    assert not batch2.op.shares_operand(batch2.shapes, Part("channels", 16, 32))
    with pytest.raises(ValueError, match="cannot reuse"):
        batch2.bind(Part("channels", 16, 32), reuse=True)
    # Not told to reuse, a later part computes the operand itself: right on its own.
    assert case.op.shares_operand(case.shapes, Part("channels", 16, 32))
    kernel, y = case.bind(Part("channels", 16, 32))
    kernel()
    assert_close(y[:, 16:32], case.reference()[:, 16:32])


def test_slice_axes_cut_channels_only_in_whole_groups():
    """Every conv may be cut by bands of output rows; by channels only dense or depthwise ones, so
    that a part is whole groups of one channel."""
    x, out = (1, 8, 10, 12), (1, 16, 8, 10)
    dense = Conv(kernel_shape=(3, 3)).slice_axes([x, (16, 8, 3, 3), None], [out])
    assert dense == (SliceAxis("channels", 16), SliceAxis("rows", 8, 10))
    grouped = Conv(kernel_shape=(3, 3), group=2).slice_axes([x, (16, 4, 3, 3), None], [out])
    assert grouped == (SliceAxis("rows", 8, 10),)
    depthwise = Conv(kernel_shape=(3, 3), group=8).slice_axes([x, (8, 1, 3, 3), None], [(1, 8, 8, 10)])
    assert depthwise == (SliceAxis("channels", 8), SliceAxis("rows", 8, 10))


def test_channel_parts_must_align_to_groups():
    case = conv_case((1, 24, 13, 13), (24, 12, 3, 3), group=2, pads=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="align"):
        case.bind(Part("channels", 0, 5))
    with pytest.raises(ValueError, match="outside"):
        case.bind(Part("rows", 0, 99))


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"),
    [
        ((1, 13, 17, 13), (24, 13, 3, 3), {"pads": [1, 1, 1, 1]}),
        ((1, 24, 17, 13), (24, 1, 3, 3), {"group": 24, "pads": [1, 1, 1, 1], "strides": [2, 2]}),
        ((1, 3, 29, 27), (13, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}),
    ],
    ids=["im2col", "depthwise", "im2col-strided"],
)
def test_scratch_bytes_is_exactly_what_bind_needs(x_shape, w_shape, attrs):
    case = conv_case(x_shape, w_shape, **attrs)
    for part in (None, Part("rows", 2, 5)):
        need = case.op.scratch_bytes(case.shapes, part) // 4
        kernel, _ = case.bind(part, scratch_floats=need)
        kernel()
        with pytest.raises(ValueError, match="scratch"):
            case.bind(part, scratch_floats=need - 1)


def test_large_conv_is_banded_within_the_cache_budget():
    """The whole op needs less scratch than a full im2col matrix, and still matches."""
    case = conv_case((1, 64, 56, 56), (8, 64, 3, 3), pads=[1, 1, 1, 1])
    assert case.op.scratch_bytes(case.shapes) < 64 * 9 * 56 * 56 * 4 // 4
    kernel, y = case.bind()
    kernel()
    assert_close(y, case.reference())


# ---- no allocation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"),
    [
        ((2, 13, 17, 13), (24, 13, 1, 1), {}),
        ((2, 13, 17, 13), (24, 13, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 1]}),
        ((2, 24, 17, 13), (24, 1, 3, 3), {"group": 24, "pads": [1, 1, 1, 1]}),
        ((2, 24, 17, 13), (24, 8, 3, 3), {"group": 3, "pads": [1, 1, 1, 1]}),
        ((2, 3, 29, 27), (13, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}),
    ],
    ids=["pointwise", "im2col", "depthwise", "grouped", "im2col-strided"],
)
def test_kernels_allocate_nothing(x_shape, w_shape, attrs):
    case = conv_case(x_shape, w_shape, activation=("HardSwish", 0.0, 0.0), **attrs)
    kernel, _ = case.bind()
    assert_no_numpy_allocations(kernel)
    kernel, _ = case.bind(Part("rows", 2, 6))
    assert_no_numpy_allocations(kernel)


@pytest.mark.usefixtures("winograd_everywhere")
def test_winograd_allocates_nothing_and_needs_its_scratch_exactly():
    case = conv_case((2, 13, 17, 13), (24, 13, 3, 3), activation=("HardSwish", 0.0, 0.0), pads=[1, 1, 1, 1])
    for part in (None, Part("rows", 2, 7), Part("channels", 3, 11)):
        need = case.op.scratch_bytes(case.shapes, part) // 4
        kernel, _ = case.bind(part, scratch_floats=need)
        assert_no_numpy_allocations(kernel)
        with pytest.raises(ValueError, match="scratch"):
            case.bind(part, scratch_floats=need - 1)


# ---- contract ----------------------------------------------------------------------------------------
def test_registered_and_attributes():
    assert op_class("Conv") is Conv
    assert op_class("BatchNormalization") is BatchNormalization
    case = conv_case((1, 3, 17, 13), (24, 3, 5, 3), pads=[1, 1, 1, 1], strides=[2, 2])
    assert case.op.kernel_shape == (5, 3)  # filled from W: bind sees only the (Cout, K) weight
    assert Conv.from_dict(case.op.to_dict()) == case.op
    assert "activation" not in Conv.onnx_attribute_names()
    y = case.y_shape
    assert case.op.flops(case.shapes, [y]) == 2 * 24 * y[2] * y[3] * 3 * 5 * 3
    w_prepared = case.op.prepare([None, case.w, case.b])[1]
    assert w_prepared.shape == (24, 3 * 5 * 3) and w_prepared.flags.c_contiguous


def test_rejects_other_ranks_and_variable_weights():
    w1d = np.zeros((4, 3, 3), np.float32)
    with pytest.raises(UnsupportedOp, match="1-D"):
        Conv.from_onnx({}, [None, w1d], "conv1d", 17)
    with pytest.raises(UnsupportedOp, match="constant"):
        Conv.from_onnx({}, [None, None], "conv", 17)
    with pytest.raises(UnsupportedOp, match="rank 5"):
        Conv(kernel_shape=(3, 3)).infer([(1, 3, 8, 8, 8), (4, 3, 3, 3)], [None, None])
    with pytest.raises(UnsupportedOp, match="3-D"):
        Conv.from_onnx({"kernel_shape": [3, 3, 3]}, [None, np.zeros((4, 3, 3, 3), np.float32)], "c", 17)
    with pytest.raises(UnsupportedOp, match="auto_pad"):
        Conv.from_onnx({"auto_pad": "SAME"}, [None, np.zeros((4, 3, 3, 3), np.float32)], "c", 17)


@pytest.mark.parametrize(
    ("shapes", "attrs", "match"),
    [
        ([(1, 4, 8, 8), (8, 3, 3, 3)], {}, r"\(1, 4, 8, 8\).*\(8, 3, 3, 3\)"),
        ([(1, 6, 8, 8), (8, 3, 3, 3)], {"group": 4}, "group 4"),
        ([(1, 3, 8, 8), (8, 3, 3, 3), (7,)], {}, r"bias shape \(7,\)"),
        ([(1, 3, 2, 2), (8, 3, 3, 3)], {}, "empty output"),
        ([(1, 3, 8, 8), (8, 3, 3, 3)], {"kernel_shape": (5, 5)}, "kernel_shape"),
    ],
    ids=["channels", "group", "bias", "empty", "kernel_shape"],
)
def test_shape_errors_name_the_shapes(shapes, attrs, match):
    with pytest.raises(ShapeError, match=match):
        Conv(**attrs).infer(shapes, [None] * len(shapes))


# ---- BatchNormalization ---------------------------------------------------------------------------
@pytest.mark.parametrize("activation", [("", 0.0, 0.0), ("Relu", 0.0, 0.0), ("HardSwish", 0.0, 0.0)])
@pytest.mark.parametrize("x_shape", [(2, 13, 7, 9), (3, 24), (1, 3, 5)])
def test_batchnorm(x_shape, activation):
    rng = np.random.default_rng(1)
    channels = x_shape[1]
    x = rng.standard_normal(x_shape, dtype=np.float32)
    params = [
        rng.standard_normal(channels).astype(np.float32),
        rng.standard_normal(channels).astype(np.float32),
        rng.standard_normal(channels).astype(np.float32),
        rng.uniform(0.5, 2.0, channels).astype(np.float32),
    ]
    consts = [None, *params]
    op, _ = BatchNormalization.from_onnx({"epsilon": 1e-3}, consts, "bn", 17)
    name, alpha, beta = activation
    op = dataclasses.replace(op, activation=name, activation_alpha=alpha, activation_beta=beta)
    assert op.infer([x.shape] + [p.shape for p in params], consts) == [x_shape]
    prepared = op.prepare(consts)
    *ins, y = in_arena(x, *prepared[1:], x_shape)
    kernel = op.bind(ins, [y], None)
    kernel()
    assert_close(y, op.reference([x, *params])[0])
    assert_no_numpy_allocations(kernel)


def test_batchnorm_rejects_training_and_variable_statistics():
    stats = [np.ones(3, np.float32)] * 4
    with pytest.raises(UnsupportedOp, match="training_mode"):
        BatchNormalization.from_onnx({"training_mode": 1}, [None, *stats], "bn", 15)
    with pytest.raises(UnsupportedOp, match="constants"):
        BatchNormalization.from_onnx({}, [None, *stats[:3], None], "bn", 15)
    with pytest.raises(ShapeError, match=r"mean shape \(4,\)"):
        BatchNormalization().infer([(1, 3, 4, 4), (3,), (3,), (4,), (3,)], [None] * 5)


# ---- fused residual Add ---------------------------------------------------------------------------
RESIDUAL_CASES = [
    ("1x1", (1, 13, 7, 9), (24, 13, 1, 1), {}),
    ("3x3-im2col-s2", (2, 13, 17, 13), (24, 13, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("3x3-winograd", (1, 24, 16, 13), (13, 24, 3, 3), {"pads": [1, 1, 1, 1]}),
    ("7x7-im2col-strided", (2, 3, 19, 17), (13, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}),
]


@pytest.mark.usefixtures("winograd_everywhere")
@pytest.mark.parametrize("activation", [("", 0.0, 0.0), ("Relu", 0.0, 0.0), ("HardSwish", 0.0, 0.0)])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"), [c[1:] for c in RESIDUAL_CASES], ids=[c[0] for c in RESIDUAL_CASES]
)
@pytest.mark.parametrize("rows", [None, (1, 3)], ids=["whole", "row-band"])
def test_fused_residual(x_shape, w_shape, attrs, activation, rows):
    case = conv_case(x_shape, w_shape, activation=activation, **attrs)
    op = dataclasses.replace(case.op, residual=True)
    residual = np.random.default_rng(9).standard_normal(case.y_shape, dtype=np.float32)
    part = None if rows is None else Part("rows", *rows)
    prepared = op.prepare([None, case.w, case.b])
    need = max(op.scratch_bytes([*case.shapes, case.y_shape], part) // 4, 1)
    x, wp, bp, res, y, scratch = in_arena(case.x, prepared[1], prepared[2], residual, case.y_shape, (need,))
    kernel = op.bind([x, wp, bp, res], [y], scratch, part)
    kernel()
    ref = op.reference([case.x, case.w, case.b, residual])[0]
    r0, r1 = (0, case.y_shape[2]) if rows is None else rows
    assert_close(y[:, :, r0:r1], ref[:, :, r0:r1])
    assert_no_numpy_allocations(kernel)


def test_residual_of_the_wrong_shape_is_refused():
    case = conv_case((1, 13, 7, 9), (24, 13, 1, 1))
    op = dataclasses.replace(case.op, residual=True)
    prepared = op.prepare([None, case.w, case.b])
    x, wp, bp, res, y = in_arena(case.x, prepared[1], prepared[2], (1, 24, 7, 8), case.y_shape)
    with pytest.raises(ShapeError, match="residual"):
        op.bind([x, wp, bp, res], [y], None)


# ---- direct depthwise 3x3 ------------------------------------------------------------------------------
@pytest.fixture
def dw_direct_everywhere(monkeypatch):
    """Every depthwise 3x3 conv at stride 1 or 2 takes the direct path, however narrow."""
    monkeypatch.setattr(conv_geometry, "DW_DIRECT_MIN_WIDTH", 1)
    monkeypatch.setattr(conv_geometry, "DW_DIRECT_MIN_WIDTH_S1", 1)


DW_DIRECT_CASES = [
    ("s1-same", (2, 24, 17, 13), {"pads": [1, 1, 1, 1]}),
    ("s1-c2-tiny", (1, 2, 3, 2), {"pads": [1, 1, 1, 1]}),
    ("s1-c3-one-column", (1, 3, 5, 1), {"pads": [1, 1, 1, 1]}),
    ("s1-c13-one-row", (1, 13, 1, 9), {"pads": [1, 1, 1, 1]}),
    ("s1-no-pad", (1, 13, 9, 11), {}),
    ("s1-asym", (1, 13, 9, 11), {"pads": [0, 1, 2, 0]}),
    ("s1-pad2", (1, 3, 7, 9), {"pads": [2, 2, 2, 2]}),
    ("s1-same-lower", (1, 13, 8, 10), {"auto_pad": "SAME_LOWER"}),
    ("s2-same", (2, 24, 17, 13), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("s2-even", (1, 13, 16, 18), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("s2-asym", (1, 3, 15, 14), {"pads": [0, 1, 1, 0], "strides": [2, 2]}),
    ("s2-upper", (1, 13, 16, 15), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("s2-no-pad-c2", (1, 2, 9, 7), {"strides": [2, 2]}),
]


@pytest.mark.usefixtures("dw_direct_everywhere")
@pytest.mark.parametrize("activation", [("", 0.0, 0.0), ("Clip", 0.0, 6.0), ("HardSwish", 0.0, 0.0)],
                         ids=["none", "clip", "hardswish"])  # fmt: skip
@pytest.mark.parametrize(
    ("x_shape", "attrs"), [c[1:] for c in DW_DIRECT_CASES], ids=[c[0] for c in DW_DIRECT_CASES]
)
def test_direct_depthwise_matches_reference(x_shape, attrs, activation):
    c = x_shape[1]
    case = conv_case(x_shape, (c, 1, 3, 3), activation=activation, group=c, **attrs)
    assert case.op.geometry(case.x.shape, c).depthwise_direct
    assert case.op.scratch_bytes(case.shapes) == 0
    kernel, y = case.bind()
    kernel()
    assert_close(y, case.reference())


@pytest.mark.usefixtures("dw_direct_everywhere")
@pytest.mark.parametrize(("x_shape", "attrs"), [c[1:] for c in DW_DIRECT_CASES[:1] + DW_DIRECT_CASES[8:10]])
def test_direct_depthwise_parts_cover_the_whole_op(x_shape, attrs):
    c = x_shape[1]
    case = conv_case(x_shape, (c, 1, 3, 3), bias=False, activation=("Relu", 0.0, 0.0), group=c, **attrs)
    out_h = case.y_shape[2]
    y = None
    for part in (Part("rows", 0, 1), Part("rows", 1, out_h - 2), Part("rows", out_h - 2, out_h)):
        kernel, y = case.bind(part, y=y)
        kernel()
    assert_close(y, case.reference())
    y = None
    for part in (Part("channels", 0, 5), Part("channels", 5, c)):
        kernel, y = case.bind(part, y=y)
        kernel()
    assert_close(y, case.reference())


@pytest.mark.usefixtures("dw_direct_everywhere")
@pytest.mark.parametrize("strides", [[1, 1], [2, 2]], ids=["s1", "s2"])
def test_direct_depthwise_allocates_nothing(strides):
    case = conv_case((2, 24, 17, 13), (24, 1, 3, 3), activation=("HardSwish", 0.0, 0.0), group=24,
                     pads=[1, 1, 1, 1], strides=strides)  # fmt: skip
    for part in (None, Part("rows", 2, 6)):
        kernel, _ = case.bind(part)
        assert_no_numpy_allocations(kernel)


def test_direct_depthwise_is_chosen_for_wide_planes():
    wide = conv_case((1, 8, 112, 112), (8, 1, 3, 3), group=8, pads=[1, 1, 1, 1], strides=[2, 2])
    narrow = conv_case((1, 8, 14, 14), (8, 1, 3, 3), group=8, pads=[1, 1, 1, 1])
    assert wide.op.geometry(wide.x.shape, 8).depthwise_direct
    assert not narrow.op.geometry(narrow.x.shape, 8).depthwise_direct
