"""Pow, x ** y with numpy broadcasting (ONNX opsets 7 to 15).

Exporters write it with a constant scalar exponent: 2 for variances and norms, 0.5 for square
roots, 3 in GELU's tanh form. That exponent is absorbed at import and the common ones run as the
cheaper ufunc (x*x, sqrt, x*x*x, 1/x, ...); numpy's power is several times slower than a multiply.
Any other scalar runs as numpy's power; a tensor exponent, constant or computed, runs in a numba
loop over the broadcast (numpy's broadcasting ufuncs allocate their iterator's buffers).
An integer base (int32, int64) takes any exponent (a constant or computed tensor, integer or float),
and a float base an integer exponent, as ONNX Runtime computes them: pow in float64, then converted
to the base's type, an integer truncated toward zero and INT_MIN where it is out of range or not a
number (2 ** -1 is 0, 0 ** -1 and 2 ** 31 in int32 are INT_MIN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError
from flexnnd.ops.base import Op, broadcast_shapes, internal, register
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.jit import kernel

INTEGERS = ("int32", "int64")
EXPONENTS = ("float32", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8")
# Where a float64 power converts to each integer type: [lo, hi); outside it (or NaN) ORT gives INT_MIN.
_INT_RANGES = {
    np.dtype(t): (-(2.0 ** (8 * np.dtype(t).itemsize - 1)), 2.0 ** (8 * np.dtype(t).itemsize - 1))
    for t in INTEGERS
}


@register
@dataclass(frozen=True)
class Pow(Op):
    op_type = "Pow"
    exponent: float | None = internal(None)  # the exponent, when a constant scalar (absorbed)
    exponent_shape: tuple[int, ...] = internal(())  # its shape then (it may raise the rank)
    runtime_exponent: bool = internal(False)  # the exponent is computed at run time

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        op, kept = super().from_onnx(attrs, consts, node, opset)
        e = consts[1] if len(consts) > 1 else None
        if e is None:
            return cls(**attrs, runtime_exponent=True), kept
        e = np.asarray(e)
        if e.size != 1:
            return op, kept
        return cls(**attrs, exponent=float(e.reshape(())), exponent_shape=e.shape), (0,)

    def output_dtypes(self, dtypes):
        base = dtypes[0]
        exponent = dtypes[1] if len(dtypes) > 1 else None
        if exponent is not None and exponent not in EXPONENTS:
            raise DtypeRefused(f"Pow: the exponent is {exponent}; Pow takes {', '.join(EXPONENTS)} exponents")
        if base == "float32" or base in INTEGERS:
            return [base]
        raise DtypeRefused(f"Pow: the base is {base}; Pow takes float32, int32, int64")

    def infer(self, shapes, consts):
        if any(s is None for s in shapes):
            raise ShapeError("Pow: input shapes unknown")
        other = self.exponent_shape if self.exponent is not None else shapes[1]
        return [broadcast_shapes("Pow", shapes[0], other)]

    def prepare(self, consts):
        if self.exponent is None and consts[1] is not None:
            e = np.asarray(consts[1])
            # An integer exponent stays an integer (it selects ORT's integer semantics), as int64: the
            # package holds no uint32/uint64 tensors.
            return [consts[0], e.astype(np.float32 if e.dtype.kind == "f" else np.int64)]
        return list(consts)

    def slice_axes(self, shapes, out_shapes):
        return ()  # elementwise, no weights: runs whole

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"Pow.bind: Pow is not sliced, got part {part}")
        x, y = ins[0], outs[0]
        if x.dtype != y.dtype:
            raise ShapeError(f"Pow.bind: input {x.shape} {x.dtype}, output {y.shape} {y.dtype}")
        if self.exponent is None:
            e = ins[1]
            if broadcast_shapes("Pow", x.shape, e.shape) != y.shape:
                raise ShapeError(
                    f"Pow.bind: base {x.shape} {x.dtype}, exponent {e.shape} {e.dtype}, output {y.shape}"
                )
            if x.dtype == e.dtype == np.float32:
                return _broadcast_power(x, e, y)
            return _broadcast_power(x, e, y, _INT_RANGES.get(x.dtype))
        if x.size != y.size:
            raise ShapeError(f"Pow.bind: input {x.shape}, output {y.shape}")
        if x.dtype.kind == "i":  # a scalar exponent, broadcast: the same kernel as a tensor one
            e = np.full(self.exponent_shape, self.exponent, np.float64)
            return _broadcast_power(x, e, y, _INT_RANGES[x.dtype])
        src, dst = reshape_view(x, (-1,)), reshape_view(y, (-1,))
        run = _scalar_power(src, dst, self.exponent)
        if self.exponent in (2.0, 3.0, 1.0, 0.0):
            return run  # a product or a copy: nothing to warn about

        def scalar_power():
            with np.errstate(all="ignore"):  # 0 ** -1 is inf as IEEE says, not a warning
                run()

        return scalar_power

    def reference(self, ins):
        x = np.asarray(ins[0])
        e = np.float64(self.exponent).reshape(self.exponent_shape) if self.exponent is not None else ins[1]
        with np.errstate(all="ignore"):
            e = np.asarray(e)
            if e.size == 1 and e.reshape(-1)[0] in (2, 3) and (x.dtype.kind == "i" or e.dtype.kind != "f"):
                # ORT multiplies for a single exponent of 2 or 3: integers wrap
                p = x * x * x if e.reshape(-1)[0] == 3 else x * x
                return [np.broadcast_to(p, np.broadcast_shapes(x.shape, e.shape)).copy()]
            v = np.power(x.astype(np.float64), e.astype(np.float64))
            if x.dtype.kind != "i":
                return [v.astype(np.float32)]
            lo, hi = _INT_RANGES[x.dtype]
            valid = (v >= lo) & (v < hi)
            return [np.where(valid, np.trunc(np.where(valid, v, 0.0)), lo).astype(x.dtype)]


def _scalar_power(src, dst, e):
    """dst = src ** e (float32, flat), by the cheapest ufunc for the exponents exporters write."""
    if e == 2.0:
        return lambda: np.multiply(src, src, out=dst)
    if e == 0.5:
        return lambda: np.sqrt(src, out=dst)
    if e == 1.0:
        return lambda: np.copyto(dst, src)
    if e == 3.0 and not np.shares_memory(src, dst):

        def cube():
            np.multiply(src, src, out=dst)
            np.multiply(dst, src, out=dst)

        return cube
    if e == -1.0:
        return lambda: np.reciprocal(src, out=dst)
    if e == -0.5:

        def rsqrt():
            np.sqrt(src, out=dst)
            np.reciprocal(dst, out=dst)

        return rsqrt
    if e == 0.0:
        return lambda: dst.fill(1.0)  # x ** 0 is 1 for every x, NaN too
    f = np.float32(e)
    return lambda: np.power(src, f, out=dst)


@kernel
def power_broadcast(x, e, y, x0, e0, y0, geometry):
    """y[y0 + flat i] = x[x0 + ...] ** e[e0 + ...] over a 4-D loop (flat arrays); `geometry` rows:
    the loop's sizes, x's and e's element strides (0 where broadcast)."""
    o = y0
    size, xs, es = geometry[0], geometry[1], geometry[2]
    for a in range(size[0]):
        for b in range(size[1]):
            for c in range(size[2]):
                xi = x0 + a * xs[0] + b * xs[1] + c * xs[2]
                ei = e0 + a * es[0] + b * es[1] + c * es[2]
                for d in range(size[3]):
                    y[o] = x[xi + d * xs[3]] ** e[ei + d * es[3]]
                    o += 1


