"""The op registry: importing this package registers every op family."""

from flexnnd.ops import activation, conv, elementwise, erf, gemm, norm, pool, tensor  # noqa: F401
from flexnnd.ops.base import Op, op_class, register, registered_ops

__all__ = ["Op", "op_class", "register", "registered_ops"]
