"""Node tests of Einsum that flexnn refuses on purpose, each with the reason."""

_BF16 = "bfloat16 tensors are refused at import"
EXCLUDED = {
    "test_einsum_batch_diagonal": "Einsum with a repeated letter in one operand (a diagonal) is refused",
    "test_einsum_batch_matmul_bfloat16": _BF16,
    "test_einsum_sum_bfloat16": _BF16,
    "test_einsum_transpose_bfloat16": _BF16,
}
