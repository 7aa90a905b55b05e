"""ConvTranspose against its numpy reference (awkward shapes, parts, bands) and ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops import conv_transpose
from flexnnd.ops.base import Axis, Part, SliceAxis
from flexnnd.ops.conv_transpose import ConvTranspose
from tests.conftest import assert_close_to_reference
from tests.ops.harness import arena_views, assert_no_numpy_allocations, ort_run

# (x shape, weight shape, bias?, attributes)
CASES = [
    ((1, 5, 7, 6), (5, 3, 2, 2), True, dict(strides=(2, 2))),
    ((1, 6, 9, 8), (6, 4, 4, 4), True, dict(strides=(2, 2), pads=(1, 1, 1, 1))),
    ((2, 3, 5, 4), (3, 7, 3, 3), False, {}),
    ((1, 4, 5, 5), (4, 3, 3, 2), True, dict(strides=(3, 2), dilations=(2, 1), pads=(0, 2, 1, 0))),
    ((1, 4, 6, 5), (4, 2, 3, 3), True, dict(group=2, strides=(2, 2), output_padding=(1, 0))),
    (
        (1, 6, 4, 4),
        (6, 1, 3, 3),
        False,
        dict(group=6, strides=(2, 2), pads=(1, 1, 1, 1), output_padding=(1, 1)),
    ),
    ((2, 4, 3, 5), (4, 1, 2, 2), True, dict(group=4, strides=(2, 2))),  # depthwise, tiling
    ((1, 3, 5, 5), (3, 2, 3, 3), True, dict(strides=(2, 2), auto_pad="SAME_UPPER")),
    ((1, 3, 5, 4), (3, 2, 4, 3), True, dict(strides=(2, 2), auto_pad="SAME_LOWER")),
    ((1, 3, 4, 4), (3, 2, 3, 3), True, dict(strides=(2, 2), output_shape=(10, 8))),
    ((1, 3, 4, 4), (3, 2, 3, 3), False, dict(strides=(2, 2), output_shape=(8, 7))),
    ((1, 3, 5, 5), (3, 2, 3, 3), True, dict(auto_pad="VALID", strides=(1, 2))),
    ((2, 5, 9), (5, 3, 4), True, dict(strides=(2,), pads=(1, 2))),
    ((1, 2, 7), (2, 4, 3), False, dict(strides=(3,), dilations=(2,), output_padding=(1,))),
]
IDS = [f"{x}-{w}-{sorted(a)}" for x, w, _, a in CASES]


def make(case, seed=0):
    x_shape, w_shape, has_bias, attrs = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[1] * attrs.get("group", 1)).astype(np.float32) if has_bias else None
    op = ConvTranspose(kernel_shape=w_shape[2:], **attrs)
    return op, x, w, b


def bind(op, x, w, b, parts=(None,)):
    """Bind `parts` (None: the whole op) on arena views, as the executor does: one input, one output
    and one scratch of the most any part needs; each part gets its slice of the prepared weights."""
    shapes = [x.shape, w.shape] + ([b.shape] if b is not None else [])
    y_shape = op.infer(shapes, [None, w, b])[0]
    prepared = op.prepare([None, w, b])
    need = max(op.scratch_bytes(shapes, p) for p in parts) // 4
    xv, yv, scratch = arena_views([x.shape, y_shape, (max(need, 1),)])
    xv[...] = x
    yv[...] = np.nan  # anything a kernel leaves unwritten shows up
    kernels = []
    for p in parts:
        c0, c1 = (0, y_shape[1]) if p is None else (p.start, p.stop)
        wp = arena_views([prepared[1][c0:c1].shape])[0]
        wp[...] = prepared[1][c0:c1]
        bp = None
        if b is not None:
            bp = arena_views([(c1 - c0,)])[0]
            bp[...] = prepared[2][c0:c1]
        kernels.append(op.bind([xv, wp, bp], [yv], scratch[:need] if need else None, p))
    return kernels, yv


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_kernel_matches_reference(case):
    op, x, w, b = make(case)
    (run,), y = bind(op, x, w, b)
    run()
    assert_close_to_reference(y, op.reference([x, w, b])[0].astype(np.float64))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reference_matches_onnxruntime(case):
    op, x, w, b = make(case, seed=1)
    attrs = {
        k: list(v) if isinstance(v, tuple) else v for k, v in op.to_dict().items() if v not in ((), "NOTSET")
    }
    consts = (w,) if b is None else (w, b)
    want = ort_run("ConvTranspose", [x], consts=consts, opset=17, **attrs)
    assert_close_to_reference(op.reference([x, w, b])[0], want)


def test_bands_and_channel_parts_cover_the_whole_op(monkeypatch):
    monkeypatch.setattr(conv_transpose, "COL_BAND_BYTES", 4096)  # many bands of input rows
    monkeypatch.setattr(conv_transpose, "MIN_BAND_COLS", 1)
    op, x, w, b = make(((1, 6, 17, 9), (6, 13, 4, 4), True, dict(strides=(2, 2), pads=(1, 1, 1, 1))))
    ref = op.reference([x, w, b])[0].astype(np.float64)
    assert op._band(op._geometry_of([x.shape, w.shape, b.shape]), 13) < 17
    parts = [Part(Axis.CHANNELS, 0, 5), Part(Axis.CHANNELS, 5, 6), Part(Axis.CHANNELS, 6, 13)]
    kernels, y = bind(op, x, w, b, parts)
    for run in kernels:
        run()
    assert_close_to_reference(y, ref)


def test_slicing_and_cost():
    op, x, w, b = make(CASES[0])
    shapes = [x.shape, w.shape, b.shape]
    out = op.infer(shapes, [None, w, b])
    assert op.slice_axes(shapes, out) == (SliceAxis(Axis.CHANNELS, 3),)
    assert op.cost_kind(shapes) == "gemm"
    grouped, x, w, b = make(CASES[4])
    assert (
        grouped.slice_axes(
            [x.shape, w.shape, b.shape], grouped.infer([x.shape, w.shape, b.shape], [None, w, b])
        )
        == ()
    )
    with pytest.raises(ValueError, match="part"):
        grouped.scratch_bytes([x.shape, w.shape, b.shape], Part(Axis.CHANNELS, 0, 1))


def test_weight_layout_is_output_channel_major():
    op = ConvTranspose(kernel_shape=(2, 3), group=2)
    w = np.arange(4 * 3 * 2 * 3, dtype=np.float32).reshape(4, 3, 2, 3)  # Cin 4, Cout/group 3
    wp = op.prepare([None, w, None])[1]
    assert wp.shape == (6, 2 * 3 * 2)
    # output channel 4 = group 1's channel 1, tap (1, 2), input channel 1 of that group (= 3)
    assert wp[4].reshape(2, 3, 2)[1, 2, 1] == w[3, 1, 1, 2]


@pytest.mark.parametrize(
    "case", [CASES[1], CASES[5], CASES[6], CASES[12]], ids=["4x4s2", "depthwise", "depthwise-tiling", "1d"]
)
def test_allocates_nothing(case):
    op, x, w, b = make(case)
    (run,), _ = bind(op, x, w, b)
    assert_no_numpy_allocations(run)


def test_refusals():
    w3 = np.zeros((2, 2, 3, 3, 3), np.float32)
    with pytest.raises(UnsupportedOp, match="3-D ConvTranspose"):
        ConvTranspose.from_onnx({}, [None, w3], "up", 17)
    with pytest.raises(UnsupportedOp, match="W must be a constant"):
        ConvTranspose.from_onnx({}, [None, None], "up", 17)
    with pytest.raises(UnsupportedOp, match="auto_pad"):
        ConvTranspose.from_onnx({"auto_pad": "FULL"}, [None, np.zeros((2, 2, 3, 3), np.float32)], "up", 17)
    op, _ = ConvTranspose.from_onnx({}, [None, np.zeros((4, 2, 3, 3), np.float32)], "up", 17)
    with pytest.raises(ShapeError, match="3 channels"):
        op.infer([(1, 3, 5, 5), (4, 2, 3, 3)], [None, None])
    with pytest.raises(ShapeError, match="empty output"):
        ConvTranspose(kernel_shape=(3, 3), pads=(3, 3, 3, 3)).infer(
            [(1, 4, 1, 1), (4, 2, 3, 3)], [None, None]
        )


def test_fpn_segmenter_fragment_matches_onnxruntime(tmp_path):
    """A DB/FPN-style head: Conv -> ConvTranspose (4x4/2) -> Resize (linear 2x) -> Add a skip ->
    Conv -> Sigmoid, all-resident and at the smallest plan (which cuts the ConvTranspose's weight)."""
    from onnx import helper

    from tests.conftest import assert_model_matches_ort, make_model

    rng = np.random.default_rng(11)

    def const(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node(
            "ConvTranspose",
            ["r1", "wt", "bt"],
            ["up1"],
            kernel_shape=[4, 4],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Resize", ["up1", "", "scales"], ["up2"], mode="linear"),
        helper.make_node("Add", ["up2", "skip"], ["sum"]),
        helper.make_node("Conv", ["sum", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c2"], ["prob"]),
    ]
    inits = [
        ("w1", const(160, 3, 3, 3)),
        ("b1", const(160)),
        ("wt", const(160, 96, 4, 4)),  # 960 KiB: the weight that the smallest plan cuts
        ("bt", const(96)),
        ("scales", np.array([1, 1, 2, 2], np.float32)),
        ("w2", const(1, 96, 3, 3)),
        ("b2", const(1)),
    ]
    model = make_model(
        nodes, [("x", (1, 3, 8, 8)), ("skip", (1, 96, 32, 32))], [("prob", (1, 1, 32, 32))], inits
    )
    feeds = {"x": const(1, 3, 8, 8, scale=1.0), "skip": const(1, 96, 32, 32, scale=1.0)}
    whole, smallest = assert_model_matches_ort(model, feeds, tmp_path)
    assert smallest < whole
    import flexnnd

    with flexnnd.Session(tmp_path / "model.onnx", threads=1, cache_dir=tmp_path / "cache") as sess:
        sess.set_budget(min(e.arena_bytes for e in sess.rungs.index) + sess.rungs.output_bytes)
        sess.run(feeds)
        parts = [s.part for s in sess.plan.steps if s.node.startswith("ConvTranspose")]
    assert len(parts) > 1 and all(p.axis is Axis.CHANNELS for p in parts)
