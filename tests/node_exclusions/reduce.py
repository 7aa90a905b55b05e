"""Node tests of the reductions, ArgMax/ArgMin and TopK that flexnn refuses on purpose."""

_EMPTY = "zero-size tensors are refused at import"
_DOUBLE = "float64 data: flexnn computes in float32 and refuses a float64 feed"
EXCLUDED = {
    **{
        f"test_reduce_{op}_empty_set{x}": _EMPTY
        for op in ("l1", "l2", "log_sum", "log_sum_exp", "sum_square")
        for x in ("", "_expanded")
    },
    **{f"test_reduce_{op}_empty_set": _EMPTY for op in ("max", "min", "prod", "sum")},
    "test_reduce_max_empty_set_bool": _EMPTY,
    "test_reduce_sum_empty_set_non_reduced_axis_zero": _EMPTY,
    **{
        f"test_reduce_log_sum_exp_{case}_{data}{x}": _DOUBLE
        for case in (
            "default_axes_keepdims",
            "do_not_keepdims",
            "keepdims",
            "negative_axes_keepdims",
        )
        for data in ("example", "random")
        for x in ("", "_expanded")
    },
    "test_top_k_uint64": "uint64 tensors: TopK runs on float32, int32 and int64",
}
