"""Broadcasting arithmetic: Add, Sub, Mul, Div, Mod, Sum, Min, Max, Mean.

Integer tensors (INTEGERS), Mod, Min, Max, Mean (folded over their inputs) and the comparisons and
logical ops (`StridedOp`, also the base of compare.py and logical.py) run one strided kernel per
result kind: numpy's ufuncs would allocate a buffer on every broadcasting call. Integer Div
truncates and Mod floors as ONNX Runtime does, and a zero divisor fails the request
(InputValueError) instead of killing the process with SIGFPE as a C division would.

float32 Add/Sub/Mul/Div (and Sum) run the kernels below, fused activations included.
A binary op picks its kernel once, in bind, from the operands' shapes:
  same shape          one flat loop;
  scalar operand      one flat loop with a scalar read at call time (it may be an activation);
  "per-channel"       the smaller operand varies along one block of adjacent axes only, e.g.
                      (1,C,1,1) against (N,C,H,W): the output is seen as (outer, block, inner);
  anything else       a 6-D loop over zero-stride broadcast views (np.broadcast_to, no copy).
Either operand may be a constant or an activation; constants keep their ONNX layout. A fused
activation (the graph pass fuses Add -> Relu in ResNets) is applied block by block while the
block is still in cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.graph.ir import Shape
from flexnnd.ops.activation import ACT_CODES, ACT_NONE, activate, reference_activation
from flexnnd.ops.base import Kernel, Op, broadcast_shapes, internal, register
from flexnnd.ops.jit import kernel
from flexnnd.ops.strided_binary import (  # noqa: F401 - compare.py and logical.py read the codes here
    AND,
    EQ,
    FLOOR_MOD,
    GE,
    GT,
    I_ADD,
    I_MAX,
    I_MIN,
    I_MUL,
    I_SUB,
    LE,
    LT,
    MAX_RANK,
    OR,
    TRUNC_DIV,
    TRUNC_MOD,
    XOR,
    _compare,
    _dividing,
    _float_mod,
    _padded,
    _plain,
    bind_strided,
    collapsed,
    element_strides,
    reference_integer_divide,
    strided_compare,
    strided_float,
    strided_integer,
)
from flexnnd.ops.tensor import copy_flat, reshaped

# Operation codes; R* swap the operands, so the kernels can keep the broadcast one second.
ADD, SUB, MUL, DIV, RSUB, RDIV = range(6)
SWAPPED = {ADD: ADD, SUB: RSUB, MUL: MUL, DIV: RDIV}
BLOCK = 4096  # elements per fused-activation block: 16 KiB of float32, stays in L1
INTEGERS = ("int64", "int32", "int16", "int8", "uint16", "uint8")  # the importer's integer types
NUMERIC = ("float32", *INTEGERS)


@kernel(inline="always")
def _apply(op, u, v):
    # Loop-invariant `op`: LLVM unswitches the loop, so each loop body stays branch-free.
    if op == ADD:
        return u + v
    if op == SUB:
        return u - v
    if op == MUL:
        return u * v
    if op == DIV:
        return u / v
    if op == RSUB:
        return v - u
    return v / u


@kernel
def binary_flat(a, b, y, op, act, alpha, beta):
    """y = a op b over flat arrays of one size."""
    n = y.size
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        # Block views indexed from 0: no negative-index wraparound check, so the loop vectorizes.
        a_blk, b_blk, y_blk = a[start:stop], b[start:stop], y[start:stop]
        for i in range(stop - start):
            y_blk[i] = _apply(op, a_blk[i], b_blk[i])
        if act != ACT_NONE:
            activate(y_blk, y_blk, act, alpha, beta)


@kernel
def binary_scalar(a, b, y, op, act, alpha, beta):
    """y = a op b[0]; a and y flat, b holds one element (read now: it may be an activation)."""
    n = y.size
    v = b[0]
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        a_blk, y_blk = a[start:stop], y[start:stop]
        for i in range(stop - start):
            y_blk[i] = _apply(op, a_blk[i], v)
        if act != ACT_NONE:
            activate(y_blk, y_blk, act, alpha, beta)


@kernel
def binary_block(a, b, y, op, act, alpha, beta):
    """y[o, m, i] = a[o, m, i] op b[m]: a, y (outer, block, inner), b (block,)."""
    outer, block, inner = y.shape
    for o in range(outer):
        if inner == 1:
            for m in range(block):
                y[o, m, 0] = _apply(op, a[o, m, 0], b[m])
            if act != ACT_NONE:
                activate(y[o, :, 0], y[o, :, 0], act, alpha, beta)
        else:
            for m in range(block):
                v = b[m]
                for i in range(inner):
                    y[o, m, i] = _apply(op, a[o, m, i], v)
                if act != ACT_NONE:
                    activate(y[o, m], y[o, m], act, alpha, beta)


@kernel
def binary_broadcast(a, b, y, op):
    """y = a op b over 6-D views of y's shape (a and b may have zero strides)."""
    d0, d1, d2, d3, d4, d5 = y.shape
    for i0 in range(d0):
        for i1 in range(d1):
            for i2 in range(d2):
                for i3 in range(d3):
                    for i4 in range(d4):
                        for i5 in range(d5):
                            y[i0, i1, i2, i3, i4, i5] = _apply(
                                op, a[i0, i1, i2, i3, i4, i5], b[i0, i1, i2, i3, i4, i5]
                            )


