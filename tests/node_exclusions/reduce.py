"""Node tests of the reductions, ArgMax/ArgMin and TopK that flexnn refuses on purpose."""

_EMPTY = "zero-size tensors are refused at import"
EXCLUDED = {
    **{
        f"test_reduce_{op}_empty_set{x}": _EMPTY
        for op in ("l1", "l2", "log_sum", "log_sum_exp", "sum_square")
        for x in ("", "_expanded")
    },
    **{f"test_reduce_{op}_empty_set": _EMPTY for op in ("max", "min", "prod", "sum")},
    "test_reduce_max_empty_set_bool": _EMPTY,
    "test_reduce_sum_empty_set_non_reduced_axis_zero": _EMPTY,
    "test_top_k_uint64": "uint64 tensors: TopK runs on float32, int32 and int64",
}
