"""Softmax, LogSoftmax and Hardmax along one axis (opset 13) or over a 2-D coercion at `axis`
(opsets 1-11: the input seen as (prod(shape[:axis]), prod(shape[axis:])), normalized per row).

The exponentials come from `exp_nonpos`, a polynomial exp LLVM vectorizes (numba's np.exp is a
scalar libm call per element: the attention softmax of a ViT ran 7.4x ONNX Runtime's time with it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from flexnnd.graph.ir import Shape
from flexnnd.ops.base import Op, internal, register
from flexnnd.ops.jit import kernel
from flexnnd.ops.tensor import normalize_axis, reshaped

EXP_LOWEST = np.float32(-87.33654)  # exp of anything lower is below float32's smallest normal


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of the integer `bits`."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@kernel(inline="always")
def exp_nonpos(x):
    """exp(x) for x <= 0 (a value minus its row's max) in float32, relative error < 4e-7; 0 below
    EXP_LOWEST, NaN for NaN. Cephes' expf: x = n ln2 + r, exp(r) by a polynomial, 2^n by bits."""
    xc = EXP_LOWEST if x < EXP_LOWEST else x
    n = np.floor(xc * np.float32(1.44269504) + np.float32(0.5))
    r = xc - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    # 2^n as the bit pattern (n + 127) << 23, computed in float so the loop stays 32-bit wide.
    v = p * _float32_from_bits(np.int32((n + np.float32(127.0)) * np.float32(8388608.0)))
    return np.float32(0.0) if x < EXP_LOWEST else v


@kernel(inline="always")
def row_max(xr):
    """The largest of xr (NaNs skipped: they make the row's results NaN anyway). Four running
    maxima: LLVM vectorizes no max reduction without nnan, and one chain waits on each compare."""
    n = xr.size
    m0 = m1 = m2 = m3 = xr[0]
    full = n - n % 4
    for i in range(0, full, 4):
        a, b, c, d = xr[i], xr[i + 1], xr[i + 2], xr[i + 3]
        m0 = a if a > m0 else m0
        m1 = b if b > m1 else m1
        m2 = c if c > m2 else m2
        m3 = d if d > m3 else m3
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m = m2 if m2 > m0 else m0
    for i in range(full, n):
        m = xr[i] if xr[i] > m else m
    return m


@kernel
def softmax_rows(x, y, log):
    """Softmax (LogSoftmax if `log`) of each row of x (rows, n) into y; y may be x."""
    rows, n = x.shape
    for r in range(rows):
        xr, yr = x[r], y[r]
        m = row_max(xr)
        s = np.float32(0.0)
        if log:
            for i in range(n):
                s += exp_nonpos(xr[i] - m)
            # Two passes, not x - (m + log s): that rounds at m's magnitude (reassoc may fold one).
            log_s = np.log(s)
            for i in range(n):
                yr[i] = xr[i] - m
            for i in range(n):
                yr[i] -= log_s
            continue
        for i in range(n):
            e = exp_nonpos(xr[i] - m)
            yr[i] = e
            s += e
        inv = np.float32(1.0) / s
        for i in range(n):
            yr[i] *= inv


@kernel
def softmax_strided(x, y, work, log):
    """Softmax (LogSoftmax if `log`) of x (outer, n, inner) along axis 1 into y, vectorized over
    inner. The running max and sum live in `work` (2 * inner floats) or, when it is empty (Softmax
    only), in y's rows 0 and 1: then y must not overlap x, and those rows' exponentials are
    computed twice."""
    outer, n, inner = x.shape
    for o in range(outer):
        if work.size == 0 and n == 1:
            for i in range(inner):
                e = exp_nonpos(x[o, 0, i] - x[o, 0, i])
                y[o, 0, i] = e / e  # 1, or NaN for an infinite or NaN input
            continue
        top = work[:inner] if work.size else y[o, 0]
        total = work[inner : 2 * inner] if work.size else y[o, 1]
        for i in range(inner):
            top[i] = x[o, 0, i]
        for k in range(1, n):
            for i in range(inner):
                v = x[o, k, i]
                top[i] = v if v > top[i] else top[i]
        for i in range(inner):
            total[i] = np.float32(0.0)
        for k in range(n):
            for i in range(inner):
                e = exp_nonpos(x[o, k, i] - top[i])
                if not log and k >= 2:
                    y[o, k, i] = e
                total[i] += e
        if log:
            for i in range(inner):
                total[i] = np.log(total[i])
            for k in range(n):
                for i in range(inner):
                    y[o, k, i] = x[o, k, i] - top[i]
                for i in range(inner):
                    y[o, k, i] -= total[i]
            continue
        for i in range(inner):
            total[i] = np.float32(1.0) / total[i]
        for k in range(2, n):
            for i in range(inner):
                y[o, k, i] *= total[i]
        for i in range(inner):  # rows 0 and 1 last: they may be top and total
            inv, top_i = total[i], top[i]
            second = exp_nonpos(x[o, 1, i] - top_i) * inv if n > 1 else np.float32(0.0)
            first = exp_nonpos(x[o, 0, i] - top_i) * inv
            y[o, 0, i] = first
            if n > 1:
                y[o, 1, i] = second


@kernel
def hardmax_rows(x, y):
    """y[r] = one-hot of the first largest x[r] (the first NaN if any, as np.argmax), x (rows, n)."""
    rows, n = x.shape
    for r in range(rows):
        xr, yr = x[r], y[r]
        nans = 0
        for i in range(n):
            nans += xr[i] != xr[i]
        top = row_max(xr)
        arg = 0
        for i in range(n):
            v = xr[i]
            if (v != v) if nans else (v == top):
                arg = i
                break
        for i in range(n):
            yr[i] = np.float32(0.0)
        yr[arg] = np.float32(1.0)


@kernel
def hardmax(x, y):
    """y[o, :, i] = one-hot of the first largest x[o, :, i] (NaN counts as largest, as np.argmax)."""
    outer, n, inner = x.shape
    for o in range(outer):
        for i in range(inner):
            best, arg = x[o, 0, i], 0
            for k in range(1, n):
                v = x[o, k, i]
                if v > best or (v != v and best == best):
                    best, arg = v, k
            for k in range(n):
                y[o, k, i] = np.float32(0.0)
            y[o, arg, i] = np.float32(1.0)


@dataclass(frozen=True)
class _AlongAxis(Op):
    """An op normalizing along `axis` (opset >= 13). Before opset 13 the input was coerced to 2-D
    at `axis` (default 1) and normalized over the whole second dimension: `coerce_2d`."""

    axis: int = -1
    coerce_2d: bool = internal(False)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        op, keep = super().from_onnx(attrs, consts, node, opset)
        if opset < 13:
            op = replace(op, axis=int(attrs.get("axis", 1)), coerce_2d=True)
        return op, keep

    def _view(self, shape: Shape) -> tuple[int, int, int]:
        """(outer, n, inner): the op runs over n."""
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

    def _views(self, ins, outs) -> tuple[np.ndarray, np.ndarray]:
        shape = self._view(ins[0].shape)
        return reshaped(ins[0], shape), reshaped(outs[0], shape)

    def _reference_3d(self, ins) -> tuple[np.ndarray, Shape]:
        x = np.asarray(ins[0], dtype=np.float32)
        return x.reshape(self._view(x.shape)).astype(np.float64), x.shape


NO_WORK = np.zeros(0, dtype=np.float32)  # softmax_strided then keeps its max and sum in y's rows


@register
@dataclass(frozen=True)
class Softmax(_AlongAxis):
    op_type = "Softmax"

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x3, y3 = self._views(ins, outs)
        if x3.shape[2] == 1:
            x2, y2 = reshaped(ins[0], x3.shape[:2]), reshaped(outs[0], x3.shape[:2])
            return lambda: softmax_rows(x2, y2, False)
        if np.may_share_memory(ins[0], outs[0]):
            raise ValueError("Softmax: output must not overlap the input (it is the workspace)")
        return lambda: softmax_strided(x3, y3, NO_WORK, False)

    def reference(self, ins):
        x3, shape = self._reference_3d(ins)
        e = np.exp(x3 - x3.max(axis=1, keepdims=True))
        return [(e / e.sum(axis=1, keepdims=True)).astype(np.float32).reshape(shape)]


@register
@dataclass(frozen=True)
class LogSoftmax(_AlongAxis):
    """log(softmax(x)) as x - max - log(sum(exp(x - max))): finite where softmax underflows."""

    op_type = "LogSoftmax"

    def scratch_bytes(self, shapes, part=None):
        inner = self._view(tuple(shapes[0]))[2]
        return 0 if inner == 1 else 2 * inner * 4  # the running max and sum per inner position

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x3, y3 = self._views(ins, outs)
        inner = x3.shape[2]
        if inner == 1:
            x2, y2 = reshaped(ins[0], x3.shape[:2]), reshaped(outs[0], x3.shape[:2])
            return lambda: softmax_rows(x2, y2, True)
        if scratch is None or scratch.size < 2 * inner:
            raise ValueError(
                f"LogSoftmax.bind: scratch of {0 if scratch is None else scratch.size} floats, need {2 * inner}"
            )
        work = reshaped(scratch, (-1,))[: 2 * inner]
        return lambda: softmax_strided(x3, y3, work, True)

    def reference(self, ins):
        x3, shape = self._reference_3d(ins)
        shifted = x3 - x3.max(axis=1, keepdims=True)
        return [
            (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))).astype(np.float32).reshape(shape)
        ]


@register
@dataclass(frozen=True)
class Hardmax(_AlongAxis):
    """1 at the first largest element along the axis, 0 elsewhere."""

    op_type = "Hardmax"

    def flops(self, shapes, out_shapes):
        return int(np.prod(out_shapes[0], dtype=np.int64))

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x3, y3 = self._views(ins, outs)
        if np.may_share_memory(ins[0], outs[0]):
            raise ValueError("Hardmax: output must not overlap the input")
        if x3.shape[2] == 1:
            x2, y2 = reshaped(ins[0], x3.shape[:2]), reshaped(outs[0], x3.shape[:2])
            return lambda: hardmax_rows(x2, y2)
        return lambda: hardmax(x3, y3)

    def reference(self, ins):
        x3, shape = self._reference_3d(ins)
        y = np.zeros(x3.shape, dtype=np.float32)
        np.put_along_axis(y, np.argmax(x3, axis=1)[:, None, :], 1.0, axis=1)
        return [y.reshape(shape)]