def _block(small: Shape, out: Shape) -> tuple[int, int, int] | None:
    """(outer, block, inner) when `small` (padded to out's rank) equals `out` on one run of adjacent
    axes and is 1 elsewhere; else None."""
    varying = [i for i, s in enumerate(small) if s != 1]
    if (
        not varying
        or any(small[i] != out[i] for i in varying)
        or varying[-1] - varying[0] + 1 != len(varying)
    ):
        return None
    lo, hi = varying[0], varying[-1] + 1
    return math.prod(out[:lo]), math.prod(out[lo:hi]), math.prod(out[hi:])


def binary_path(name: str, a: Shape, b: Shape, out: Shape | None = None) -> tuple[str, bool]:
    """The kernel for `a op b` into `out` (default: their broadcast shape): "flat", "scalar",
    "block" or "broadcast", and whether the operands are swapped so the full-size one is first."""
    out = broadcast_shapes(name, a, b) if out is None else out
    rank = max(len(out), 1)
    pa, pb, po = _padded(a, rank), _padded(b, rank), _padded(out, rank)
    swap = pa != po and pb == po
    if swap:
        pa, pb = pb, pa
    if pa == po:
        if pb == po:
            return "flat", swap
        if math.prod(pb) == 1:
            return "scalar", swap
        if _block(pb, po) is not None:
            return "block", swap
    if len(out) > MAX_RANK:
        raise UnsupportedOp(name, "?", None, f"broadcasting {a} with {b}: rank above {MAX_RANK}")
    return "broadcast", False


def bind_binary(
    op: int, a: np.ndarray, b: np.ndarray, y: np.ndarray, act: str = "", alpha: float = 0.0, beta: float = 0.0
) -> Kernel:
    """A callable computing y = act(a op b), both broadcast to y's shape; all shape work done here."""
    name = {ADD: "Add", SUB: "Sub", MUL: "Mul", DIV: "Div"}[op]
    out = broadcast_shapes(name, a.shape, b.shape, y.shape)
    if out != y.shape:
        raise ShapeError(f"{name}: inputs {a.shape} and {b.shape} broadcast to {out}, output is {y.shape}")
    path, swap = binary_path(name, a.shape, b.shape, out)
    if swap:
        a, b, op = b, a, SWAPPED[op]
    code = ACT_CODES[act]
    y_flat = reshaped(y, (-1,))
    if path == "flat":
        a_flat, b_flat = reshaped(a, (-1,)), reshaped(b, (-1,))
        return lambda: binary_flat(a_flat, b_flat, y_flat, op, code, alpha, beta)
    if path == "scalar":
        a_flat, b_one = reshaped(a, (-1,)), reshaped(b, (1,))
        return lambda: binary_scalar(a_flat, b_one, y_flat, op, code, alpha, beta)
    if path == "block":
        shape = _block(_padded(b.shape, max(len(out), 1)), _padded(out, max(len(out), 1)))
        a3, b1, y3 = reshaped(a, shape), reshaped(b, (-1,)), reshaped(y, shape)
        return lambda: binary_block(a3, b1, y3, op, code, alpha, beta)
    full = _padded(out, MAX_RANK)
    a6 = np.broadcast_to(reshaped(a, _padded(a.shape, MAX_RANK)), full)
    b6 = np.broadcast_to(reshaped(b, _padded(b.shape, MAX_RANK)), full)
    y6 = reshaped(y, full)
    if code == ACT_NONE:
        return lambda: binary_broadcast(a6, b6, y6, op)

    def run() -> None:
        binary_broadcast(a6, b6, y6, op)
        activate(y_flat, y_flat, code, alpha, beta)

    return run


