"""Quantization: QuantizeLinear, DequantizeLinear (QDQ models), DynamicQuantizeLinear and
MatMulInteger (dynamically quantized models, as onnxruntime.quantization writes them).

A QDQ model's weights arrive as int8 constants behind a DequantizeLinear: all its inputs are
constants, so the importer folds it and the weights are stored as float32. What runs is the
activations' Quantize/Dequantize pairs (the rounding a quantized model was trained with) and, in
dynamically quantized models, uint8 activations quantized per inference times int8 weights in exact
int32 arithmetic. Rounding is half to even and saturating, as the spec and ONNX Runtime do it.

Scales and zero points are per tensor (scalars) or per axis (1-D along `axis`); blocked
quantization (block_size > 0), float8/int4 types and `precision` are refused. None of these ops is
sliced: they have no weights to cut (MatMulInteger's weights are small int8 ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import Op, register
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.jit import kernel

QUANT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}
# ONNX TensorProto data types of output_dtype, for the ones flexnn quantizes to.
_OUTPUT_DTYPES = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16"}


@kernel(fastmath=False)  # x / scale exactly: a reciprocal moves values off .5 and the rounding with them
def quantize(x, y, scale, zero, outer, channels, inner, lo, hi):
    """y = saturate(rint(x / scale[c]) + zero[c]) over x viewed as (outer, channels, inner)."""
    for o in range(outer):
        for c in range(channels):
            s, z = scale[c], np.float32(zero[c])
            base = (o * channels + c) * inner
            for i in range(inner):
                v = np.rint(x[base + i] / s) + z
                y[base + i] = min(max(v, np.float32(lo)), np.float32(hi))


@kernel(fastmath=False)
def dequantize(x, y, scale, zero, outer, channels, inner):
    """y = (x - zero[c]) * scale[c] over x viewed as (outer, channels, inner)."""
    for o in range(outer):
        for c in range(channels):
            s, z = scale[c], np.int64(zero[c])
            base = (o * channels + c) * inner
            for i in range(inner):
                y[base + i] = np.float32(np.int64(x[base + i]) - z) * s


@kernel
def widen_column_block(src, dst, zero, k, n, start, width, per_column):
    """dst (k, width) = src[:, start:start + width] - zero (zero[c] per column of src's (k, n), else
    zero[0]), widened: one block of B's columns, contiguous for BLAS."""
    for r in range(k):
        for c in range(width):
            z = zero[start + c] if per_column else zero[0]
            dst[r * width + c] = np.int32(src[r * n + start + c]) - np.int32(z)


@kernel
def minmax(x):
    lo, hi = np.float32(0.0), np.float32(0.0)  # the range always holds 0
    for i in range(x.size):
        v = x[i]
        lo = min(lo, v)
        hi = max(hi, v)
    return lo, hi


@kernel
def widen_minus(src, dst, zero, rows, cols, per_row):
    """dst = int32(src) - zero (zero[r] per row when per_row, else zero[0]), over (rows, cols)."""
    for r in range(rows):
        z = np.int32(zero[r] if per_row else zero[0])
        for k in range(cols):
            dst[r * cols + k] = np.int32(src[r * cols + k]) - z


def _column_block(k: int, n: int) -> int:
    """Columns of B widened at a time: about 1 MiB of float64, at least 64 columns."""
    return min(n, max(64, (1 << 17) // max(k, 1)))


def _geometry(shape, axis: int, n: int) -> tuple[int, int, int]:
    """(outer, channels, inner) of `shape` around `axis` when the parameters have n values (1: one
    for the whole tensor)."""
    if n == 1:
        return 1, 1, math.prod(shape)
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])


def _params(op: str, shape, scale_shape, zero_shape, axis: int) -> int:
    """Check per-tensor or per-axis parameters against the input; the normalized axis."""
    rank = len(shape)
    per_axis = any(s is not None and math.prod(s) > 1 for s in (scale_shape, zero_shape))
    if not per_axis:  # one scale for the whole tensor: the axis is not used
        return 0
    if not -rank <= axis < rank:
        raise ShapeError(f"{op}: axis {axis} is out of range for rank {rank}")
    axis %= rank
    for what, s in (("scale", scale_shape), ("zero point", zero_shape)):
        if s is None or (math.prod(s) == 1 and len(s) <= 1):
            continue
        if len(s) != 1 or s[0] != shape[axis]:
            raise ShapeError(
                f"{op}: {what} of shape {list(s)} is neither a scalar nor one value per index of axis "
                f"{axis} (size {shape[axis]}) of the input {list(shape)}"
            )
    if scale_shape is not None and zero_shape is not None and math.prod(scale_shape) != math.prod(zero_shape):
        raise ShapeError(f"{op}: scale {list(scale_shape)} and zero point {list(zero_shape)} differ in size")
    return axis


