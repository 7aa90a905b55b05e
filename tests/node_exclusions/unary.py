"""Node tests of the unary math and activation ops that flexnn refuses on purpose, each with the
reason. (The `_expanded` reduce cases that Exp and Log make runnable are excluded in reduce.py.)"""

EXCLUDED = {
    "test_celu_bfloat16": "bfloat16 model inputs are refused at import",
}