def same_dtype(op_type: str, dtypes, allowed: tuple[str, ...]) -> str:
    """The one element type of the present inputs, if `allowed`; else DtypeRefused."""
    present = [d for d in dtypes if d is not None]
    if len(set(present)) > 1:
        raise DtypeRefused(f"{op_type}: inputs have different element types {present}")
    if present[0] not in allowed:
        raise DtypeRefused(f"{op_type} takes {', '.join(allowed)}, not {present[0]}")
    return present[0]


def reference_binary(op: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    fn = {ADD: np.add, SUB: np.subtract, MUL: np.multiply, DIV: np.divide}[op]
    with np.errstate(divide="ignore", invalid="ignore"):
        return fn(a, b)


@dataclass(frozen=True)
class _Binary(Op):
    """Add/Sub/Mul/Div with numpy broadcasting and, on float32, an optional fused activation."""

    code: ClassVar[int] = ADD
    activation: str = internal("")  # a fused activation: a key of activation.ACT_CODES
    activation_alpha: float = internal(0.0)
    activation_beta: float = internal(0.0)

    def check(self, node, opset):
        if self.activation not in ACT_CODES:
            raise UnsupportedOp(self.op_type, node, opset, f"fused activation {self.activation!r}")

    def output_dtypes(self, dtypes):
        dtype = same_dtype(self.op_type, dtypes, NUMERIC)
        if dtype != "float32" and self.activation:
            raise DtypeRefused(f"{self.op_type}: a fused {self.activation} runs on float32, not {dtype}")
        return [dtype]

    def infer(self, shapes, consts):
        binary_path(self.op_type, tuple(shapes[0]), tuple(shapes[1]))  # rejects a rank it cannot run
        return [broadcast_shapes(self.op_type, tuple(shapes[0]), tuple(shapes[1]))]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        a, b, y = ins[0], ins[1], outs[0]
        if a.dtype == np.float32:
            act = (self.activation, float(self.activation_alpha), float(self.activation_beta))
            return bind_binary(self.code, a, b, y, *act)
        if self.activation:
            raise ShapeError(f"{self.op_type}.bind: a fused {self.activation} on {a.dtype}")
        code = {ADD: I_ADD, SUB: I_SUB, MUL: I_MUL, DIV: TRUNC_DIV}[self.code]
        return bind_strided(self.op_type, strided_integer, code, a, b, y)

    def reference(self, ins):
        if np.asarray(ins[0]).dtype.kind in "iu" and self.code == DIV:
            return [reference_integer_divide(self.op_type, TRUNC_DIV, ins[0], ins[1])]
        y = reference_binary(self.code, ins[0], ins[1])
        if self.activation:
            y = reference_activation(y, self.activation, self.activation_alpha, self.activation_beta)
        return [y]


@register
@dataclass(frozen=True)
class Add(_Binary):
    op_type = "Add"
    code = ADD


@register
@dataclass(frozen=True)
class Sub(_Binary):
    op_type = "Sub"
    code = SUB


@register
@dataclass(frozen=True)
class Mul(_Binary):
    op_type = "Mul"
    code = MUL


@register
@dataclass(frozen=True)
class Div(_Binary):
    op_type = "Div"
    code = DIV


@register
@dataclass(frozen=True)
class Sum(Op):
    """Variadic Add: y = x0 + x1, then y += x2, ... (each step any broadcast path)."""

    op_type = "Sum"

    def infer(self, shapes, consts):
        return [broadcast_shapes(self.op_type, *(tuple(s) for s in shapes))]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        y = outs[0]
        if len(ins) == 1:
            src, dst = reshaped(ins[0], (-1,)), reshaped(y, (-1,))
            return lambda: copy_flat(src, dst)
        steps = [bind_binary(ADD, ins[0], ins[1], y)] + [bind_binary(ADD, y, x, y) for x in ins[2:]]
        if len(steps) == 1:
            return steps[0]

        def run() -> None:
            for step in steps:
                step()

        return run

    def reference(self, ins):
        y = np.asarray(ins[0])
        for x in ins[1:]:
            y = y + np.asarray(x)
        return [np.array(y, copy=True)]


@register
@dataclass(frozen=True)
class Mod(Op):
    """Remainder: with fmod=0 it has the divisor's sign (floor), with fmod=1 the dividend's (C's
    fmod). On integers a zero divisor fails the request; on float32 it gives NaN."""

    op_type = "Mod"
    fmod: int = 0
    float_floor: bool = internal(True)  # fmod=0 on floats: defined from opset 28, invalid before

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        op, keep = super().from_onnx(attrs, consts, node, opset)
        return replace(op, float_floor=opset >= 28), keep

    def check(self, node, opset):
        if self.fmod not in (0, 1):
            raise UnsupportedOp(self.op_type, node, opset, f"fmod={self.fmod} (must be 0 or 1)")

    def output_dtypes(self, dtypes):
        dtype = same_dtype(self.op_type, dtypes, NUMERIC)
        if dtype == "float32" and not self.fmod and not self.float_floor:
            raise DtypeRefused("Mod on float32 needs fmod=1 before opset 28 (as ONNX and ONNX Runtime say)")
        return [dtype]

    def infer(self, shapes, consts):
        return [broadcast_shapes(self.op_type, tuple(shapes[0]), tuple(shapes[1]))]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        a, b, y = ins[0], ins[1], outs[0]
        run_kernel = strided_integer if a.dtype.kind in "iu" else strided_float
        return bind_strided(self.op_type, run_kernel, TRUNC_MOD if self.fmod else FLOOR_MOD, a, b, y)

    def reference(self, ins):
        a, b = np.asarray(ins[0]), np.asarray(ins[1])
        if a.dtype.kind in "iu":
            return [reference_integer_divide(self.op_type, TRUNC_MOD if self.fmod else FLOOR_MOD, a, b)]
        with np.errstate(invalid="ignore", divide="ignore"):
            return [(np.fmod if self.fmod else np.mod)(a, b)]


@dataclass(frozen=True)
class StridedOp(Op):
    """An op that is one strided kernel code folded over its broadcast inputs into its output:
    y = x0 op x1, then y = y op x2, ...; `ufunc` is the same op in numpy, for the reference."""

    code: ClassVar[int] = I_ADD
    compare: ClassVar[bool] = False  # strided_compare, into a bool output
    dtypes: ClassVar[tuple[str, ...]] = NUMERIC  # the element types it takes, all inputs alike
    ufunc: ClassVar[np.ufunc] = np.add

    def output_dtypes(self, dtypes):
        dtype = same_dtype(self.op_type, dtypes, self.dtypes)
        return ["bool" if self.compare else dtype]

    def infer(self, shapes, consts):
        return [broadcast_shapes(self.op_type, *(tuple(s) for s in shapes))]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        y = outs[0]
        if len(ins) == 1:
            x = reshaped(ins[0], (-1,))
            if x.size != y.size:
                raise ShapeError(f"{self.op_type}: input {ins[0].shape}, output {y.shape}")
            flat_y = reshaped(y, (-1,))
            return lambda: copy_flat(x, flat_y)
        kind = ins[0].dtype.kind
        run_kernel = strided_compare if self.compare else strided_integer if kind in "iu" else strided_float
        steps = [bind_strided(self.op_type, run_kernel, self.code, ins[0], ins[1], y)]
        steps += [bind_strided(self.op_type, run_kernel, self.code, y, x, y) for x in ins[2:]]
        if len(steps) == 1:
            return steps[0]

        def run() -> None:
            for step in steps:
                step()

        return run

    def reference(self, ins):
        y = np.asarray(ins[0])
        for x in ins[1:]:
            y = self.ufunc(y, np.asarray(x))
        return [np.array(np.broadcast_to(y, self.infer([np.shape(x) for x in ins], [])[0]), copy=True)]


@register
@dataclass(frozen=True)
class Min(StridedOp):
    """Elementwise minimum of its inputs (a NaN wins, as in ONNX Runtime)."""

    op_type = "Min"
    code = I_MIN
    ufunc = np.minimum


@register
@dataclass(frozen=True)
class Max(StridedOp):
    """Elementwise maximum of its inputs (a NaN wins, as in ONNX Runtime)."""

    op_type = "Max"
    code = I_MAX
    ufunc = np.maximum


@register
@dataclass(frozen=True)
class Mean(StridedOp):
    """The inputs' sum divided by their count (float32 only, as ONNX says)."""

    op_type = "Mean"
    dtypes = ("float32",)

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        total = super().bind(ins, outs, scratch, part, reuse)
        y, count = outs[0], np.float32(len(ins))

        def run() -> None:
            total()
            np.divide(y, count, out=y)

        return run

    def reference(self, ins):
        return [(super().reference(ins)[0] / np.float32(len(ins))).astype(np.float32)]