class _Linear(Op):
    optional_inputs = (2,)

    def check(self, node, opset):
        if getattr(self, "block_size", 0):
            raise UnsupportedOp(
                self.op_type, node, opset, f"blocked quantization (block_size={self.block_size})"
            )
        if getattr(self, "precision", 0):
            raise UnsupportedOp(self.op_type, node, opset, f"precision={self.precision}")

    def infer(self, shapes, consts):
        x = shapes[0]
        if x is None or shapes[1] is None:
            raise ShapeError(f"{self.op_type}: input shapes unknown")
        _params(self.op_type, x, shapes[1], shapes[2] if len(shapes) > 2 else None, self.axis)
        return [tuple(x)]

    def _bind_params(self, ins, x):
        axis = _params(
            self.op_type,
            x.shape,
            ins[1].shape,
            ins[2].shape if len(ins) > 2 and ins[2] is not None else None,
            self.axis,
        )
        scale = reshape_view(ins[1], (-1,))
        zero = (
            reshape_view(ins[2], (-1,))
            if len(ins) > 2 and ins[2] is not None
            else np.zeros(scale.size, np.int32)
        )
        return _geometry(x.shape, axis, scale.size), scale, zero


@register
@dataclass(frozen=True)
class QuantizeLinear(_Linear):
    """ONNX QuantizeLinear (opsets 10-25): float32 to uint8/int8/uint16/int16, saturating."""

    op_type = "QuantizeLinear"
    axis: int = 1
    saturate: int = 1
    block_size: int = 0
    output_dtype: int = 0
    precision: int = 0

    def check(self, node, opset):
        super().check(node, opset)
        if self.output_dtype and self.output_dtype not in _OUTPUT_DTYPES:
            raise UnsupportedOp(
                self.op_type,
                node,
                opset,
                f"output_dtype {self.output_dtype} (takes uint8, int8, uint16, int16)",
            )

    def output_dtypes(self, dtypes):
        if dtypes[0] != "float32" or dtypes[1] != "float32":
            raise DtypeRefused(
                f"QuantizeLinear: x and y_scale must be float32, got {dtypes[0]} and {dtypes[1]}"
            )
        zero = dtypes[2] if len(dtypes) > 2 else None
        out = _OUTPUT_DTYPES.get(self.output_dtype) or zero or "uint8"
        if out not in QUANT_RANGES or (zero is not None and zero != out):
            raise DtypeRefused(f"QuantizeLinear: quantizes to uint8/int8/uint16/int16, got zero point {zero}")
        return [out]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = ins[0], outs[0]
        (outer, channels, inner), scale, zero = self._bind_params(ins, x)
        lo, hi = QUANT_RANGES[y.dtype.name]
        xf, yf = reshape_view(x, (-1,)), reshape_view(y, (-1,))

        def run_quantize():
            quantize(xf, yf, scale, zero, outer, channels, inner, lo, hi)

        return run_quantize

    def reference(self, ins):
        x = np.asarray(ins[0], np.float32)
        zero = ins[2] if len(ins) > 2 and ins[2] is not None else None
        dtype = _OUTPUT_DTYPES.get(self.output_dtype) or (zero.dtype.name if zero is not None else "uint8")
        scale, zp = _broadcast(x, ins[1], zero, self.axis)
        lo, hi = QUANT_RANGES[dtype]
        return [np.clip(np.rint(x / scale) + zp, lo, hi).astype(dtype)]


