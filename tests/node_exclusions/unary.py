"""Node tests of the unary math and activation ops that flexnn refuses on purpose, each with the
reason. (The `_expanded` reduce cases that Exp and Log make runnable are excluded in reduce.py.)"""

_INT_POW = "an integer Pow takes only a constant scalar exponent (a whole number >= 0)"
EXCLUDED = {
    "test_pow_types_int32_int32": _INT_POW,
    "test_pow_types_int64_int64": _INT_POW,
    "test_pow_types_int32_float32": _INT_POW,
    "test_pow_types_int64_float32": _INT_POW,
    "test_celu_bfloat16": "bfloat16 model inputs are refused at import",
}
