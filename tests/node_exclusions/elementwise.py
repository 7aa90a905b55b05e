"""Node tests of the arithmetic, comparison, logical and softmax ops (elementwise.py, compare.py,
logical.py, softmax.py) that flexnn refuses, each with the reason. None is the op's own doing:
the importer takes no uint32/uint64/string tensors, stores every float input as float32 (so a
float64 or float16 feed is refused), and reads opsets 7-28."""

_UINT = "uint32/uint64 tensors are refused at import (the importer takes int8-int64, uint8, uint16)"
_FLOAT = "float64/float16 inputs are imported as float32: the case's float64/float16 feed is refused"
_STRING = "string tensors are refused at import"
_OPSET1 = "opset 1 (flexnn reads opsets 7-28)"

EXCLUDED = {
    **{
        f"test_{op}_{t}": _UINT
        for op in ("add", "mul", "sub", "div", "mod", "min", "max", "equal", "less", "greater")
        for t in ("uint32", "uint64")
    },
    **{f"test_{op}_{t}": _UINT for op in ("less_equal", "greater_equal") for t in ("uint32", "uint64")},
    **{
        f"test_{op}_{t}_expanded": _UINT
        for op in ("less_equal", "greater_equal")
        for t in ("uint32", "uint64")
    },
    **{f"test_{op}_{t}": _FLOAT for op in ("min", "max") for t in ("float16", "float64")},
    "test_mod_mixed_sign_float16": _FLOAT,
    "test_mod_mixed_sign_float64": _FLOAT,
    "test_mod_float16_mixed_sign_fmod_0": _FLOAT,
    "test_mod_float64_mixed_sign_fmod_0": _FLOAT,
    "test_mod_float_edge_cases_fmod_0_float16": _FLOAT,
    "test_mod_float_edge_cases_fmod_0_float64": _FLOAT,
    "test_equal_string": _STRING,
    "test_equal_string_broadcast": _STRING,
    "test_not_2d": _OPSET1,
    "test_not_3d": _OPSET1,
    "test_not_4d": _OPSET1,
}