@register
@dataclass(frozen=True)
class DequantizeLinear(_Linear):
    """ONNX DequantizeLinear (opsets 10-25): int8/uint8/int16/uint16/int32 to float32."""

    op_type = "DequantizeLinear"
    axis: int = 1
    block_size: int = 0
    output_dtype: int = 0

    def check(self, node, opset):
        super().check(node, opset)
        if self.output_dtype not in (0, 1):
            raise UnsupportedOp(
                self.op_type, node, opset, f"output_dtype {self.output_dtype} (flexnn gives float32)"
            )

    def output_dtypes(self, dtypes):
        if dtypes[0] not in (*QUANT_RANGES, "int32") or dtypes[1] != "float32":
            raise DtypeRefused(
                f"DequantizeLinear: takes an integer x and a float32 scale, got {dtypes[0]}, {dtypes[1]}"
            )
        if len(dtypes) > 2 and dtypes[2] is not None and dtypes[2] != dtypes[0]:
            raise DtypeRefused(f"DequantizeLinear: zero point {dtypes[2]} is not x's type {dtypes[0]}")
        return ["float32"]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = ins[0], outs[0]
        (outer, channels, inner), scale, zero = self._bind_params(ins, x)
        xf, yf = reshape_view(x, (-1,)), reshape_view(y, (-1,))

        def run_dequantize():
            dequantize(xf, yf, scale, zero, outer, channels, inner)

        return run_dequantize

    def reference(self, ins):
        x = np.asarray(ins[0])
        zero = ins[2] if len(ins) > 2 and ins[2] is not None else None
        scale, zp = _broadcast(x, ins[1], zero, self.axis)
        return [((x.astype(np.int64) - zp.astype(np.int64)) * scale).astype(np.float32)]


def _broadcast(x, scale, zero, axis):
    """Scale and zero point shaped to broadcast against x (per tensor or along axis)."""
    scale = np.asarray(scale, np.float32)
    zero = np.zeros_like(scale, dtype=np.int64) if zero is None else np.asarray(zero)
    if scale.size == 1:
        return scale.reshape(()), zero.reshape(())
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    return scale.reshape(shape), zero.reshape(shape)


@register
@dataclass(frozen=True)
class DynamicQuantizeLinear(Op):
    """ONNX DynamicQuantizeLinear (opset 11): x to uint8 with a scale and zero point computed from
    x's range (always including 0) per inference; three outputs: y, y_scale, y_zero_point."""

    op_type = "DynamicQuantizeLinear"

    def output_dtypes(self, dtypes):
        if dtypes[0] != "float32":
            raise DtypeRefused(f"DynamicQuantizeLinear: x must be float32, got {dtypes[0]}")
        return ["uint8", "float32", "uint8"]

    def infer(self, shapes, consts):
        if shapes[0] is None:
            raise ShapeError("DynamicQuantizeLinear: input shape unknown")
        return [tuple(shapes[0]), (), ()]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x = reshape_view(ins[0], (-1,))
        y = reshape_view(outs[0], (-1,))
        scale_out = outs[1] if len(outs) > 1 else None
        zero_out = outs[2] if len(outs) > 2 else None
        params = np.zeros(1, np.float32), np.zeros(1, np.uint8)

        def run_dynamic_quantize():
            lo, hi = minmax(x)
            scale = np.float32(1.0 if hi == lo else hi - lo) / np.float32(255.0)
            zero = np.float32(min(max(np.float32(0.0) - lo / scale, np.float32(0.0)), np.float32(255.0)))
            params[0][0], params[1][0] = scale, np.rint(zero)
            quantize(x, y, params[0], params[1], 1, 1, x.size, 0, 255)
            if scale_out is not None:
                scale_out[...] = params[0][0]
            if zero_out is not None:
                zero_out[...] = params[1][0]

        return run_dynamic_quantize

    def reference(self, ins):
        x = np.asarray(ins[0], np.float32)
        hi, lo = np.float32(max(0.0, x.max())), np.float32(min(0.0, x.min()))
        scale = np.float32(1.0 if hi == lo else hi - lo) / np.float32(255.0)
        zero = np.rint(np.float32(min(255.0, max(0.0, np.float32(0.0) - lo / scale))))
        y = np.clip(np.rint(x / scale) + zero, 0, 255).astype(np.uint8)
        return [y, np.array(scale, np.float32), np.array(zero, np.uint8)]


