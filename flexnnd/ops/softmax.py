"""Softmax along one axis (opset 13) or over a 2-D coercion at `axis` (opsets 1-11)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from flexnnd.graph.ir import Shape
from flexnnd.ops.base import Op, internal, register
from flexnnd.ops.jit import kernel
from flexnnd.ops.tensor import normalize_axis, reshaped


@kernel
def softmax_rows(x, y):
    """Softmax of each row of x (rows, n) into y; y may be x."""
    rows, n = x.shape
    for r in range(rows):
        m = x[r, 0]
        for i in range(1, n):
            m = max(m, x[r, i])
        s = np.float32(0.0)
        for i in range(n):
            e = np.exp(x[r, i] - m)
            y[r, i] = e
            s += e
        inv = np.float32(1.0) / s
        for i in range(n):
            y[r, i] *= inv


@kernel
def softmax_strided(x, y):
    """Softmax of x (outer, n, inner) along axis 1 into y, vectorized over inner.

    y's rows 0 and 1 hold the running max and sum (the output is the workspace), so those two
    rows' exponentials are computed twice; y must not overlap x.
    """
    outer, n, inner = x.shape
    for o in range(outer):
        if n == 1:
            for i in range(inner):
                e = np.exp(x[o, 0, i] - x[o, 0, i])
                y[o, 0, i] = e / e
            continue
        top, total = y[o, 0], y[o, 1]
        for i in range(inner):
            top[i] = x[o, 0, i]
        for k in range(1, n):
            for i in range(inner):
                top[i] = max(top[i], x[o, k, i])
        for i in range(inner):
            total[i] = np.exp(x[o, 0, i] - top[i]) + np.exp(x[o, 1, i] - top[i])
        for k in range(2, n):
            for i in range(inner):
                e = np.exp(x[o, k, i] - top[i])
                y[o, k, i] = e
                total[i] += e
        for i in range(inner):
            total[i] = np.float32(1.0) / total[i]
        for k in range(2, n):
            for i in range(inner):
                y[o, k, i] *= total[i]
        for i in range(inner):
            inv = total[i]
            top_i = top[i]
            top[i] = np.exp(x[o, 0, i] - top_i) * inv
            total[i] = np.exp(x[o, 1, i] - top_i) * inv


@register
@dataclass(frozen=True)
class Softmax(Op):
    """Softmax along `axis` (opset >= 13). Before opset 13 the input was coerced to 2-D at
    `axis` (default 1) and normalized over the whole second dimension: `coerce_2d`."""

    op_type = "Softmax"
    axis: int = -1
    coerce_2d: bool = internal(False)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        op, keep = super().from_onnx(attrs, consts, node, opset)
        if opset < 13:
            op = replace(op, axis=int(attrs.get("axis", 1)), coerce_2d=True)
        return op, keep

    def _view(self, shape: Shape) -> tuple[int, int, int]:
        """(outer, n, inner): the softmax runs over n."""
        axis = normalize_axis(self.op_type, self.axis, len(shape), shape)
        if self.coerce_2d:
            return math.prod(shape[:axis]), math.prod(shape[axis:]), 1
        return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])

    def infer(self, shapes, consts):
        shape = tuple(shapes[0])
        self._view(shape)
        return [shape]

    def flops(self, shapes, out_shapes):
        return 4 * int(np.prod(out_shapes[0], dtype=np.int64))

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        outer, n, inner = self._view(ins[0].shape)
        if inner == 1:
            x2, y2 = reshaped(ins[0], (outer, n)), reshaped(outs[0], (outer, n))
            return lambda: softmax_rows(x2, y2)
        if np.may_share_memory(ins[0], outs[0]):
            raise ValueError("Softmax: output must not overlap the input (it is the workspace)")
        x3, y3 = reshaped(ins[0], (outer, n, inner)), reshaped(outs[0], (outer, n, inner))
        return lambda: softmax_strided(x3, y3)

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float32)
        outer, n, inner = self._view(x.shape)
        x3 = x.reshape(outer, n, inner).astype(np.float64)
        e = np.exp(x3 - x3.max(axis=1, keepdims=True))
        return [(e / e.sum(axis=1, keepdims=True)).astype(np.float32).reshape(x.shape)]
