"""Linear Resize/Upsample on rank 2 and NCHW equals ONNX Runtime's bit for bit: its float32
coordinates, edge weights and rounding order (kernel and reference), so a quantizer downstream
(DynamicQuantizeLinear) sees the same values ORT does."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from flexnnd.ops.resize import Resize, Upsample
from tests.conftest import make_model, save
from tests.conftest import ort_run as ort_run_model
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

EXACT_TRANSFORMS = [
    "half_pixel",
    "asymmetric",
    "pytorch_half_pixel",
    "align_corners",
    "half_pixel_symmetric",
    "tf_crop_and_resize",
]
# (input H, W) -> (output H, W): up, down, non-integer ratios, size-1 axes either side, one axis kept
HW_SIZES = [
    ((17, 40), (40, 17)),
    ((40, 17), (17, 40)),
    ((5, 7), (10, 14)),
    ((8, 8), (3, 5)),
    ((1, 5), (4, 1)),
    ((6, 1), (1, 9)),
    ((13, 11), (13, 31)),
    ((9, 12), (29, 7)),
]
ROI = (0.2, -0.3, 0.9, 1.2)  # H, W crop box partly outside the input (tf_crop_and_resize extrapolates)


def data(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_kernel(op, x):
    run, (y,) = run_in_arena(op, [x])
    y[...] = np.nan
    run()
    return y, run


def roi_for(transform, rank):
    if transform != "tf_crop_and_resize":
        return ()
    lead = rank - 2
    return (0.0,) * lead + ROI[:2] + (1.0,) * lead + ROI[2:]


def assert_equals_ort(op, x, consts, **attrs):
    """Kernel and reference both equal ONNX Runtime's output bit for bit."""
    want = ort_run("Resize", [x], consts=consts, **attrs)
    got, _ = run_kernel(op, x)
    assert got.shape == want.shape
    differ = int(np.sum(got.view(np.uint32) != want.view(np.uint32)))
    assert differ == 0, f"{differ} of {want.size} differ, max {np.max(np.abs(got - want)):.3g}"
    assert np.array_equal(op.reference([x])[0].view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("transform", EXACT_TRANSFORMS)
@pytest.mark.parametrize(("hw", "out_hw"), HW_SIZES, ids=[f"{a}-{b}" for a, b in HW_SIZES])
@pytest.mark.parametrize("rank", [2, 4])
def test_sizes_match_onnxruntime_bit_for_bit(transform, hw, out_hw, rank):
    lead = (2, 3) if rank == 4 else ()
    shape, sizes = lead + hw, lead + out_hw
    roi = roi_for(transform, rank)
    op = Resize(size_values=sizes, roi_values=roi, mode="linear", coordinate_transformation_mode=transform)
    consts = (np.array(roi, np.float32), np.zeros(0, np.float32), np.array(sizes, np.int64))
    for seed in range(2):
        x = data(shape, seed)
        assert_equals_ort(op, x, consts, mode="linear", coordinate_transformation_mode=transform)


SCALES = [(2.0, 2.0), (0.5, 0.5), (1.5, 0.75), (2.5, 1.0), (1.0, 0.6), (3.0, 1.7)]


# tf_crop_and_resize with a fractional in * scale is refused (test_resize.py checks it): whole ones only
SCALE_CASES = [
    (t, sc)
    for t in EXACT_TRANSFORMS
    if t != "align_corners"
    for sc in SCALES
    if t != "tf_crop_and_resize" or not any(n * f % 1 for n, f in zip((10, 12), sc, strict=True))
]


@pytest.mark.parametrize(
    ("transform", "scales"), SCALE_CASES, ids=[f"{t}-{a}x{b}" for t, (a, b) in SCALE_CASES]
)
@pytest.mark.parametrize("rank", [2, 4])
def test_scales_match_onnxruntime_bit_for_bit(transform, scales, rank):
    lead = (1, 2) if rank == 4 else ()
    shape = (*lead, 10, 12)
    full = (1.0,) * len(lead) + scales
    roi = roi_for(transform, rank)
    op = Resize(scale_values=full, roi_values=roi, mode="linear", coordinate_transformation_mode=transform)
    consts = (np.array(roi, np.float32), np.array(full, np.float32))
    for seed in (3, 4):
        assert_equals_ort(
            op, data(shape, seed), consts, mode="linear", coordinate_transformation_mode=transform
        )


def test_align_corners_whole_scales_and_extrapolation_value():
    op = Resize(scale_values=(1, 1, 2, 0.5), mode="linear", coordinate_transformation_mode="align_corners")
    consts = (np.zeros(0, np.float32), np.array((1, 1, 2, 0.5), np.float32))
    assert_equals_ort(
        op, data((1, 3, 7, 8), 5), consts, mode="linear", coordinate_transformation_mode="align_corners"
    )
    roi = roi_for("tf_crop_and_resize", 4)
    op = Resize(
        size_values=(1, 3, 9, 11),
        roi_values=roi,
        mode="linear",
        coordinate_transformation_mode="tf_crop_and_resize",
        extrapolation_value=-2.5,
    )
    consts = (np.array(roi, np.float32), np.zeros(0, np.float32), np.array((1, 3, 9, 11), np.int64))
    attrs = dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-2.5)
    assert_equals_ort(op, data((1, 3, 7, 8), 6), consts, **attrs)