@register
@dataclass(frozen=True)
class MatMulInteger(Op):
    """ONNX MatMulInteger (opset 10): (A - a_zero_point) @ (B - b_zero_point) in exact int32, A and B
    2-D or A batched over a 2-D B; zero points scalars, a_zero_point per row of a 2-D A, b's per column."""

    op_type = "MatMulInteger"
    optional_inputs = (2, 3)

    def output_dtypes(self, dtypes):
        for pos, what in ((0, "A"), (1, "B"), (2, "a_zero_point"), (3, "b_zero_point")):
            d = dtypes[pos] if pos < len(dtypes) else None
            if d is not None and d not in ("uint8", "int8"):
                raise DtypeRefused(f"MatMulInteger: {what} is {d}; takes uint8 or int8")
        return ["int32"]

    def infer(self, shapes, consts):
        a, b = shapes[0], shapes[1]
        if a is None or b is None or len(a) < 2 or len(b) != 2:
            raise ShapeError(f"MatMulInteger: takes A of rank >= 2 and a 2-D B, got {a} and {b}")
        if a[-1] != b[0]:
            raise ShapeError(f"MatMulInteger: A {list(a)} and B {list(b)} disagree on K ({a[-1]} vs {b[0]})")
        for pos, size, what in ((2, a[-2] if len(a) == 2 else 1, "a_zero_point"), (3, b[1], "b_zero_point")):
            s = shapes[pos] if len(shapes) > pos else None
            if s is not None and math.prod(s) not in (1, size):
                raise ShapeError(
                    f"MatMulInteger: {what} of shape {list(s)} is neither a scalar nor {size} values"
                )
        return [(*a[:-1], b[1])]

    def scratch_bytes(self, shapes, part=None):
        a, b = shapes[0], shapes[1]
        rows, width = math.prod(a[:-1]), _column_block(b[0], b[1])
        # A, a block of B's columns (zero points taken off) and their product in float64: BLAS, and
        # exact (|sum| < 2**53); blocks keep the scratch small beside an int8 B.
        return 8 * (math.prod(a) + b[0] * width + rows * width)

    def flops(self, shapes, out_shapes):
        return 2 * shapes[0][-1] * math.prod(out_shapes[0])

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        a, b, y = ins[0], ins[1], outs[0]
        a_zero = ins[2] if len(ins) > 2 and ins[2] is not None else np.zeros(1, a.dtype)
        b_zero = ins[3] if len(ins) > 3 and ins[3] is not None else np.zeros(1, b.dtype)
        k, n = b.shape
        rows = math.prod(a.shape[:-1])
        width = _column_block(k, n)
        words = scratch.view(np.float64)
        a64 = reshape_view(words[: rows * k], (rows, k))
        b64 = words[rows * k : rows * k + k * width]
        y64 = words[rows * k + k * width : rows * k + k * width + rows * width]
        y2 = reshape_view(y, (rows, n))
        af, bf = reshape_view(a, (-1,)), reshape_view(b, (-1,))
        a_zero_f, b_zero_f = reshape_view(a_zero, (-1,)), reshape_view(b_zero, (-1,))
        a_per_row = a_zero_f.size > 1
        b_per_col = b_zero_f.size > 1
        a64f = reshape_view(a64, (-1,))
        blocks = []
        for start in range(0, n, width):
            w = min(width, n - start)
            blocks.append(
                (
                    start,
                    w,
                    reshape_view(b64[: k * w], (k, w)),
                    reshape_view(y64[: rows * w], (rows, w)),
                    y2[:, start : start + w],
                )
            )

        def run_matmul_integer():
            widen_minus(af, a64f, a_zero_f, rows, k, a_per_row)
            for start, w, b_block, y_block, y_out in blocks:
                widen_column_block(bf, b64, b_zero_f, k, n, start, w, b_per_col)
                np.matmul(a64, b_block, out=y_block)  # numpy's integer matmul has no BLAS: 60x slower
                np.copyto(y_out, y_block, casting="unsafe")  # whole numbers, exact in int32

        return run_matmul_integer

    def reference(self, ins):
        a, b = np.asarray(ins[0]).astype(np.int64), np.asarray(ins[1]).astype(np.int64)
        az = np.asarray(ins[2]).astype(np.int64) if len(ins) > 2 and ins[2] is not None else np.int64(0)
        bz = np.asarray(ins[3]).astype(np.int64) if len(ins) > 3 and ins[3] is not None else np.int64(0)
        if np.ndim(az) == 1 and az.size > 1:
            az = az.reshape(-1, 1)
        return [np.matmul(a - az, b - bz).astype(np.int32)]