def _contiguous_strides(shape):
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return strides[::-1]


@kernel
def power_converted(x, e, y, x0, e0, y0, geometry, to_int, lo, hi, single):
    """power_broadcast's loop, computing as ONNX Runtime does for integer types: pow in float64, then
    y's type; for an integer y (to_int), truncated where in [lo, hi), else lo (INT_MIN). A `single`
    exponent (one element) of 2 or 3 is x*x or x*x*x in x's type instead, wrapping as ORT's does."""
    o = y0
    size, xs, es = geometry[0], geometry[1], geometry[2]
    for a in range(size[0]):
        for b in range(size[1]):
            for c in range(size[2]):
                xi = x0 + a * xs[0] + b * xs[1] + c * xs[2]
                ei = e0 + a * es[0] + b * es[1] + c * es[2]
                for d in range(size[3]):
                    xv, ev = x[xi + d * xs[3]], e[ei + d * es[3]]
                    if single and (ev == 2 or ev == 3):
                        p = xv * xv
                        y[o] = p * xv if ev == 3 else p
                        o += 1
                        continue
                    v = math.pow(np.float64(xv), np.float64(ev))
                    if not to_int:
                        y[o] = v
                    elif v >= lo and v < hi:
                        y[o] = np.int64(v)
                    else:
                        y[o] = np.int64(lo)
                    o += 1


def _broadcast_power(x, e, y, int_range=None):
    """Bind power_broadcast (power_converted when `int_range` or the types say so: an integer base
    or exponent): y's dims of size > 1, adjacent ones merged where x and e are broadcast alike; dims
    beyond the kernel's four are looped here (shapes no exporter writes)."""
    rank = y.ndim
    xs, es = (1,) * (rank - x.ndim) + x.shape, (1,) * (rank - e.ndim) + e.shape
    xst, est = _contiguous_strides(xs), _contiguous_strides(es)
    dims: list[list[int]] = []  # [size, x stride, e stride]
    for d in range(rank):
        if y.shape[d] == 1:
            continue
        xd, ed = (xst[d] if xs[d] > 1 else 0), (est[d] if es[d] > 1 else 0)
        if dims and (dims[-1][1] == 0) == (xd == 0) and (dims[-1][2] == 0) == (ed == 0):
            dims[-1] = [dims[-1][0] * y.shape[d], xd, ed]
        else:
            dims.append([y.shape[d], xd, ed])
    dims = [[1, 0, 0]] * max(0, 4 - len(dims)) + dims
    outer, inner = dims[:-4], dims[-4:]
    geometry = np.array(inner, dtype=np.int64).T.copy()  # 12 integers, once
    block = int(np.prod(geometry[0]))
    starts = []
    for n, idx in enumerate(np.ndindex(*(g[0] for g in outer))):
        starts.append(
            (
                sum(i * g[1] for i, g in zip(idx, outer, strict=True)),
                sum(i * g[2] for i, g in zip(idx, outer, strict=True)),
                n * block,
            )
        )
    src, exp, dst = reshape_view(x, (-1,)), reshape_view(e, (-1,)), reshape_view(y, (-1,))

    if x.dtype == e.dtype == y.dtype == np.float32:

        def power():
            for x0, e0, y0 in starts:
                power_broadcast(src, exp, dst, x0, e0, y0, geometry)

        return power
    to_int, single = int_range is not None, e.size == 1
    lo, hi = int_range or (0.0, 0.0)

    def power_as_ort():
        for x0, e0, y0 in starts:
            power_converted(src, exp, dst, x0, e0, y0, geometry, to_int, lo, hi, single)

    return power_as_ort
