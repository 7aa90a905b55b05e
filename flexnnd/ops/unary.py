"""Elementwise math of one tensor: Exp, Log, Sqrt, Tanh, Sin, Cos, Abs, Neg, Reciprocal, Floor,
Ceil, Round, Sign, and the activations Gelu, Mish, Softplus, Softsign, Elu, Selu, Celu,
ThresholdedRelu; plus PRelu, whose slope is a constant broadcast to the input.

Two kinds of kernel, whichever measured faster here: numpy's float32 ufuncs (SIMD in numpy, called
with `out=` on the arena views) for the ops that are one ufunc, and one numba kernel, `unary`, for
the rest, on the vectorizable exp of `activation.py` (numba's math.tanh/erf/exp call libm per
element: 40, 50 and 7 ms on [1,96,112,112] where np.tanh and `unary` take about 0.4). None has weights or scratch: never sliced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.activation import erfc32, exp32, expm1_32
from flexnnd.ops.base import Op, broadcast_shapes, register
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.jit import FASTMATH, kernel

FLOAT = ("float32",)
SIGNED = ("float32", "int8", "int16", "int32", "int64")
NUMERIC = (*SIGNED, "uint8", "uint16")

# Codes of the ops the numba kernel computes.
EXP, GELU, GELU_TANH, MISH, ELU, SELU, CELU, SOFTSIGN, THRESHOLDED_RELU, SOFTPLUS = range(10)


@kernel(fastmath=set(FASTMATH - {"reassoc"}))
def log1p_unit(e):
    """ln(1 + e) for e in [0, 1], within 2 ulp: 2 atanh(u) with u = e / (2 + e) <= 1/3, whose odd
    series needs eight terms and no range reduction."""
    u = e / (np.float32(2.0) + e)
    z = u * u
    p = z * np.float32(1.0 / 15.0) + np.float32(1.0 / 13.0)
    p = p * z + np.float32(1.0 / 11.0)
    p = p * z + np.float32(1.0 / 9.0)
    p = p * z + np.float32(1.0 / 7.0)
    p = p * z + np.float32(1.0 / 5.0)
    p = p * z + np.float32(1.0 / 3.0)
    return np.float32(2.0) * u + np.float32(2.0) * u * z * p


@kernel
def unary(src, dst, code, alpha, beta):
    """dst = op(src) over flat contiguous float32 arrays (distinct: were they one, LLVM's overlap
    check would run the scalar loop); the branch on `code` is outside the loops, so each loop
    inlines the float32 math and vectorizes."""
    n = src.size
    zero, one, half = np.float32(0.0), np.float32(1.0), np.float32(0.5)
    a, b = np.float32(alpha), np.float32(beta)
    if code == EXP:
        for i in range(n):
            dst[i] = exp32(src[i])
    elif code == GELU:  # 0.5 x (1 + erf(x/sqrt2)), through erfc so that x < 0 loses nothing
        for i in range(n):
            v = src[i]
            c = erfc32(abs(v) * np.float32(0.7071067811865476))
            dst[i] = half * v * (np.float32(2.0) - c if v >= zero else c)
    elif code == GELU_TANH:  # 0.5 x (1 + tanh(u)) = x sigmoid(2u)
        k = np.float32(-2.0 * math.sqrt(2.0 / math.pi))
        for i in range(n):
            v = src[i]
            dst[i] = v / (one + exp32(k * (v + np.float32(0.044715) * v * v * v)))
    elif code == MISH:  # x tanh(ln(1 + e)) = x n / (n + 2) with n = e (e + 2); = x once n overflows
        for i in range(n):
            v = src[i]
            e = exp32(v)
            m = e * (e + np.float32(2.0))
            dst[i] = v * m / (m + np.float32(2.0)) if v < np.float32(20.0) else v
    elif code == ELU:
        for i in range(n):
            v = src[i]
            dst[i] = v if v > zero else a * expm1_32(v)
    elif code == SELU:  # alpha, gamma
        for i in range(n):
            v = src[i]
            dst[i] = b * (v if v > zero else a * expm1_32(v))
    elif code == CELU:
        inv = one / a
        for i in range(n):
            v = src[i]
            dst[i] = v if v > zero else a * expm1_32(v * inv)
    elif code == SOFTSIGN:
        for i in range(n):
            v = src[i]
            dst[i] = v / (one + abs(v))
    elif code == THRESHOLDED_RELU:
        for i in range(n):
            v = src[i]
            dst[i] = v if v > a else zero
    else:  # SOFTPLUS: max(x, 0) + ln(1 + e), e = exp(-|x|) in (0, 1]; np.logaddexp is scalar: 100x slower
        for i in range(n):
            v = src[i]
            dst[i] = (v if v > zero else zero) + log1p_unit(exp32(-abs(v)))


@dataclass(frozen=True)
class _Unary(Op):
    """One input, one output of its shape and element type."""

    dtypes = FLOAT  # the element types the kernel takes

    def output_dtypes(self, dtypes):
        if dtypes[0] not in self.dtypes:
            raise DtypeRefused(f"input 0 is {dtypes[0]}; {self.op_type} takes {', '.join(self.dtypes)}")
        return [dtypes[0]]

    def infer(self, shapes, consts):
        if shapes[0] is None:
            raise ShapeError(f"{self.op_type}: input shape unknown")
        return [tuple(shapes[0])]

    def slice_axes(self, shapes, out_shapes):
        return ()  # no weights to cut and no scratch to shrink: it runs whole

    def _views(self, ins, outs, part, reuse):
        if part is not None or reuse:
            raise ValueError(f"{self.op_type}.bind: {self.op_type} is not sliced, got part {part}")
        x, y = ins[0], outs[0]
        if x.shape != y.shape or x.dtype != y.dtype or str(x.dtype) not in self.dtypes:
            raise ShapeError(f"{self.op_type}.bind: input {x.shape} {x.dtype}, output {y.shape} {y.dtype}")
        return reshape_view(x, (-1,)), reshape_view(y, (-1,))


@dataclass(frozen=True)
class _Ufunc(_Unary):
    """An op that is one numpy ufunc (SIMD for float32 in numpy), run with out= on the arena."""

    ufunc = np.negative

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        src, dst = self._views(ins, outs, part, reuse)
        ufunc = type(self).ufunc

        def run_ufunc():
            with np.errstate(all="ignore"):  # log(0), 1/0: inf as IEEE says, not a warning
                ufunc(src, out=dst)

        return run_ufunc

    def reference(self, ins):
        x = np.asarray(ins[0])
        with np.errstate(all="ignore"):
            if x.dtype.kind == "f":
                return [type(self).ufunc(x.astype(np.float64)).astype(np.float32)]
            return [type(self).ufunc(x)]


def _ufunc_op(name: str, ufunc: np.ufunc, dtypes: tuple[str, ...] = FLOAT) -> type[Op]:
    cls = dataclass(frozen=True)(type(name, (_Ufunc,), {"op_type": name, "ufunc": ufunc, "dtypes": dtypes}))
    cls.__doc__ = f"ONNX {name}: numpy's {ufunc.__name__}, elementwise ({', '.join(dtypes)})."
    cls.__module__ = __name__
    return register(cls)


Sqrt = _ufunc_op("Sqrt", np.sqrt)
Tanh = _ufunc_op("Tanh", np.tanh)
Log = _ufunc_op("Log", np.log)
Sin = _ufunc_op("Sin", np.sin)
Cos = _ufunc_op("Cos", np.cos)
Reciprocal = _ufunc_op("Reciprocal", np.reciprocal)
Floor = _ufunc_op("Floor", np.floor)
Ceil = _ufunc_op("Ceil", np.ceil)
Round = _ufunc_op("Round", np.rint)  # rint rounds half to even, as ONNX's Round does
Abs = _ufunc_op("Abs", np.absolute, NUMERIC)
Neg = _ufunc_op("Neg", np.negative, SIGNED)
Sign = _ufunc_op("Sign", np.sign, NUMERIC)


@dataclass(frozen=True)
class _Numba(_Unary):
    """An op of the `unary` kernel: `params` gives its code, alpha and beta."""

    def params(self) -> tuple[int, float, float]:
        raise NotImplementedError

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        src, dst = self._views(ins, outs, part, reuse)
        code, alpha, beta = self.params()

        def run_unary():
            unary(src, dst, code, alpha, beta)

        return run_unary

    def reference(self, ins):
        x = np.asarray(ins[0], np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            return [np.asarray(self._reference64(x)).astype(np.float32)]

    def _reference64(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@register
@dataclass(frozen=True)
class Exp(_Numba):
    op_type = "Exp"

    def params(self):
        return EXP, 0.0, 0.0

    def _reference64(self, x):
        return np.exp(x)


_erf64 = np.vectorize(math.erf, otypes=[np.float64])


@register
@dataclass(frozen=True)
class Gelu(_Numba):
    """ONNX Gelu (opset 20): x * Phi(x) exactly ("none") or with the tanh approximation."""

    op_type = "Gelu"
    approximate: str = "none"

    def check(self, node, opset):
        if self.approximate not in ("none", "tanh"):
            raise UnsupportedOp(
                self.op_type, node, opset, f"approximate={self.approximate!r} (takes none, tanh)"
            )

    def params(self):
        return (GELU if self.approximate == "none" else GELU_TANH), 0.0, 0.0

    def _reference64(self, x):
        if self.approximate == "none":
            return 0.5 * x * (1.0 + _erf64(x / math.sqrt(2.0)))
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@register
@dataclass(frozen=True)
class Mish(_Numba):
    op_type = "Mish"

    def params(self):
        return MISH, 0.0, 0.0

    def _reference64(self, x):
        return x * np.tanh(np.logaddexp(x, 0.0))


@register
@dataclass(frozen=True)
class Softplus(_Numba):
    """ONNX Softplus, ln(1 + e**x), computed so that it neither overflows nor loses small values."""

    op_type = "Softplus"

    def params(self):
        return SOFTPLUS, 0.0, 0.0

    def _reference64(self, x):
        return np.logaddexp(x, 0.0)


@register
@dataclass(frozen=True)
class Softsign(_Numba):
    op_type = "Softsign"

    def params(self):
        return SOFTSIGN, 0.0, 0.0

    def _reference64(self, x):
        return x / (1.0 + np.abs(x))


@register
@dataclass(frozen=True)
class Elu(_Numba):
    op_type = "Elu"
    alpha: float = 1.0

    def params(self):
        return ELU, float(self.alpha), 0.0

    def _reference64(self, x):
        return np.where(x > 0, x, self.alpha * np.expm1(np.minimum(x, 0.0)))


@register
@dataclass(frozen=True)
class Selu(_Numba):
    op_type = "Selu"
    alpha: float = 1.67326319217681884765625
    gamma: float = 1.05070102214813232421875

    def params(self):
        return SELU, float(self.alpha), float(self.gamma)

    def _reference64(self, x):
        return self.gamma * np.where(x > 0, x, self.alpha * np.expm1(np.minimum(x, 0.0)))


@register
@dataclass(frozen=True)
class Celu(_Numba):
    op_type = "Celu"
    alpha: float = 1.0

    def check(self, node, opset):
        if not self.alpha > 0:
            raise UnsupportedOp(self.op_type, node, opset, f"alpha={self.alpha} (must be > 0)")

    def params(self):
        return CELU, float(self.alpha), 0.0

    def _reference64(self, x):
        return np.maximum(x, 0.0) + np.minimum(0.0, self.alpha * np.expm1(np.minimum(x, 0.0) / self.alpha))


@register
@dataclass(frozen=True)
class ThresholdedRelu(_Numba):
    op_type = "ThresholdedRelu"
    alpha: float = 1.0

    def params(self):
        return THRESHOLDED_RELU, float(self.alpha), 0.0

    def _reference64(self, x):
        return np.where(x > self.alpha, x, 0.0)


@kernel
def prelu(x, slope, y, rows, cols, slope_rows, slope_cols):
    """y = x if x >= 0 else slope * x over x, y flat (rows, cols), with slope flat
    (slope_rows, slope_cols), each of its dims either 1 (broadcast) or x's."""
    zero = np.float32(0.0)
    n = np.uint64(cols)
    for r in range(rows):
        base = np.uint64(r * cols)
        sb = np.uint64((r if slope_rows > 1 else 0) * slope_cols)
        if slope_cols == 1:  # one slope per row: a channel's
            b = slope[sb]
            for k in range(n):
                v = x[base + k]
                y[base + k] = v if v >= zero else v * b
        else:
            for k in range(n):
                v = x[base + k]
                y[base + k] = v if v >= zero else v * slope[sb + k]


