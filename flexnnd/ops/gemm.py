"""Gemm and MatMul: one BLAS call writing straight into the output, then a fused epilogue.

The constant operand is prepared as (N, K) row-major, output-channel major: a slice of output
channels [n0, n1) is then a contiguous block of rows (the planner's weight slicing), and
`Wp.T` is an F-contiguous view that numpy hands to BLAS with a transpose flag, without a copy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.activation import ACT_CODES, ACT_NONE, reference_activation
from flexnnd.ops.base import COST_FC, Axis, Op, Part, SliceAxis, internal, register, require_rank
from flexnnd.ops.buffers import check_blas, reshape_view
from flexnnd.ops.epilogue import NO_BIAS, bias_act
from flexnnd.ops.jit import kernel


@kernel
def gemm_epilogue(y, off, ld, rows, cols, bias, bias_rows, act, alpha, beta):
    """y[off + r*ld + k] = act(y[...] + C) for r < rows, k < cols (y flat).

    C is bias[k] for a row bias (bias_rows == 0), bias[k*bias_rows + r] for a full (N, M)
    matrix (C transposed, so a channel slice is contiguous), nothing when bias is empty.
    """
    n = np.uint64(cols)
    if bias.size > 0 and bias_rows == 0:
        for r in range(rows):
            s = np.uint64(off + r * ld)
            for k in range(n):
                y[s + k] += bias[k]
    elif bias.size > 0:
        step = np.uint64(bias_rows)
        for r in range(rows):
            s, c = np.uint64(off + r * ld), np.uint64(r)
            for k in range(n):
                y[s + k] += bias[k * step + c]
    if act != ACT_NONE:
        bias_act(y, bias[:0], off, ld, rows, cols, bias[:0], 0, act, alpha, beta)


@register
@dataclass(frozen=True)
class Gemm(Op):
    """Y = act(alpha * A' @ B' + beta * C), A' = A or A.T, B' = B or B.T; B and C constant."""

    op_type = "Gemm"
    const_inputs = (1, 2)
    optional_inputs = (2,)

    alpha: float = 1.0
    beta: float = 1.0
    transA: int = 0
    transB: int = 0
    activation: str = internal("")
    activation_alpha: float = internal(0.0)
    activation_beta: float = internal(0.0)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        if len(consts) < 2 or consts[1] is None:
            raise UnsupportedOp(
                cls.op_type, node, opset, "B must be a constant (use MatMul for two activations)"
            )
        return super().from_onnx(attrs, consts, node, opset)

    def check(self, node: str, opset: int) -> None:
        if self.activation not in ACT_CODES:
            raise UnsupportedOp(self.op_type, node, opset, f"fused activation {self.activation!r}")

    def _mkn(self, shapes) -> tuple[int, int, int]:
        a = require_rank(self.op_type, shapes[0], (2,), "A")
        b = require_rank(self.op_type, shapes[1], (2,), "B")
        m, k = (a[1], a[0]) if self.transA else a
        kb, n = (b[1], b[0]) if self.transB else b
        if k != kb:
            raise ShapeError(
                f"Gemm: A {a} (transA={self.transA}) and B {b} (transB={self.transB}) disagree on K"
            )
        c = shapes[2] if len(shapes) > 2 else None
        if c is not None:
            try:
                full = np.broadcast_shapes(tuple(c), (m, n))
            except ValueError:
                raise ShapeError(f"Gemm: C {c} does not broadcast to ({m}, {n})") from None
            if full != (m, n):
                raise ShapeError(f"Gemm: C {c} does not broadcast to ({m}, {n})")
        return m, k, n

    def infer(self, shapes, consts):
        m, _, n = self._mkn(shapes)
        if len(shapes) > 2 and shapes[2] is not None and len(consts) > 2 and consts[2] is None:
            raise UnsupportedOp(self.op_type, "?", None, "C must be a constant")
        return [(m, n)]

    def prepare(self, consts):
        b = np.asarray(consts[1], dtype=np.float64)
        weight = (b if self.transB else b.T) * self.alpha  # (N, K)
        out = list(consts)
        out[1] = np.ascontiguousarray(weight, dtype=np.float32)
        if len(consts) > 2 and consts[2] is not None:
            c = np.asarray(consts[2], dtype=np.float64) * self.beta
            n = weight.shape[0]
            if np.broadcast_shapes(c.shape, (1, n)) == (1, n):
                bias = np.broadcast_to(c, (1, n)).reshape(n)  # a row bias: (N,)
            else:
                bias = np.broadcast_to(c, (c.shape[0], n)).T  # varies along M: (N, M), output-major
            out[2] = np.ascontiguousarray(bias, dtype=np.float32)
        return out

    def flops(self, shapes, out_shapes):
        m, k, n = self._mkn(shapes)
        return 2 * m * k * n

    def slice_axes(self, shapes, out_shapes):
        return (SliceAxis(Axis.CHANNELS, int(out_shapes[0][1])),)  # the rows of the (N, K) weight

    def cost_kind(self, shapes):
        return COST_FC

    def shared_bytes(self, shapes):
        """The input: every output-channel part reads it whole."""
        return 4 * int(np.prod(shapes[0], dtype=np.int64))

    def bind(self, ins, outs, scratch, part: Part | None = None, reuse=False):
        a, wp, y = ins[0], ins[1], outs[0]
        bias = ins[2] if len(ins) > 2 and ins[2] is not None else NO_BIAS
        if self.transA:
            a = a.T
        m, k = a.shape
        n = y.shape[1]
        n0, n1 = 0, n
        if part is not None:
            if part.axis is not Axis.CHANNELS or not 0 <= part.start < part.stop <= n:
                raise ValueError(f"Gemm: cannot compute part {part} of an output with {n} channels")
            n0, n1 = part.start, part.stop
        bias_rows = m if bias.ndim == 2 else 0
        want_bias = ((n1 - n0, m),) if bias_rows else ((0,), (n1 - n0,))
        if wp.shape != (n1 - n0, k) or y.shape != (m, n) or bias.shape not in want_bias:
            raise ShapeError(
                f"Gemm.bind: A {ins[0].shape} (transA={self.transA}), weight {wp.shape}, bias {bias.shape}, "
                f"output {y.shape}; want weight {(n1 - n0, k)}, bias one of {want_bias} for part {part}"
            )
        out, wt, flat, flat_bias = y[:, n0:n1], wp.T, reshape_view(y, (-1,)), reshape_view(bias, (-1,))
        check_blas(a, wt, out)
        act, alpha, beta = (
            ACT_CODES[self.activation],
            float(self.activation_alpha),
            float(self.activation_beta),
        )

        def run_gemm():
            np.matmul(a, wt, out=out)
            gemm_epilogue(flat, n0, n, m, n1 - n0, flat_bias, bias_rows, act, alpha, beta)

        return run_gemm

    def reference(self, ins):
        a = np.asarray(ins[0], dtype=np.float64)
        b = np.asarray(ins[1], dtype=np.float64)
        y = (a.T if self.transA else a) @ (b.T if self.transB else b) * self.alpha
        if len(ins) > 2 and ins[2] is not None:
            y = y + self.beta * np.asarray(ins[2], dtype=np.float64)
        return [reference_activation(y, self.activation, self.activation_alpha, self.activation_beta)]


@register
@dataclass(frozen=True)
class MatMul(Op):
    """numpy matmul semantics. A constant 1-D/2-D B (with A computed at run time) is prepared as
    (N, K), like Gemm's weight, and a 2-D one is cut by output columns as Gemm is."""

    op_type = "MatMul"

    # Whether B is a constant prepared as (N, K); set from the constants at import.
    const_b: bool = internal(False)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        op, kept = super().from_onnx(attrs, consts, node, opset)
        a_const = len(consts) > 0 and consts[0] is not None  # the planner would cut A's rows too
        if len(consts) > 1 and consts[1] is not None and np.ndim(consts[1]) <= 2 and not a_const:
            op = dataclasses.replace(op, const_b=True)
        return op, kept

    def infer(self, shapes, consts):
        a, b = shapes[0], shapes[1]
        if not a or not b:
            raise ShapeError(f"MatMul: operands must have rank >= 1, got {a} and {b}")
        a2 = (1, *a) if len(a) == 1 else tuple(a)
        b2 = (*b, 1) if len(b) == 1 else tuple(b)
        if a2[-1] != b2[-2]:
            raise ShapeError(f"MatMul: A {a} and B {b} disagree on K ({a2[-1]} vs {b2[-2]})")
        try:
            batch = np.broadcast_shapes(a2[:-2], b2[:-2])
        except ValueError:
            raise ShapeError(f"MatMul: batch dimensions of A {a} and B {b} do not broadcast") from None
        out = (*batch, a2[-2], b2[-1])
        if len(a) == 1:
            out = out[:-2] + out[-1:]
        if len(b) == 1:
            out = out[:-1]
        return [tuple(int(d) for d in out)]

    def prepare(self, consts):
        out = [None if c is None else np.ascontiguousarray(c, dtype=np.float32) for c in consts]
        if self.const_b:
            b = out[1]
            out[1] = np.ascontiguousarray(b.reshape(1, -1) if b.ndim == 1 else b.T)
        return out

    def flops(self, shapes, out_shapes):
        k = shapes[0][-1]
        return 2 * k * int(np.prod(out_shapes[0], dtype=np.int64))

    def slice_axes(self, shapes, out_shapes):
        """A constant 2-D B is cut by output columns: the rows of its prepared (N, K) weight."""
        if not self.const_b or len(shapes[1]) != 2:
            return ()
        return (SliceAxis(Axis.CHANNELS, int(out_shapes[0][-1])),)

    def cost_kind(self, shapes):
        return COST_FC

    def shared_bytes(self, shapes):
        return 4 * int(np.prod(shapes[0], dtype=np.int64))

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        a, b, y = ins[0], ins[1], outs[0]
        if not self.const_b:
            if part is not None:
                raise ValueError(f"MatMul of two run-time operands cannot be sliced (part {part})")

            def run_matmul():
                np.matmul(a, b, out=y)

            return run_matmul
        k = a.shape[-1]
        a2 = reshape_view(a, (-1, k))
        n = 1 if y.ndim < a.ndim else y.shape[-1]  # a 1-D B drops the output's last axis
        y2 = reshape_view(y, (a2.shape[0], n))
        n0, n1 = 0, n
        if part is not None:
            if part.axis is not Axis.CHANNELS or not 0 <= part.start < part.stop <= n or b.ndim != 2:
                raise ValueError(f"MatMul: cannot compute part {part} of an output with {n} columns")
            n0, n1 = part.start, part.stop
        if b.shape != (n1 - n0, k):
            raise ShapeError(
                f"MatMul.bind: A {a.shape}, prepared B {b.shape}, output {y.shape}; "
                f"want B {(n1 - n0, k)} (N, K) for part {part}"
            )
        # A column block of the row-major output: BLAS writes it in place with ldc = n.
        out, wt = (y2 if part is None else y2[:, n0:n1]), b.T
        check_blas(a2, wt, out)

        def run_matmul_const():
            np.matmul(a2, wt, out=out)

        return run_matmul_const

    def reference(self, ins):
        return [np.matmul(np.asarray(ins[0], np.float64), np.asarray(ins[1], np.float64)).astype(np.float32)]
