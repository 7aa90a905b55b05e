"""Node tests of the data movement ops (Slice, Split, Pad, Tile, Expand, DepthToSpace,
SpaceToDepth, Trilu, CumSum) that flexnn refuses on purpose, each with the reason."""

_EMPTY = "zero-size tensors are refused at import"
_FLOAT64 = "float64 graph inputs are held as float32: the session refuses a float64 feed"
EXCLUDED = {
    "test_slice_start_out_of_bounds": _EMPTY,
    "test_split_zero_size_splits_opset13": _EMPTY,
    "test_split_zero_size_splits_opset18": _EMPTY,
    "test_tril_zero": _EMPTY,
    "test_triu_zero": _EMPTY,
    **{
        f"test_cumsum_{case}": _FLOAT64
        for case in (
            "1d",
            "1d_exclusive",
            "1d_reverse",
            "1d_reverse_exclusive",
            "2d_axis_0",
            "2d_axis_1",
            "2d_negative_axis",
        )
    },
}