def _broadcast_groups(shape, slope_shape):
    """x's dims without the size-1 ones, adjacent dims merged when the slope varies along both or
    along neither: [(size, slope varies along it)]."""
    slope_shape = (1,) * (len(shape) - len(slope_shape)) + tuple(slope_shape)
    groups: list[list] = []
    for size, s in zip(shape, slope_shape, strict=True):
        if size == 1:
            continue
        varies = s == size
        if groups and groups[-1][1] == varies:
            groups[-1][0] *= size
        else:
            groups.append([size, varies])
    return [tuple(g) for g in groups] or [(1, True)]


@register
@dataclass(frozen=True)
class PRelu(Op):
    """ONNX PRelu: x if x >= 0 else slope * x, the slope a constant that broadcasts to x (one per
    channel, usually). x is cut into (rows, cols) blocks along which the slope is constant or
    contiguous, so the kernel's inner loop is plain and vectorizes."""

    op_type = "PRelu"
    const_inputs = (1,)

    def infer(self, shapes, consts):
        x, slope = shapes[0], shapes[1]
        if x is None or slope is None:
            raise ShapeError("PRelu: input shapes unknown")
        if broadcast_shapes("PRelu", x, slope) != tuple(x):
            raise ShapeError(f"PRelu: slope {tuple(slope)} does not broadcast to the input {tuple(x)}")
        return [tuple(x)]

    def prepare(self, consts):
        return [consts[0], np.ascontiguousarray(consts[1], dtype=np.float32)]

    def slice_axes(self, shapes, out_shapes):
        return ()  # elementwise with a small constant: runs whole

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"PRelu.bind: PRelu is not sliced, got part {part}")
        x, slope, y = ins[0], ins[1], outs[0]
        if x.shape != y.shape or x.dtype != np.float32 or y.dtype != np.float32 or slope.dtype != np.float32:
            raise ShapeError(
                f"PRelu.bind: input {x.shape} {x.dtype}, slope {slope.dtype}, output {y.shape} {y.dtype}"
            )
        groups = _broadcast_groups(x.shape, slope.shape)
        (rows, row_varies), (cols, col_varies) = [(1, False), *groups][-2:]
        lead = groups[:-2]
        xv = reshape_view(x, (*(g[0] for g in lead), rows * cols))
        yv = reshape_view(y, xv.shape)
        sv = reshape_view(slope, (*(g[0] if g[1] else 1 for g in lead), -1))
        srows, scols = (rows if row_varies else 1), (cols if col_varies else 1)
        blocks = [
            (xv[idx], sv[tuple(i if g[1] else 0 for i, g in zip(idx, lead, strict=True))], yv[idx])
            for idx in np.ndindex(*(g[0] for g in lead))
        ]

        def run_prelu():
            for xb, sb, yb in blocks:
                prelu(xb, sb, yb, rows, cols, srows, scols)

        return run_prelu

    def reference(self, ins):
        x, slope = np.asarray(ins[0], np.float64), np.asarray(ins[1], np.float64)
        return [np.where(x >= 0, x, x * slope).astype(np.float32)]
