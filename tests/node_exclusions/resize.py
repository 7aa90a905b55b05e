"""Node tests of Resize, Upsample and ConvTranspose that flexnn refuses on purpose, each with the reason."""

_FRACTIONAL = (
    "align_corners with scales whose output length in*scale is not whole (2*0.6 = 1.2): ONNX's reference "
    "divides by in*scale - 1, ONNX Runtime and the spec text by the resized length - 1; flexnn refuses"
)
EXCLUDED = {
    "test_resize_downsample_scales_linear_align_corners": _FRACTIONAL,
    "test_resize_downsample_scales_cubic_align_corners": _FRACTIONAL,
}
EXCLUDED["test_convtranspose_3d"] = "flexnn's ConvTranspose is 1-D and 2-D (3-D is refused)"
