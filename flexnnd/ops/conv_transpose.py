"""ConvTranspose (1-D and 2-D, float32): a BLAS matmul per band of input rows, then col2im.

For each band of input rows, col = Wp @ X_band, (Cout*kh*kw, Cin) @ (Cin, rows*W), goes into
scratch; col2im then adds each (channel, ky, kx) row of it into the output pixels it lands on. The
output starts as the bias, so overlapping kernels (4x4 stride 2) simply accumulate. The weight is
prepared as (Cout, kh*kw*Cin/group), output-channel major, so a "channels" part [c0, c1) reads a
contiguous block of rows and writes only its channels of the output. A 1-D ConvTranspose is the
2-D one on a single row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.base import COST_GEMM, Axis, Op, SliceAxis, register
from flexnnd.ops.buffers import check_blas, reshape_view, scratch_floats
from flexnnd.ops.conv_geometry import band_rows
from flexnnd.ops.conv_im2col import MIN_BAND_COLS
from flexnnd.ops.epilogue import NO_BIAS
from flexnnd.ops.jit import kernel

# The col band (Cout*kh*kw x rows*W floats) stays below this; measured on [1,64,160,160] -> 32 ch.
COL_BAND_BYTES = 2 << 20


@kernel
def fill_planes(y, base, channels, plane, bias):
    """y[base + c*plane : ... + plane] = bias[c] (0 when bias is empty), for c < channels (y flat)."""
    for c in range(channels):
        v = bias[c] if bias.size > 0 else np.float32(0.0)
        s = np.uint64(base + c * plane)
        for k in range(np.uint64(plane)):
            y[s + k] = v


@kernel
def col2im_add(
    col, y, base, channels, kh, kw, r0, r1, w_in, out_h, out_w, sh, sw, dh, dw, pt, pl, bias, tiles
):
    """Add col[(c, ky, kx), (iy - r0, ix)] into y[base + (c, oy, ox)], oy = iy*sh + ky*dh - pt and
    ox = ix*sw + kx*dw - pl, for the positions inside the output (y flat, c < channels). With `tiles`
    (the kernel tiles the output: each pixel is hit once) it writes col + bias[c] instead."""
    ncols = (r1 - r0) * w_in
    for c in range(channels):
        b = bias[c] if bias.size > 0 else np.float32(0.0)
        for ky in range(kh):
            for kx in range(kw):
                row = ((c * kh + ky) * kw + kx) * ncols
                shift = kx * dw - pl
                ix0 = max(0, -(shift // sw))
                ix1 = min(w_in, (out_w - 1 - shift) // sw + 1)
                if ix1 <= ix0:
                    continue
                n = np.uint64(ix1 - ix0)
                step = np.uint64(sw)
                for iy in range(r0, r1):
                    oy = iy * sh + ky * dh - pt
                    if oy < 0 or oy >= out_h:
                        continue
                    s = np.uint64(row + (iy - r0) * w_in + ix0)
                    d = np.uint64(base + (c * out_h + oy) * out_w + ix0 * sw + shift)
                    if tiles:
                        for k in range(n):
                            y[d + k * step] = col[s + k] + b
                    else:
                        for k in range(n):
                            y[d + k * step] += col[s + k]


@kernel
def depthwise_transpose(
    x, xbase, y, ybase, wk, channels, h, w_in, kh, kw, out_h, out_w, sh, sw, dh, dw, pt, pl, bias, tiles
):
    """A depthwise ConvTranspose (one input and one output channel per group) with no matmul: each tap
    adds wk[c, ky, kx] * x[c] into the output pixels it lands on (x, y flat from xbase, ybase)."""
    for c in range(channels):
        b = bias[c] if bias.size > 0 else np.float32(0.0)
        for ky in range(kh):
            for kx in range(kw):
                wt = wk[(c * kh + ky) * kw + kx]
                shift = kx * dw - pl
                ix0 = max(0, -(shift // sw))
                ix1 = min(w_in, (out_w - 1 - shift) // sw + 1)
                if ix1 <= ix0:
                    continue
                n = np.uint64(ix1 - ix0)
                step = np.uint64(sw)
                for iy in range(h):
                    oy = iy * sh + ky * dh - pt
                    if oy < 0 or oy >= out_h:
                        continue
                    s = np.uint64(xbase + (c * h + iy) * w_in + ix0)
                    d = np.uint64(ybase + (c * out_h + oy) * out_w + ix0 * sw + shift)
                    if tiles:
                        for k in range(n):
                            y[d + k * step] = wt * x[s + k] + b
                    else:
                        for k in range(n):
                            y[d + k * step] += wt * x[s + k]


@dataclass(frozen=True)
class Geometry:
    """Every number of one ConvTranspose, 1-D as 2-D with one row (pads resolved)."""

    batch: int
    cin: int
    height: int
    width: int
    cout: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    out_h: int
    out_w: int
    group: int
    rank: int  # spatial dimensions: 1 or 2

    @property
    def kk(self) -> int:
        return self.kh * self.kw

    @property
    def depthwise(self) -> bool:
        return self.group == self.cin == self.cout

    @property
    def tiles(self) -> bool:
        """Whether every output pixel gets exactly one kernel tap (kernel = stride, no pads, no dilation)."""
        return (
            (self.kh, self.kw) == (self.sh, self.sw)
            and self.dh == self.dw == 1
            and self.pt == self.pl == 0
            and (self.out_h, self.out_w) == (self.height * self.sh, self.width * self.sw)
        )

    @property
    def out_shape(self) -> tuple[int, ...]:
        spatial = (self.out_w,) if self.rank == 1 else (self.out_h, self.out_w)
        return (self.batch, self.cout, *spatial)


@register
@dataclass(frozen=True)
class ConvTranspose(Op):
    """ONNX ConvTranspose, 1-D or 2-D; W (Cin, Cout/group, k...) and B constant."""

    op_type = "ConvTranspose"
    const_inputs = (1, 2)
    optional_inputs = (2,)

    auto_pad: str = "NOTSET"
    dilations: tuple[int, ...] = ()
    group: int = 1
    kernel_shape: tuple[int, ...] = ()
    output_padding: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        if len(consts) < 2 or consts[1] is None:
            raise UnsupportedOp(cls.op_type, node, opset, "weight W must be a constant")
        w = consts[1]
        if w.ndim not in (3, 4):
            raise UnsupportedOp(cls.op_type, node, opset, f"{w.ndim - 2}-D ConvTranspose (weight {w.shape})")
        attrs = dict(attrs)
        attrs.setdefault("kernel_shape", tuple(int(d) for d in w.shape[2:]))
        return super().from_onnx(attrs, consts, node, opset)

    def check(self, node, opset):
        def bad(why: str) -> UnsupportedOp:
            return UnsupportedOp(self.op_type, node, opset, why)

        rank = len(self.kernel_shape)
        if rank not in (1, 2):
            raise bad(f"{rank}-D ConvTranspose (kernel_shape {list(self.kernel_shape)})")
        for name, value, n in (
            ("strides", self.strides, rank),
            ("dilations", self.dilations, rank),
            ("output_padding", self.output_padding, rank),
            ("pads", self.pads, 2 * rank),
        ):
            if value and len(value) != n:
                raise bad(f"{name}={list(value)} for a {rank}-D kernel")
        if self.output_shape and len(self.output_shape) not in (rank, rank + 2):
            raise bad(f"output_shape={list(self.output_shape)} for a {rank}-D kernel")
        if self.auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
            raise bad(f"auto_pad={self.auto_pad!r}")
        if any(v < 1 for v in (*self.kernel_shape, *self.strides, *self.dilations)) or self.group < 1:
            raise bad(f"kernel_shape/strides/dilations/group must be >= 1, got {self.to_dict()}")
        if any(p < 0 for p in (*self.pads, *self.output_padding)):
            raise bad(f"negative pads {list(self.pads)} or output_padding {list(self.output_padding)}")

    # ---- shapes ---------------------------------------------------------------------------------
    def geometry(self, x_shape, w_shape) -> Geometry:
        rank = len(self.kernel_shape) or len(w_shape) - 2
        if x_shape is None or len(x_shape) != rank + 2 or w_shape is None or len(w_shape) != rank + 2:
            raise ShapeError(f"ConvTranspose: input {x_shape} and weight {w_shape} for a {rank}-D kernel")
        if self.kernel_shape and tuple(self.kernel_shape) != tuple(w_shape[2:]):
            raise ShapeError(
                f"ConvTranspose: kernel_shape {list(self.kernel_shape)} does not match weight {w_shape}"
            )
        batch, cin = int(x_shape[0]), int(x_shape[1])
        if int(w_shape[0]) != cin or cin % self.group:
            raise ShapeError(
                f"ConvTranspose: input {x_shape} has {cin} channels; weight {w_shape} wants {w_shape[0]} "
                f"in {self.group} group(s)"
            )
        ins = [int(d) for d in x_shape[2:]]
        ks = [int(d) for d in w_shape[2:]]
        strides = list(self.strides or [1] * rank)
        dils = list(self.dilations or [1] * rank)
        adj = list(self.output_padding or [0] * rank)
        pads = list(self.pads or [0] * (2 * rank))
        want = list(self.output_shape[-rank:]) if self.output_shape else None
        heads, outs = [], []
        for i in range(rank):
            full = strides[i] * (ins[i] - 1) + adj[i] + (ks[i] - 1) * dils[i] + 1
            if want is not None or self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out = int(want[i]) if want is not None else ins[i] * strides[i]
                total = max(0, full - out)
                small = total // 2
                # ONNX Runtime's split: the odd pixel at the end for SAME_UPPER, at the start otherwise
                head = small if self.auto_pad == "SAME_UPPER" else total - small
            elif self.auto_pad == "VALID":
                head, out = 0, full
            else:
                head, out = pads[i], full - pads[i] - pads[i + rank]
            if out < 1:
                raise ShapeError(
                    f"ConvTranspose: empty output ({out}) on spatial axis {i} for input {x_shape}, weight "
                    f"{w_shape}, strides {strides}, pads {pads}, output_padding {adj}"
                )
            heads.append(head)
            outs.append(out)
        if rank == 1:
            ins, ks, strides, dils, outs = ([1, *v] for v in (ins, ks, strides, dils, outs))
            heads = [0, *heads]
        return Geometry(
            batch, cin, ins[0], ins[1], int(w_shape[1]) * self.group, ks[0], ks[1],
            strides[0], strides[1], dils[0], dils[1], heads[0], heads[1], outs[0], outs[1], self.group, rank,
        )  # fmt: skip

    def _geometry_of(self, shapes) -> Geometry:
        geo = self.geometry(shapes[0], shapes[1])
        bias = shapes[2] if len(shapes) > 2 else None
        if bias is not None and tuple(bias) != (geo.cout,):
            raise ShapeError(
                f"ConvTranspose: bias {bias} for {geo.cout} output channels (weight {shapes[1]})"
            )
        return geo

    def infer(self, shapes, consts):
        if len(shapes) > 2 and shapes[2] is not None and len(consts) > 2 and consts[2] is None:
            raise UnsupportedOp(self.op_type, "?", None, "bias B must be a constant")
        return [self._geometry_of(shapes).out_shape]

    def prepare(self, consts):
        out = list(consts)
        w = np.asarray(consts[1], dtype=np.float32)
        if w.ndim == 3:
            w = w[:, :, None, :]
        cin, cout_g, kh, kw = w.shape
        g = self.group
        prepared = w.reshape(g, cin // g, cout_g, kh, kw).transpose(0, 2, 3, 4, 1)
        out[1] = np.ascontiguousarray(prepared.reshape(g * cout_g, kh * kw * (cin // g)))
        if len(consts) > 2 and consts[2] is not None:
            out[2] = np.ascontiguousarray(consts[2], dtype=np.float32).reshape(-1)
        return out

    def _band(self, geo: Geometry, channels: int) -> int:
        return band_rows(
            geo.height, 4 * channels * geo.kk * geo.width, geo.width, COL_BAND_BYTES, MIN_BAND_COLS
        )

    def _channels(self, geo: Geometry, part) -> tuple[int, int]:
        if part is None:
            return 0, geo.cout
        if part.axis is not Axis.CHANNELS or geo.group != 1 or not 0 <= part.start < part.stop <= geo.cout:
            raise ValueError(
                f"ConvTranspose: cannot compute part {part} of {geo.cout} channels, group {geo.group}"
            )
        return part.start, part.stop

    def scratch_bytes(self, shapes, part=None):
        geo = self._geometry_of(shapes)
        c0, c1 = self._channels(geo, part)
        if geo.depthwise:
            return 0
        channels = (c1 - c0) if geo.group == 1 else geo.cout // geo.group
        return 4 * channels * geo.kk * self._band(geo, channels) * geo.width

    def flops(self, shapes, out_shapes):
        geo = self._geometry_of(shapes)
        return 2 * geo.batch * geo.cin * (geo.cout // geo.group) * geo.kk * geo.height * geo.width

    def slice_axes(self, shapes, out_shapes):
        if self.group != 1:
            return ()  # a part would have to be whole groups; grouped ones run whole
        return (SliceAxis(Axis.CHANNELS, int(out_shapes[0][1])),)

    def cost_kind(self, shapes):
        return COST_GEMM

    def shared_bytes(self, shapes):
        """The input: every output-channel part reads it whole."""
        return 4 * int(np.prod(shapes[0], dtype=np.int64))

    # ---- execution ------------------------------------------------------------------------------
    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if reuse:
            raise ValueError("ConvTranspose.bind: its parts share no operand")
        x, wp, y = ins[0], ins[1], outs[0]
        bias = ins[2] if len(ins) > 2 and ins[2] is not None else NO_BIAS
        w_shape = (x.shape[1], y.shape[1] // self.group, *self.kernel_shape)
        geo = self.geometry(x.shape, w_shape)
        c0, c1 = self._channels(geo, part)
        cin_g, cout_g = geo.cin // geo.group, geo.cout // geo.group
        if (
            tuple(y.shape) != geo.out_shape
            or wp.shape != (c1 - c0, geo.kk * cin_g)
            or bias.size not in (0, c1 - c0)
        ):
            raise ShapeError(
                f"ConvTranspose.bind: input {x.shape}, weight {wp.shape}, bias {bias.shape}, output {y.shape}; "
                f"want weight {(c1 - c0, geo.kk * cin_g)}, output {geo.out_shape} for part {part}"
            )
        for name, a in (("input", x), ("weight", wp), ("bias", bias), ("output", y)):
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                raise ValueError(f"ConvTranspose.bind: {name} must be C-contiguous float32, got {a.dtype}")
        yflat = reshape_view(y, (-1,))
        plane = geo.out_h * geo.out_w
        inits = [] if geo.tiles else [((n * geo.cout + c0) * plane) for n in range(geo.batch)]
        if geo.depthwise:
            return self._bind_depthwise(
                geo, reshape_view(x, (-1,)), yflat, reshape_view(wp, (-1,)), bias, inits
            )
        per_group = (c1 - c0) if geo.group == 1 else cout_g
        band = self._band(geo, per_group)
        col = scratch_floats(scratch, per_group * geo.kk * band * geo.width)
        x4 = reshape_view(x, (geo.batch, geo.cin, geo.height, geo.width))
        calls = []  # (A, X band, col view, col2im arguments)
        for n in range(geo.batch):
            for g in range(geo.group):
                a = reshape_view(wp[g * per_group : (g + 1) * per_group], (per_group * geo.kk, cin_g))
                chan = c0 + g * per_group
                for r0 in range(0, geo.height, band):
                    r1 = min(r0 + band, geo.height)
                    xb = reshape_view(
                        x4[n, g * cin_g : (g + 1) * cin_g, r0:r1], (cin_g, (r1 - r0) * geo.width)
                    )
                    cb = reshape_view(col[: a.shape[0] * xb.shape[1]], (a.shape[0], xb.shape[1]))
                    check_blas(a, xb, cb)
                    base = (n * geo.cout + chan) * plane
                    args = (cb.reshape(-1), yflat, base, per_group, geo.kh, geo.kw, r0, r1, geo.width)
                    args += (geo.out_h, geo.out_w, geo.sh, geo.sw, geo.dh, geo.dw, geo.pt, geo.pl)
                    args += (bias[g * per_group : (g + 1) * per_group] if bias.size else bias, geo.tiles)
                    calls.append((a, xb, cb, args))
        channels, matmul = c1 - c0, np.matmul

        def run_conv_transpose():
            for base in inits:
                fill_planes(yflat, base, channels, plane, bias)
            for a, xb, cb, args in calls:
                matmul(a, xb, out=cb)
                col2im_add(*args)

        return run_conv_transpose

    def _bind_depthwise(self, geo, xflat, yflat, wk, bias, inits):
        g = geo
        shape = (g.cout, g.height, g.width, g.kh, g.kw, g.out_h, g.out_w, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl)
        per_image = []
        for n in range(g.batch):
            bases = (xflat, n * g.cin * g.height * g.width, yflat, n * g.cout * g.out_h * g.out_w, wk)
            per_image.append((*bases, *shape, bias, g.tiles))
        plane = g.out_h * g.out_w

        def run_depthwise_transpose():
            for base in inits:
                fill_planes(yflat, base, g.cout, plane, bias)
            for args in per_image:
                depthwise_transpose(*args)

        return run_depthwise_transpose

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float64)
        w = np.asarray(ins[1], dtype=np.float64)
        geo = self._geometry_of([x.shape, w.shape, None])
        if geo.rank == 1:
            x, w = x[:, :, None, :], w[:, :, None, :]
        cin_g, cout_g = geo.cin // geo.group, geo.cout // geo.group
        span_h = (geo.height - 1) * geo.sh + 1
        span_w = (geo.width - 1) * geo.sw + 1
        big_h = max(geo.pt + geo.out_h, span_h + (geo.kh - 1) * geo.dh)
        big_w = max(geo.pl + geo.out_w, span_w + (geo.kw - 1) * geo.dw)
        big = np.zeros((geo.batch, geo.cout, big_h, big_w))
        for g in range(geo.group):
            xs = x[:, g * cin_g : (g + 1) * cin_g]
            ws = w[g * cin_g : (g + 1) * cin_g]
            for ky in range(geo.kh):
                for kx in range(geo.kw):
                    contrib = np.einsum("nchw,co->nohw", xs, ws[:, :, ky, kx])
                    oy, ox = ky * geo.dh, kx * geo.dw
                    big[
                        :, g * cout_g : (g + 1) * cout_g, oy : oy + span_h : geo.sh, ox : ox + span_w : geo.sw
                    ] += contrib
        y = big[:, :, geo.pt : geo.pt + geo.out_h, geo.pl : geo.pl + geo.out_w]
        if len(ins) > 2 and ins[2] is not None:
            y = y + np.asarray(ins[2], dtype=np.float64).reshape(1, -1, 1, 1)
        if geo.rank == 1:
            y = y[:, :, 0, :]
        return [y.astype(np.float32)]