def test_axes_form_matches_onnxruntime_bit_for_bit():
    op = Resize(size_values=(23, 9), axes=(2, 3), mode="linear")
    consts = (np.zeros(0, np.float32), np.zeros(0, np.float32), np.array((23, 9), np.int64))
    assert_equals_ort(op, data((2, 2, 10, 13), 7), consts, mode="linear", axes=[2, 3])


def test_unchanged_lengths_copy_as_onnxruntime_does():
    # Scale 1.05 on a length of 10 keeps 10 (floor(10.5)): ORT copies rather than interpolate.
    op = Resize(scale_values=(1, 1, 1.05, 1), mode="linear")
    x = data((1, 2, 10, 6), 8)
    assert_equals_ort(op, x, (np.zeros(0, np.float32), np.array((1, 1, 1.05, 1), np.float32)), mode="linear")
    got, run = run_kernel(op, x)
    assert np.array_equal(got, x)
    assert_no_numpy_allocations(run)


@pytest.mark.parametrize("opset", [9, 10])
def test_upsample_and_opset10_linear_bit_for_bit(opset):
    x = data((1, 3, 6, 7), 9)
    scales = np.array((1, 1, 2, 3), np.float32)
    op_type = "Upsample" if opset == 9 else "Resize"
    op = Upsample(mode="linear", scales=(1, 1, 2, 3)) if opset == 9 else None
    if op is None:
        op, _ = Resize.from_onnx({"mode": "linear"}, [None, scales], None, opset)
    want = ort_run(op_type, [x], consts=(scales,), opset=opset, mode="linear")
    got, _ = run_kernel(op, x)
    assert np.array_equal(got, want)


def test_bilinear_allocates_nothing():
    op = Resize(scale_values=(1, 1, 2, 2), mode="linear")
    _, run = run_kernel(op, data((1, 4, 9, 10), 10))
    assert_no_numpy_allocations(run)
    assert op.scratch_bytes([(1, 4, 9, 10)]) == 0


