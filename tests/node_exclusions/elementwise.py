"""Node tests of the arithmetic, comparison, logical and softmax ops (elementwise.py, compare.py,
logical.py, softmax.py) that flexnn refuses, each with the reason. None is the op's own doing:
the importer takes no uint32/uint64/string tensors and reads opsets 7-28."""

_UINT = "uint32/uint64 tensors are refused at import (the importer takes int8-int64, uint8, uint16)"
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
    "test_equal_string": _STRING,
    "test_equal_string_broadcast": _STRING,
    "test_not_2d": _OPSET1,
    "test_not_3d": _OPSET1,
    "test_not_4d": _OPSET1,
}
