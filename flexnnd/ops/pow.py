"""Pow, x ** y with numpy broadcasting (ONNX opsets 7 to 15).

Exporters write it with a constant scalar exponent: 2 for variances and norms, 0.5 for square
roots, 3 in GELU's tanh form. That exponent is absorbed at import and the common ones run as the
cheaper ufunc (x*x, sqrt, x*x*x, 1/x, ...); numpy's power is several times slower than a multiply.
Any other exponent, constant or computed, runs as numpy's power with broadcasting, on float32.
Integer bases take a whole constant scalar exponent >= 0 (numpy refuses negative integer powers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError
from flexnnd.ops.base import Op, broadcast_shapes, internal, register
from flexnnd.ops.buffers import reshape_view

INTEGERS = ("int32", "int64")


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
        if base == "float32":
            if self.runtime_exponent and dtypes[1] != "float32":
                raise DtypeRefused(f"Pow: a run-time exponent must be float32 like the base, got {dtypes[1]}")
            return ["float32"]
        if base in INTEGERS:
            e = self.exponent
            if e is None or not (math.isfinite(e) and e == int(e) and e >= 0):
                raise DtypeRefused(
                    f"Pow: an {base} base takes only a constant scalar exponent that is a whole number >= 0, "
                    f"got {'a tensor' if e is None else e}"
                )
            return [base]
        raise DtypeRefused(f"Pow: the base is {base}; Pow takes float32, int32, int64")

    def infer(self, shapes, consts):
        if any(s is None for s in shapes):
            raise ShapeError("Pow: input shapes unknown")
        other = self.exponent_shape if self.exponent is not None else shapes[1]
        return [broadcast_shapes("Pow", shapes[0], other)]

    def prepare(self, consts):
        if self.exponent is None and consts[1] is not None:
            return [consts[0], np.asarray(consts[1], dtype=np.float32)]
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
            if e.dtype != x.dtype or broadcast_shapes("Pow", x.shape, e.shape) != y.shape:
                raise ShapeError(
                    f"Pow.bind: base {x.shape} {x.dtype}, exponent {e.shape} {e.dtype}, output {y.shape}"
                )
            return lambda: np.power(x, e, out=y)
        if x.size != y.size:
            raise ShapeError(f"Pow.bind: input {x.shape}, output {y.shape}")
        src, dst = reshape_view(x, (-1,)), reshape_view(y, (-1,))
        if x.dtype.kind == "i":
            k = int(self.exponent)
            return lambda: np.power(src, k, out=dst)
        return _scalar_power(src, dst, self.exponent)

    def reference(self, ins):
        x = np.asarray(ins[0])
        e = np.float64(self.exponent).reshape(self.exponent_shape) if self.exponent is not None else ins[1]
        with np.errstate(all="ignore"):
            if x.dtype.kind == "i":
                return [np.power(x, np.asarray(e).astype(x.dtype))]
            return [np.power(x.astype(np.float64), np.asarray(e, np.float64)).astype(np.float32)]


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
