"""Equal, Less, LessOrEqual, Greater, GreaterOrEqual: broadcasting comparisons into bool tensors.

Both inputs have one element type: float32 or an integer type (and bool for Equal). They run
elementwise.strided_compare; attention masks and token-id checks are their users in real models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError
from flexnnd.ops.base import register
from flexnnd.ops.elementwise import EQ, GE, GT, LE, LT, NUMERIC, StridedOp


@dataclass(frozen=True)
class _Comparison(StridedOp):
    compare = True

    def infer(self, shapes, consts):
        if len(shapes) != 2:
            raise ShapeError(f"{self.op_type}: takes 2 inputs, got {len(shapes)}")
        return super().infer(shapes, consts)


@register
@dataclass(frozen=True)
class Equal(_Comparison):
    op_type = "Equal"
    code = EQ
    dtypes = (*NUMERIC, "bool")
    ufunc = np.equal


@register
@dataclass(frozen=True)
class Less(_Comparison):
    op_type = "Less"
    code = LT
    ufunc = np.less


@register
@dataclass(frozen=True)
class LessOrEqual(_Comparison):
    op_type = "LessOrEqual"
    code = LE
    ufunc = np.less_equal


@register
@dataclass(frozen=True)
class Greater(_Comparison):
    op_type = "Greater"
    code = GT
    ufunc = np.greater


@register
@dataclass(frozen=True)
class GreaterOrEqual(_Comparison):
    op_type = "GreaterOrEqual"
    code = GE
    ufunc = np.greater_equal
