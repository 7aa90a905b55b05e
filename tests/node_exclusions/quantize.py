"""Quantization node tests flexnn refuses, with the reasons."""

_BLOCKED = "blocked quantization (block_size > 0) is refused"
_NARROW = "float8, float4, int4 and int2 tensors are refused: flexnn quantizes to 8 and 16 bits"

EXCLUDED = {
    "test_dequantizelinear_blocked": _BLOCKED,
    "test_quantizelinear_blocked_asymmetric": _BLOCKED,
    "test_quantizelinear_blocked_symmetric": _BLOCKED,
    **{
        f"test_{op}_{t}": _NARROW
        for op in ("quantizelinear", "dequantizelinear")
        for t in ("e4m3fn", "e5m2", "float4e2m1", "int2", "int4", "uint2", "uint4")
    },
    "test_dequantizelinear_e4m3fn_float16": _NARROW,
    "test_dequantizelinear_e4m3fn_zero_point": _NARROW,
}
