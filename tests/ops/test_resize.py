"""Resize and Upsample: kernels against the reference on awkward shapes, the reference against ONNX
Runtime, every opset's form, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.resize import Resize, Upsample
from tests.conftest import assert_close_to_reference
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

TRANSFORMS = [
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
]
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
ROI4 = (0.0, 0.0, 0.2, 0.3, 1.0, 1.0, 0.9, 1.2)  # a crop box partly outside the input (extrapolated)


def resize(shape, scales=(), sizes=(), roi=(), **attrs) -> Resize:
    if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize" and not roi:
        roi = ROI4 if len(shape) == 4 and not attrs.get("axes") else ()
    return Resize(scale_values=tuple(scales), size_values=tuple(sizes), roi_values=tuple(roi), **attrs)


def data(shape, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if dtype == "float32":
        return rng.standard_normal(shape).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), shape).astype(dtype)


def check_kernel(op, x):
    run, (y,) = run_in_arena(op, [x])
    y[...] = 0 if x.dtype != np.float32 else np.nan
    run()
    want = op.reference([x])[0]
    if x.dtype == np.float32:
        assert_close_to_reference(y, want.astype(np.float64))
    else:
        np.testing.assert_array_equal(y, want)
    return y


CASES = [
    # (input shape, scales, sizes, attributes)
    ((1, 3, 5, 7), (1, 1, 2, 2), (), dict(mode="linear")),
    ((2, 3, 6, 5), (1, 1, 0.5, 0.7), (), dict(mode="linear")),
    ((1, 2, 4, 4), (), (1, 2, 9, 7), dict(mode="cubic")),
    ((1, 2, 8, 9), (), (1, 2, 3, 4), dict(mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5)),
    ((1, 2, 10, 11), (1, 1, 0.4, 0.6), (), dict(mode="linear", antialias=1)),
    ((1, 2, 10, 11), (), (1, 2, 4, 3), dict(mode="cubic", antialias=1)),
    ((1, 3, 5, 7), (1, 1, 3, 2), (), dict(mode="nearest")),
    ((2, 3, 7, 5), (1, 1, 0.6, 0.5), (), dict(mode="nearest")),
    ((7,), (2.5,), (), dict(mode="linear")),
    ((7,), (), (3,), dict(mode="nearest", nearest_mode="ceil")),
    ((3, 6), (), (5, 4), dict(mode="cubic")),
    ((2, 1, 5), (1, 1, 3), (), dict(mode="linear", coordinate_transformation_mode="align_corners")),
    ((2, 3, 4, 5), (2, 1.5, 1, 1), (), dict(mode="linear")),  # leading axes only, through scratch
    ((2, 3, 4, 5), (), (3, 5, 6, 2), dict(mode="nearest")),  # every axis
    ((1, 2, 3, 4, 5), (1, 2, 1, 2, 0.5), (), dict(mode="linear")),
    ((1, 2, 3, 4, 5), (), (1, 3, 2, 7, 5), dict(mode="cubic")),
    ((1, 1, 1, 1), (1, 1, 4, 3), (), dict(mode="linear")),
    ((1, 3, 4, 6), (), (5, 3), dict(mode="linear", axes=(-1, 2))),
    ((1, 3, 4, 6), (), (8, 8), dict(mode="nearest", axes=(2, 3), keep_aspect_ratio_policy="not_larger")),
    ((1, 3, 4, 6), (), (8, 8), dict(mode="nearest", axes=(2, 3), keep_aspect_ratio_policy="not_smaller")),
    ((1, 2, 5, 6), (), (1, 2, 4, 5), dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=7.5)),
    ((1, 2, 5, 6), (), (1, 2, 1, 4), dict(mode="cubic", coordinate_transformation_mode="pytorch_half_pixel")),
]  # fmt: skip
IDS = [f"{s}-{a.get('mode')}-{sc or sz}" for s, sc, sz, a in CASES]


@pytest.mark.parametrize(("shape", "scales", "sizes", "attrs"), CASES, ids=IDS)
def test_kernel_matches_reference(shape, scales, sizes, attrs):
    check_kernel(resize(shape, scales, sizes, **attrs), data(shape))


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_every_transform_kernel_and_onnxruntime(mode, transform):
    shape, sizes = (1, 2, 5, 6), (1, 2, 8, 4)
    op = resize(shape, sizes=sizes, mode=mode, coordinate_transformation_mode=transform)
    x = data(shape, seed=3)
    check_kernel(op, x)
    roi = np.array(op.roi_values or (), np.float32)
    want = ort_run(
        "Resize",
        [x],
        consts=(roi, np.zeros(0, np.float32), np.array(sizes, np.int64)),
        mode=mode,
        coordinate_transformation_mode=transform,
    )
    assert_close_to_reference(op.reference([x])[0], want)


@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
@pytest.mark.parametrize(
    ("transform", "scale"), [("half_pixel", 2.5), ("asymmetric", 0.6), ("align_corners", 2.0)]
)
def test_nearest_modes_match_onnxruntime(nearest_mode, transform, scale):
    shape = (1, 2, 5, 5)
    scales = np.array([1, 1, scale, scale], np.float32)
    op = resize(
        shape,
        scales=scales,
        mode="nearest",
        nearest_mode=nearest_mode,
        coordinate_transformation_mode=transform,
    )
    x = data(shape, seed=4)
    check_kernel(op, x)
    want = ort_run(
        "Resize",
        [x],
        consts=(np.zeros(0, np.float32), scales),
        mode="nearest",
        nearest_mode=nearest_mode,
        coordinate_transformation_mode=transform,
    )
    np.testing.assert_array_equal(op.reference([x])[0], want)


@pytest.mark.parametrize("dtype", ["int64", "int32", "int16", "int8", "uint8", "uint16", "bool", "float32"])
@pytest.mark.parametrize(("shape", "scales"), [((1, 2, 3, 4), (1, 1, 2, 2)), ((2, 3, 5), (2, 1, 0.7))])
def test_nearest_takes_every_element_type(dtype, shape, scales):
    op = resize(shape, scales=scales, mode="nearest", coordinate_transformation_mode="asymmetric")
    x = data(shape, dtype, seed=5)
    assert op.output_dtypes([dtype]) == [dtype]
    check_kernel(op, x)
    if dtype in ("int32", "uint8", "int8"):  # the integer types ORT's CPU Resize takes
        want = ort_run(
            "Resize",
            [x],
            consts=(np.zeros(0, np.float32), np.array(scales, np.float32)),
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
        )
        np.testing.assert_array_equal(op.reference([x])[0], want)


def test_tf_crop_and_resize_nearest_extrapolates_ints():
    op = resize(
        (1, 1, 4, 5),
        sizes=(1, 1, 5, 6),
        mode="nearest",
        coordinate_transformation_mode="tf_crop_and_resize",
        extrapolation_value=-3.0,
    )
    y = check_kernel(op, data((1, 1, 4, 5), "int32"))
    assert (y == -3).any()


@pytest.mark.parametrize(("opset", "mode", "scales"), [
    (10, "nearest", (1, 1, 2, 3)),
    (10, "nearest", (1, 1, 0.5, 0.7)),
    (10, "linear", (1, 1, 2, 1.5)),
    (10, "linear", (1, 1, 0.6, 0.6)),
])  # fmt: skip
def test_resize_opset10_matches_onnxruntime(opset, mode, scales):
    x = data((1, 2, 5, 6), seed=6)
    s = np.array(scales, np.float32)
    op, kept = Resize.from_onnx({"mode": mode}, [None, s], "r", opset)
    assert kept == (0,) and op.legacy_nearest and op.coordinate_transformation_mode == "asymmetric"
    check_kernel(op, x)
    want = ort_run("Resize", [x], consts=(s,), opset=opset, mode=mode)
    assert_close_to_reference(op.reference([x])[0], want)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("opset", [7, 9])
def test_upsample_matches_onnxruntime(opset, mode):
    x = data((1, 2, 3, 4), seed=7)
    scales = np.array([1, 1, 2, 3], np.float32)
    if opset == 7:
        op, kept = Upsample.from_onnx({"mode": mode, "scales": list(scales)}, [None], "u", opset)
        want = ort_run("Upsample", [x], opset=opset, mode=mode, scales=list(scales))
    else:
        op, kept = Upsample.from_onnx({"mode": mode}, [None, scales], "u", opset)
        want = ort_run("Upsample", [x], consts=(scales,), opset=opset, mode=mode)
    assert kept == (0,)
    check_kernel(op, x)
    assert_close_to_reference(op.reference([x])[0], want)


@pytest.mark.parametrize(
    ("shape", "scales", "sizes", "attrs"), [CASES[0], CASES[2], CASES[6], CASES[12], CASES[20]]
)
def test_allocates_nothing(shape, scales, sizes, attrs):
    run, _ = run_in_arena(resize(shape, scales, sizes, **attrs), [data(shape)])
    assert_no_numpy_allocations(run)


def test_never_sliced_and_scratch_is_a_few_rows():
    op = resize((64, 80, 80), scales=(1, 2, 2), mode="cubic")  # rank 3: flexnn's separable passes
    assert op.slice_axes([(64, 80, 80)], [(64, 160, 160)]) == ()
    assert op.scratch_bytes([(64, 80, 80)]) == 4 * (4 * 160 + 4)
    for mode in ("linear", "cubic"):  # ONNX Runtime's bilinear and bicubic need none
        assert resize((1, 64, 80, 80), scales=(1, 1, 2, 2), mode=mode).scratch_bytes([(1, 64, 80, 80)]) == 0
    assert resize((1, 64, 80, 80), scales=(1, 1, 2, 2)).scratch_bytes([(1, 64, 80, 80)]) == 0


def test_refusals():
    with pytest.raises(UnsupportedOp, match="exactly one of scales and sizes"):
        Resize.from_onnx({"mode": "linear"}, [None, None, None, None], "r", 13)
    with pytest.raises(UnsupportedOp, match="exactly one of scales and sizes"):
        Resize.from_onnx({}, [None, None, np.ones(4, np.float32), np.ones(4, np.int64)], "r", 13)
    with pytest.raises(UnsupportedOp, match="mode 'bilinear'"):
        Resize.from_onnx({"mode": "bilinear"}, [None, None, np.ones(4, np.float32)], "r", 13)
    with pytest.raises(UnsupportedOp, match="needs a roi"):
        Resize.from_onnx(
            {"coordinate_transformation_mode": "tf_crop_and_resize"},
            [None, None, np.ones(4, np.float32)],
            "r",
            13,
        )
    with pytest.raises(UnsupportedOp, match="do not exist in opset 13"):
        Resize.from_onnx({"antialias": 1}, [None, None, np.ones(4, np.float32)], "r", 13)
    with pytest.raises(UnsupportedOp, match="must be finite and > 0"):
        Resize.from_onnx({}, [None, None, np.array([1, 1, 0, 2], np.float32)], "r", 13)
    with pytest.raises(UnsupportedOp, match="antialias applies to linear and cubic"):
        Resize.from_onnx({"antialias": 1}, [None, None, np.ones(4, np.float32)], "r", 18)
    with pytest.raises(UnsupportedOp, match="input 1"):
        Upsample.from_onnx({"mode": "nearest"}, [None, None], "u", 9)
    with pytest.raises(DtypeRefused, match="int64"):
        resize((1, 1, 2, 2), scales=(1, 1, 2, 2), mode="linear").output_dtypes(["int64"])
    with pytest.raises(ShapeError, match="not a whole number"):
        resize(
            (1, 1, 2, 4),
            scales=(1, 1, 0.6, 0.6),
            mode="linear",
            coordinate_transformation_mode="align_corners",
        ).infer([(1, 1, 2, 4)], [None])
    with pytest.raises(ShapeError, match="scales"):
        resize((1, 1, 2, 4), scales=(2, 2), mode="linear").infer([(1, 1, 2, 4)], [None])
    with pytest.raises(ShapeError, match="longer than"):
        resize((1, 4), scales=(1, 1e7), mode="linear").infer([(1, 4)], [None])


@pytest.mark.parametrize(
    ("mode", "transform"),
    [("nearest", "tf_half_pixel_for_nn"), ("linear", "half_pixel"), ("cubic", "align_corners")],
)
def test_resize_opset11_matches_onnxruntime(mode, transform):
    x = data((1, 2, 5, 6), seed=8)
    roi, scales = np.zeros(0, np.float32), np.array([1, 1, 1.6, 2.5], np.float32)
    attrs = {"mode": mode, "coordinate_transformation_mode": transform}
    if transform == "align_corners":
        scales = np.array([1, 1, 2, 1.5], np.float32)  # whole output lengths: 10, 9
    op, kept = Resize.from_onnx(attrs, [None, roi, scales], "r", 11)
    assert kept == (0,)
    check_kernel(op, x)
    want = ort_run("Resize", [x], consts=(roi, scales), opset=11, **attrs)
    assert_close_to_reference(op.reference([x])[0], want)
    with pytest.raises(UnsupportedOp, match="only in opset 11"):
        Resize.from_onnx(
            {"coordinate_transformation_mode": "tf_half_pixel_for_nn"}, [None, roi, scales], "r", 13
        )


def test_uint8_mask_model_with_computed_sizes_matches_onnxruntime(tmp_path):
    """A uint8 mask upsampled by nearest to sizes computed from its own shape (Shape * [1,1,2,3],
    folded at import), beside a float linear resize: all-resident and at the smallest plan."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.conftest import assert_model_matches_ort

    nodes = [
        helper.make_node("Shape", ["mask"], ["shape"]),
        helper.make_node("Mul", ["shape", "factor"], ["sizes"]),
        helper.make_node("Resize", ["mask", "", "", "sizes"], ["big"], mode="nearest", nearest_mode="floor"),
        helper.make_node(
            "Resize",
            ["x", "", "scales"],
            ["up"],
            mode="linear",
            coordinate_transformation_mode="align_corners",
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "mask",
        [
            helper.make_tensor_value_info("mask", TensorProto.UINT8, (1, 2, 5, 4)),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 6, 7)),
        ],
        [
            helper.make_tensor_value_info("big", TensorProto.UINT8, (1, 2, 10, 12)),
            helper.make_tensor_value_info("up", TensorProto.FLOAT, (1, 3, 12, 14)),
        ],
        [
            numpy_helper.from_array(np.array([1, 1, 2, 3], np.int64), "factor"),
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    feeds = {"mask": data((1, 2, 5, 4), "uint8", seed=9), "x": data((1, 3, 6, 7), seed=10)}
    assert_model_matches_ort(model, feeds, tmp_path)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("exclude_outside", [0, 1])
def test_antialias_matches_onnxruntime(mode, exclude_outside):
    """Down-sampling with antialias; 10 * 0.7f is 7 output columns in float32, as ORT counts them."""
    x = data((1, 2, 9, 10), seed=12)
    roi, scales = np.zeros(0, np.float32), np.array([1, 1, 0.45, 0.7], np.float32)
    attrs = {"mode": mode, "antialias": 1, "exclude_outside": exclude_outside}
    op, _ = Resize.from_onnx(attrs, [None, roi, scales], "r", 18)
    assert op.infer([x.shape], [None]) == [(1, 2, 4, 7)]
    check_kernel(op, x)
    want = ort_run("Resize", [x], consts=(roi, scales), opset=18, **attrs)
    assert_close_to_reference(op.reference([x])[0], want)
