"""Not, And, Or, Xor on bool tensors (And/Or/Xor broadcast), for masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError
from flexnnd.ops.base import Op, register
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.elementwise import AND, OR, XOR, StridedOp, same_dtype
from flexnnd.ops.jit import kernel


@kernel
def logical_not(x, y):
    """y = not x over flat bool arrays (x may be y)."""
    for i in range(x.size):
        y[i] = not x[i]


@register
@dataclass(frozen=True)
class Not(Op):
    op_type = "Not"

    def output_dtypes(self, dtypes):
        return [same_dtype(self.op_type, dtypes, ("bool",))]

    def infer(self, shapes, consts):
        return [tuple(shapes[0])]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if ins[0].shape != outs[0].shape or ins[0].dtype != np.bool_ or outs[0].dtype != np.bool_:
            raise ShapeError(
                f"Not.bind: input {ins[0].shape} {ins[0].dtype}, output {outs[0].shape} {outs[0].dtype}"
            )
        x, y = reshape_view(ins[0], (-1,)), reshape_view(outs[0], (-1,))
        return lambda: logical_not(x, y)

    def reference(self, ins):
        return [np.logical_not(np.asarray(ins[0]))]


@dataclass(frozen=True)
class _Logical(StridedOp):
    compare = True
    dtypes = ("bool",)

    def infer(self, shapes, consts):
        if len(shapes) != 2:
            raise ShapeError(f"{self.op_type}: takes 2 inputs, got {len(shapes)}")
        return super().infer(shapes, consts)


@register
@dataclass(frozen=True)
class And(_Logical):
    op_type = "And"
    code = AND
    ufunc = np.logical_and


@register
@dataclass(frozen=True)
class Or(_Logical):
    op_type = "Or"
    code = OR
    ufunc = np.logical_or


@register
@dataclass(frozen=True)
class Xor(_Logical):
    op_type = "Xor"
    code = XOR
    ufunc = np.logical_xor
