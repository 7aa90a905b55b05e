"""ConvInteger (ONNX opset 10): a 1-D or 2-D convolution of uint8/int8 tensors into exact int32.

Dynamically quantized models (onnxruntime.quantization.quantize_dynamic) write it between a
DynamicQuantizeLinear of the activation and a Cast + Mul by the two scales. The weight and its zero
point are constants: the weight is stored with its zero point taken off, (Cout, Cin/group*kh*kw), as
int8 when the differences fit, else int16. Each run widens it into float64 in the scratch, builds
each band of output rows' im2col of (x - x_zero_point) in float64 (padding is the zero point, so 0),
and multiplies them with BLAS: every product is below 2^16 and a sum of them stays far below 2^53, so
float64 sums are exact in any order, and the result equals ONNX Runtime's int32 accumulation.
A weight zero point per output channel is taken (the spec allows it; ONNX Runtime refuses it).
Never sliced: it runs whole, priced as a GEMM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import COST_GEMM, Op, internal, register
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.conv_geometry import Geometry, band_rows, reference_conv, same_pads
from flexnnd.ops.jit import kernel

QUANT_TYPES = ("uint8", "int8")
# An im2col band and its product at most this many bytes, but at least MIN_BAND_COLS columns wide.
BAND_BYTES = 2 << 20
MIN_BAND_COLS = 512
_ALIGN = 64


@kernel
def widen(src, dst):
    """dst = float64(src), flat."""
    for i in range(src.size):
        dst[i] = np.float64(src[i])


@kernel
def im2col_minus_zero(
    x, zero, col, plane0, height, width, channels, r0, r1, out_w, kh, kw, sh, sw, dh, dw, pt, pl
):
    """col[(c*kh + i)*kw + j, (oh-r0)*out_w + ow] = x[plane c, oh*sh-pt+i*dh, ow*sw-pl+j*dw] - zero[0]
    (0 outside the input), in float64; x is flat and its channel c's plane starts at plane0 + c*H*W."""
    z = np.int32(zero[0])
    span = (r1 - r0) * out_w
    for c in range(channels):
        plane = plane0 + c * height * width
        for i in range(kh):
            for j in range(kw):
                row = ((c * kh + i) * kw + j) * span
                shift = j * dw - pl
                lo = min(max(-(shift // sw), 0), out_w)  # first ow reading a real column
                hi = min(max((width - 1 - shift) // sw + 1, lo), out_w)  # past the last one
                for oh in range(r0, r1):
                    ih = oh * sh - pt + i * dh
                    dst = row + (oh - r0) * out_w
                    if ih < 0 or ih >= height:
                        for ow in range(out_w):
                            col[dst + ow] = 0.0
                        continue
                    for ow in range(lo):
                        col[dst + ow] = 0.0
                    src = plane + ih * width + shift
                    for ow in range(lo, hi):
                        col[dst + ow] = np.float64(np.int32(x[src + ow * sw]) - z)
                    for ow in range(hi, out_w):
                        col[dst + ow] = 0.0


@kernel
def store_int32(acc, y, y0, rows, cols, row_stride):
    """y[y0 + r*row_stride + p] = int32(acc[r, p]) over a flat (rows, cols) float64 product of
    exact integers (wrapping as an int32 accumulation would)."""
    for r in range(rows):
        for p in range(cols):
            y[y0 + r * row_stride + p] = np.int32(np.int64(acc[r * cols + p]))


@register
@dataclass(frozen=True)
class ConvInteger(Op):
    """ONNX ConvInteger: x (N, C, [H,] W) uint8/int8, a constant weight uint8/int8 (W's zero point
    constant too, absorbed), x's zero point a scalar (constant or computed); int32 output."""

    op_type = "ConvInteger"
    const_inputs = (1,)
    optional_inputs = (2, 3)

    auto_pad: str = "NOTSET"
    dilations: tuple[int, ...] = ()
    group: int = 1
    kernel_shape: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    w_zero: tuple[int, ...] = internal((0,))  # W's zero point: one, or one per output channel

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        if len(consts) < 2 or consts[1] is None:
            raise UnsupportedOp(cls.op_type, node, opset, "weight W (input 1) must be a constant")
        w = np.asarray(consts[1])
        if w.ndim not in (3, 4):
            raise UnsupportedOp(
                cls.op_type, node, opset, f"{w.ndim - 2}-D convolution (weight shape {w.shape})"
            )
        attrs = dict(attrs)
        attrs.setdefault("kernel_shape", tuple(int(d) for d in w.shape[2:]))
        op, _ = super().from_onnx(attrs, consts, node, opset)
        w_zero = (0,)
        if len(consts) > 3:
            if consts[3] is None:
                raise UnsupportedOp(cls.op_type, node, opset, "w_zero_point (input 3) must be a constant")
            z = np.asarray(consts[3])
            if z.size not in (1, w.shape[0]) or z.ndim > 1:
                raise ShapeError(
                    f"ConvInteger: w_zero_point of shape {list(z.shape)} is neither a scalar nor one per "
                    f"output channel of the weight {list(w.shape)}"
                )
            if z.dtype != w.dtype:
                raise UnsupportedOp(
                    cls.op_type, node, opset, f"w_zero_point is {z.dtype}, the weight {w.dtype}"
                )
            w_zero = tuple(int(v) for v in z.reshape(-1))
        op = cls(**attrs, w_zero=w_zero)
        return op, tuple(range(min(len(consts), 3)))

    def check(self, node, opset):
        rank = len(self.kernel_shape)

        def bad(why):
            return UnsupportedOp(self.op_type, node, opset, why)

        if rank not in (1, 2):
            raise bad(f"{rank}-D convolution (kernel_shape={list(self.kernel_shape)})")
        for name, value, want in (
            ("strides", self.strides, rank),
            ("dilations", self.dilations, rank),
            ("pads", self.pads, 2 * rank),
        ):
            if value and len(value) != want:
                raise bad(f"{name}={list(value)} for a {rank}-D convolution")
        if self.auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
            raise bad(f"auto_pad={self.auto_pad!r}")
        if any(v < 1 for v in (*self.kernel_shape, *self.strides, *self.dilations)) or self.group < 1:
            raise bad(f"kernel_shape/strides/dilations/group must be >= 1, got {self.to_dict()}")
        if any(p < 0 for p in self.pads):
            raise bad(f"negative pads {list(self.pads)}")

    def output_dtypes(self, dtypes):
        for pos, what in ((0, "x"), (1, "w"), (2, "x_zero_point")):
            d = dtypes[pos] if pos < len(dtypes) else None
            if d is not None and d not in QUANT_TYPES:
                raise DtypeRefused(f"ConvInteger: {what} is {d}; takes uint8 or int8")
        if len(dtypes) > 2 and dtypes[2] is not None and dtypes[2] != dtypes[0]:
            raise DtypeRefused(f"ConvInteger: x_zero_point is {dtypes[2]} but x is {dtypes[0]}")
        return ["int32"]

    # ---- shapes -----------------------------------------------------------------------------------
    def geometry(self, shapes) -> Geometry:
        x, w = shapes[0], shapes[1]
        rank = len(self.kernel_shape)
        if x is None or len(x) != rank + 2:
            raise ShapeError(f"ConvInteger: input {x} for a {rank}-D kernel {list(self.kernel_shape)}")
        # A 1-D convolution is a 2-D one over a single row.
        lift = (lambda v, one: (one, *v)) if rank == 1 else (lambda v, one: tuple(v))
        batch, cin, height, width = (int(d) for d in (x[:2] + lift(x[2:], 1)))
        kh, kw = lift(self.kernel_shape, 1)
        sh, sw = lift(self.strides or (1,) * rank, 1)
        dh, dw = lift(self.dilations or (1,) * rank, 1)
        cout = int(w[0])
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            upper = self.auto_pad == "SAME_UPPER"
            (pt, pb), (pl, pr) = same_pads(height, kh, sh, dh, upper), same_pads(width, kw, sw, dw, upper)
        elif self.auto_pad == "VALID" or not self.pads:
            pt = pl = pb = pr = 0
        elif rank == 1:
            pt, pb, (pl, pr) = 0, 0, self.pads
        else:
            pt, pl, pb, pr = self.pads
        out_h = (height + pt + pb - (kh - 1) * dh - 1) // sh + 1
        out_w = (width + pl + pr - (kw - 1) * dw - 1) // sw + 1
        if out_h < 1 or out_w < 1:
            raise ShapeError(
                f"ConvInteger: empty output {out_h}x{out_w} for input {list(x)}, weight {list(w)}"
            )
        if cin % self.group or cout % self.group or int(w[1]) * self.group != cin:
            raise ShapeError(
                f"ConvInteger: input {list(x)} and weight {list(w)} disagree with group {self.group}"
            )
        if tuple(w[2:]) != tuple(self.kernel_shape):
            raise ShapeError(
                f"ConvInteger: kernel_shape {list(self.kernel_shape)} does not match weight {list(w)}"
            )
        if len(self.w_zero) not in (1, cout):
            raise ShapeError(f"ConvInteger: {len(self.w_zero)} weight zero points for {cout} output channels")
        return Geometry(
            batch, cin, height, width, cout, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, out_h, out_w, self.group
        )

    def infer(self, shapes, consts):
        g = self.geometry(shapes)
        zero = shapes[2] if len(shapes) > 2 else None
        if zero is not None and math.prod(zero) != 1:
            raise ShapeError(f"ConvInteger: x_zero_point must be a scalar, got shape {list(zero)}")
        spatial = (g.out_w,) if len(self.kernel_shape) == 1 else (g.out_h, g.out_w)
        return [(g.batch, g.cout, *spatial)]

    def _band(self, g: Geometry) -> int:
        cout_g = g.cout // g.group
        return band_rows(g.out_h, (g.k + cout_g) * g.out_w * 8, g.out_w, BAND_BYTES, MIN_BAND_COLS)

    def _scratch_floats(self, g: Geometry) -> tuple[int, int, int]:
        cols = self._band(g) * g.out_w
        return g.cout * g.k, g.k * cols, g.cout // g.group * cols

    def scratch_bytes(self, shapes, part=None):
        return sum(-(-8 * n // _ALIGN) * _ALIGN for n in self._scratch_floats(self.geometry(shapes)))

    def prepare(self, consts):
        out = list(consts)
        w = np.asarray(consts[1]).astype(np.int16)
        zero = np.asarray(self.w_zero, np.int16).reshape(-1, *([1] * (w.ndim - 1)))
        diff = (w - zero).reshape(w.shape[0], -1)
        fits = diff.min() >= -128 and diff.max() <= 127
        out[1] = np.ascontiguousarray(diff.astype(np.int8 if fits else np.int16))
        return out

    def flops(self, shapes, out_shapes):
        g = self.geometry(shapes)
        return 2 * g.batch * g.cout * g.out_h * g.out_w * g.k

    def cost_kind(self, shapes):
        return COST_GEMM

    def slice_axes(self, shapes, out_shapes):
        return ()  # small int8 weights: it runs whole

    # ---- execution --------------------------------------------------------------------------------
    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"ConvInteger.bind: ConvInteger is not sliced, got part {part}")
        x, wp, y = ins[0], ins[1], outs[0]
        rank = len(self.kernel_shape)
        w_shape = (wp.shape[0], x.shape[1] // self.group, *self.kernel_shape)
        g = self.geometry([x.shape, w_shape])
        if wp.shape != (g.cout, g.k) or wp.dtype not in (np.int8, np.int16):
            raise ShapeError(
                f"ConvInteger.bind: prepared weight {wp.shape} {wp.dtype}, want ({g.cout}, {g.k}) int8/int16"
            )
        spatial = (g.out_w,) if rank == 1 else (g.out_h, g.out_w)
        if y.shape != (g.batch, g.cout, *spatial) or y.dtype != np.int32:
            raise ShapeError(
                f"ConvInteger.bind: output {y.shape} {y.dtype}, want {(g.batch, g.cout, *spatial)} int32"
            )
        zero = ins[2] if len(ins) > 2 and ins[2] is not None else np.zeros(1, x.dtype)
        zero = reshape_view(zero, (-1,))
        if zero.size != 1 or zero.dtype != x.dtype:
            raise ShapeError(f"ConvInteger.bind: x_zero_point {zero.shape} {zero.dtype} for x {x.dtype}")
        need = self._scratch_floats(g)
        raw = reshape_view(scratch, (-1,)).view(np.uint8)
        views, offset = [], 0
        for n in need:
            views.append(raw[offset : offset + 8 * n].view(np.float64))
            offset += -(-8 * n // _ALIGN) * _ALIGN
        w64, col, acc = views
        band = self._band(g)
        cin_g, cout_g = g.cin // g.group, g.cout // g.group
        xf, yf, wf = reshape_view(x, (-1,)), reshape_view(y, (-1,)), reshape_view(wp, (-1,))
        plane_in, plane_out = g.height * g.width, g.out_h * g.out_w
        steps = []  # (x plane0, r0, r1, group, y offset, weight view, col view, acc view)
        for n in range(g.batch):
            for r0 in range(0, g.out_h, band):
                r1 = min(r0 + band, g.out_h)
                cols = (r1 - r0) * g.out_w
                for grp in range(g.group):
                    steps.append(
                        (
                            (n * g.cin + grp * cin_g) * plane_in,
                            r0,
                            r1,
                            (n * g.cout + grp * cout_g) * plane_out + r0 * g.out_w,
                            reshape_view(w64[grp * cout_g * g.k : (grp + 1) * cout_g * g.k], (cout_g, g.k)),
                            reshape_view(col[: g.k * cols], (g.k, cols)),
                            reshape_view(acc[: cout_g * cols], (cout_g, cols)),
                        )
                    )
        geo = (g.height, g.width, cin_g)
        kernel_geo = (g.out_w, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl)

        def run_conv_integer():
            widen(wf, w64)
            for plane0, r0, r1, y0, w2, col2, acc2 in steps:
                im2col_minus_zero(xf, zero, col, plane0, *geo, r0, r1, *kernel_geo)
                np.matmul(w2, col2, out=acc2)
                store_int32(acc, yf, y0, cout_g, (r1 - r0) * g.out_w, plane_out)

        return run_conv_integer

    def reference(self, ins):
        x = np.asarray(ins[0]).astype(np.int64)
        w = np.asarray(ins[1]).astype(np.int64)
        if len(ins) > 2 and ins[2] is not None:
            x = x - np.asarray(ins[2]).astype(np.int64).reshape(())
        w = w - np.asarray(self.w_zero, np.int64).reshape(-1, *([1] * (w.ndim - 1)))
        g = self.geometry([x.shape, w.shape])
        if len(self.kernel_shape) == 1:
            x, w = x[:, :, None, :], w[:, :, None, :]
        y = reference_conv(x, w, g)
        y = y.astype(np.int32)
        return [y[:, :, 0, :] if len(self.kernel_shape) == 1 else y]