def test_model_up_and_down_matches_onnxruntime_bit_for_bit(tmp_path):
    """Through flexnnd.Session, all-resident and at the smallest plan: up 40/17, down 17/40."""
    import flexnnd

    nodes = [
        helper.make_node("Resize", ["x", "", "", "up"], ["h"], mode="linear"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node(
            "Resize",
            ["r", "", "", "down"],
            ["y"],
            mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel",
        ),
    ]
    inits = [("up", np.array((1, 8, 40, 17), np.int64)), ("down", np.array((1, 8, 17, 33), np.int64))]
    model = make_model(nodes, [("x", (1, 8, 17, 40))], [("y", None)], inits, opset=13)
    feeds = {"x": data((1, 8, 17, 40), 11)}
    path = save(model, tmp_path / "model.onnx")
    (want,) = ort_run_model(path, feeds)
    with flexnnd.Session(path, threads=1, cache_dir=tmp_path / "cache") as sess:
        budgets = [None]
        if sess.rungs.index:
            budgets.append(min(e.arena_bytes for e in sess.rungs.index) + sess.rungs.output_bytes)
        for budget in budgets:
            sess.set_budget(budget)
            got = sess.run(feeds)["y"]
            assert np.array_equal(got, want), f"budget {budget}: max diff {np.max(np.abs(got - want)):.3g}"


DHW_SIZES = [
    ((3, 5, 7), (7, 4, 9)),
    ((4, 1, 6), (1, 3, 13)),
    ((5, 6, 7), (5, 6, 14)),
    ((6, 9, 12), (2, 3, 4)),
]


@pytest.mark.parametrize("transform", EXACT_TRANSFORMS)
@pytest.mark.parametrize(("dhw", "out_dhw"), DHW_SIZES, ids=[f"{a}-{b}" for a, b in DHW_SIZES])
@pytest.mark.parametrize("rank", [3, 5])
def test_trilinear_matches_onnxruntime_bit_for_bit(transform, dhw, out_dhw, rank):
    lead = (1, 2) if rank == 5 else ()
    shape, sizes = lead + dhw, lead + out_dhw
    roi = ()
    if transform == "tf_crop_and_resize":
        roi = (0.0,) * len(lead) + (0.1, 0.2, -0.1) + (1.0,) * len(lead) + (0.8, 1.1, 0.9)
    attrs = dict(mode="linear", coordinate_transformation_mode=transform, extrapolation_value=1.5)
    op = Resize(size_values=sizes, roi_values=roi, **attrs)
    consts = (np.array(roi, np.float32), np.zeros(0, np.float32), np.array(sizes, np.int64))
    assert_equals_ort(op, data(shape, 12), consts, **attrs)


def test_trilinear_allocates_nothing():
    op = Resize(scale_values=(1, 1, 2, 2, 2), mode="linear")
    _, run = run_kernel(op, data((1, 2, 3, 4, 5), 13))
    assert_no_numpy_allocations(run)


CUBIC_SIZES = [
    ((17, 40), (40, 17)),
    ((5, 7), (10, 14)),
    ((8, 8), (3, 5)),
    ((1, 5), (4, 1)),
    ((9, 12), (9, 29)),
]


@pytest.mark.parametrize("transform", EXACT_TRANSFORMS)
@pytest.mark.parametrize(("hw", "out_hw"), CUBIC_SIZES, ids=[f"{a}-{b}" for a, b in CUBIC_SIZES])
@pytest.mark.parametrize("exclude_outside", [0, 1])
@pytest.mark.parametrize("rank", [2, 4])
def test_bicubic_matches_onnxruntime_bit_for_bit(transform, hw, out_hw, exclude_outside, rank):
    lead = (1, 2) if rank == 4 else ()
    shape, sizes = lead + hw, lead + out_hw
    roi = roi_for(transform, rank)
    attrs = dict(
        mode="cubic",
        coordinate_transformation_mode=transform,
        exclude_outside=exclude_outside,
        cubic_coeff_a=-0.5 if exclude_outside else -0.75,
        extrapolation_value=1.5,
    )
    op = Resize(size_values=sizes, roi_values=roi, **attrs)
    consts = (np.array(roi, np.float32), np.zeros(0, np.float32), np.array(sizes, np.int64))
    assert_equals_ort(op, data(shape, 14), consts, **attrs)


def test_bicubic_scales_and_allocates_nothing():
    op = Resize(scale_values=(1, 1, 2.5, 0.75), mode="cubic")
    consts = (np.zeros(0, np.float32), np.array((1, 1, 2.5, 0.75), np.float32))
    assert_equals_ort(op, data((2, 3, 10, 12), 15), consts, mode="cubic")
    _, run = run_kernel(op, data((2, 3, 10, 12), 15))
    assert_no_numpy_allocations(run)


@pytest.mark.parametrize("policy", ["not_larger", "not_smaller"])
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_keep_aspect_ratio_matches_onnxruntime_bit_for_bit(policy, mode):
    attrs = dict(mode=mode, axes=(2, 3), keep_aspect_ratio_policy=policy)
    op = Resize(size_values=(20, 30), **attrs)
    consts = (np.zeros(0, np.float32), np.zeros(0, np.float32), np.array((20, 30), np.int64))
    assert_equals_ort(op, data((1, 2, 13, 17), 16), consts, **attrs)
