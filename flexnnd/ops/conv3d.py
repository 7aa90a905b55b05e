"""Conv in 3-D (NCDHW, float32): video and volume models' Conv3d, with Conv's fused epilogue.

Conv.from_onnx hands a node with a 5-D weight to Conv3D, and Conv.from_dict a kernel_shape of
three; Conv3D is a Conv (op_type "Conv", the same attributes), so the graph passes fold
BatchNorm, activations and residual Adds into it as into a 2-D one.

Three paths, each writing straight into the output, then epilogue.bias_act:
  pointwise  1x1x1, stride 1, no padding: the input already is the GEMM operand of a BLAS matmul;
  depthwise  group == Cin == Cout: depthwise3d, per channel im2col3d then a numba dot (no BLAS
             call per channel);
  im2col     anything else (grouped too): im2col3d into scratch, one BLAS matmul per batch, group
             and band of output rows.
An output "row" is one (depth, height) pair: the output plane (OD*OH*OW) is OD*OH rows of OW, so a
band of rows is contiguous in every channel, and Part("rows", a, b) cuts bands of them as for
the 2-D conv. Part("channels", a, b) computes output channels [a, b) from those weight rows; each
channel part builds its own im2col (no shared operand).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.activation import ACT_CODES, reference_activation
from flexnnd.ops.base import COST_DEPTHWISE, COST_GEMM, Axis, Kernel, Part, SliceAxis
from flexnnd.ops.buffers import check_blas, copy, fill, fill_strided, reshape_view, scratch_floats
from flexnnd.ops.conv import Conv
from flexnnd.ops.conv_geometry import band_rows, same_pads
from flexnnd.ops.conv_im2col import IM2COL_BAND_BYTES, MIN_BAND_COLS
from flexnnd.ops.epilogue import NO_BIAS, bias_act
from flexnnd.ops.jit import kernel


@dataclass(frozen=True)
class Geometry3D:
    """Every number of one 3-D convolution (explicit pads resolved from auto_pad); per axis
    (depth, height, width): kernel, stride, dilation, pads at the start and at the end, output."""

    batch: int
    cin: int
    cout: int
    group: int
    size: tuple[int, int, int]
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    dilation: tuple[int, int, int]
    pad_begin: tuple[int, int, int]
    pad_end: tuple[int, int, int]
    out: tuple[int, int, int]

    @property
    def k(self) -> int:
        """Rows of one group's im2col matrix (= columns of the prepared weight)."""
        return self.cin // self.group * int(np.prod(self.kernel))

    @property
    def rows(self) -> int:
        """Output rows: (depth, height) pairs of out_w outputs each."""
        return self.out[0] * self.out[1]

    @property
    def plane(self) -> int:
        return self.out[0] * self.out[1] * self.out[2]

    @property
    def depthwise(self) -> bool:
        return self.group > 1 and self.group == self.cin == self.cout

    @property
    def pointwise(self) -> bool:
        return self.kernel == self.stride == (1, 1, 1) and not any(self.pad_begin + self.pad_end)


@kernel(inline="always")
def _flat_rows(xf, cf, base, row, r0, r1, lo, hi, shift, a, i, geo, depth, height, width):
    """im2col3d's col row of tap (a, i, j) for stride 1 in H and W and out_w == width: the output
    rows of one output depth read one contiguous run of an input slice, copied at once; then the
    columns that wrapped into a neighbouring input row are zeroed."""
    out_h, out_w, sd, pf, pt, dd, dh = geo[0], geo[1], geo[5], geo[11], geo[12], geo[8], geo[9]
    r = r0
    while r < r1:
        od = r // out_h
        end = min(r1, (od + 1) * out_h)
        oh0, oh1 = r - od * out_h, end - od * out_h
        dst0 = row + (r - r0) * out_w
        id_ = od * sd - pf + a * dd
        if id_ < 0 or id_ >= depth:
            fill(cf, dst0, (end - r) * out_w, 0.0)
        else:
            ha = min(max(oh0, pt - i * dh), oh1)  # output rows [ha, hb) read real input rows
            hb = max(min(oh1, height + pt - i * dh), ha)
            fill(cf, dst0, (ha - oh0) * out_w, 0.0)
            fill(cf, dst0 + (hb - oh0) * out_w, (oh1 - hb) * out_w, 0.0)
            dst = dst0 + (ha - oh0) * out_w
            plane = base + id_ * height * width
            src = plane + (ha - pt + i * dh) * width + shift
            k0 = max(0, plane - src)  # clipped to the slice: those are wrapped columns
            k1 = min((hb - ha) * out_w, plane + height * width - src)
            copy(cf, dst + k0, xf, src + k0, k1 - k0)
            for ow in range(lo):
                fill_strided(cf, dst + ow, out_w, hb - ha, 0.0)
            for ow in range(hi, out_w):
                fill_strided(cf, dst + ow, out_w, hb - ha, 0.0)
        r = end


@kernel
def im2col3d(x, n, c0, channels, col, r0, r1, geo):
    """col[((c*kd + a)*kh + i)*kw + j, (r-r0)*out_w + ow] = x[n, c0+c, od*sd-pf+a*dd, oh*sh-pt+i*dh,
    ow*sw-pl+j*dw] (0 outside) for output rows r = od*out_h + oh in [r0, r1).

    geo: (out_h, out_w, kd, kh, kw, sd, sh, sw, dd, dh, dw, pf, pt, pl). The valid output columns
    of kernel column j are computed once per tap, so the copy loop checks no bounds.
    """
    out_h, out_w, kd, kh, kw, sd, sh, sw, dd, dh, dw, pf, pt, pl = geo
    depth, height, width = x.shape[2], x.shape[3], x.shape[4]
    volume = depth * height * width
    xf, cf = x.reshape(-1), col.reshape(-1)
    span = (r1 - r0) * out_w
    flat = sh == 1 and sw == 1 and out_w == width
    for c in range(channels):
        base = (n * x.shape[1] + c0 + c) * volume
        for a in range(kd):
            for i in range(kh):
                for j in range(kw):
                    row = (((c * kd + a) * kh + i) * kw + j) * span
                    shift = j * dw - pl
                    lo = min(max(-(shift // sw), 0), out_w)  # first ow with ow*sw + shift >= 0
                    hi = min(max((width - 1 - shift) // sw + 1, lo), out_w)  # past the last valid ow
                    if flat:
                        _flat_rows(xf, cf, base, row, r0, r1, lo, hi, shift, a, i, geo, depth, height, width)
                        continue
                    for r in range(r0, r1):
                        od = r // out_h
                        oh = r - od * out_h
                        id_ = od * sd - pf + a * dd
                        ih = oh * sh - pt + i * dh
                        dst = row + (r - r0) * out_w
                        if id_ < 0 or id_ >= depth or ih < 0 or ih >= height:
                            fill(cf, dst, out_w, 0.0)
                            continue
                        fill(cf, dst, lo, 0.0)
                        fill(cf, dst + hi, out_w - hi, 0.0)
                        src = base + (id_ * height + ih) * width + lo * sw + shift
                        d, s = np.uint64(dst + lo), np.uint64(src)
                        if sw == 1:
                            copy(cf, dst + lo, xf, src, hi - lo)
                        elif sw == 2:  # a literal stride lets LLVM vectorize with interleaved loads
                            for k in range(np.uint64(hi - lo)):
                                cf[d + k] = xf[s + np.uint64(2) * k]
                        else:
                            for k in range(np.uint64(hi - lo)):
                                cf[d + k] = xf[s + np.uint64(sw) * k]


@kernel
def depthwise3d(x, w, y, col, n, c0, c1, r0, r1, geo):
    """A depthwise conv (one input channel per output channel) for channels [c0, c1) and output rows
    [r0, r1): per channel, im2col3d of its plane into `col` (K, (r1-r0)*out_w), then
    y[n, c, rows] = w[c - c0] @ col as K long vectorized passes (BLAS would see a 1-row matrix).
    w: (c1 - c0, K); geo as in im2col3d."""
    out_w = geo[1]
    plane = y.shape[2] * y.shape[3] * y.shape[4]
    taps, span = col.shape
    yf = y.reshape(-1)
    for c in range(c0, c1):
        im2col3d(x, n, c, 1, col, r0, r1, geo)
        dst = np.uint64((n * y.shape[1] + c) * plane + r0 * out_w)
        first = col[0]
        wv = w[c - c0, 0]
        for q in range(np.uint64(span)):
            yf[dst + q] = wv * first[q]
        for k in range(1, taps):
            src = col[k]
            wv = w[c - c0, k]
            for q in range(np.uint64(span)):
                yf[dst + q] += wv * src[q]


@dataclass(frozen=True)
class Conv3D(Conv):
    """ONNX Conv on NCDHW input; W (and B) constant, W prepared as (Cout, Cin/group*kd*kh*kw).
    Not registered: Conv builds it for 5-D weights (see the module docstring)."""

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        w = consts[1]
        if w is None or w.ndim != 5:
            raise UnsupportedOp(cls.op_type, node, opset, f"Conv3D needs a constant 5-D weight, got {w}")
        attrs = dict(attrs)
        attrs.setdefault("kernel_shape", tuple(int(d) for d in w.shape[2:]))
        return super(Conv, cls).from_onnx(attrs, consts, node, opset)

    def check(self, node: str, opset: int) -> None:
        def bad(why: str) -> UnsupportedOp:
            return UnsupportedOp(self.op_type, node, opset, why)

        for name, value, rank in (
            ("kernel_shape", self.kernel_shape, 3),
            ("strides", self.strides, 3),
            ("dilations", self.dilations, 3),
            ("pads", self.pads, 6),
        ):
            if len(value) not in ((rank,) if name == "kernel_shape" else (0, rank)):
                raise bad(f"{name}={list(value)} does not fit a 3-D convolution")
        if self.auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
            raise bad(f"auto_pad={self.auto_pad!r}")
        if any(v < 1 for v in (*self.kernel_shape, *self.strides, *self.dilations)) or self.group < 1:
            raise bad(f"kernel_shape/strides/dilations/group must be >= 1, got {self.to_dict()}")
        if any(p < 0 for p in self.pads):
            raise bad(f"negative pads {list(self.pads)}")
        if self.activation not in ACT_CODES:
            raise bad(f"fused activation {self.activation!r}")

    # ---- shapes ---------------------------------------------------------------------------------
    def geometry(self, x_shape, cout: int, kernel=None) -> Geometry3D:
        if len(x_shape) != 5:
            raise ShapeError(f"Conv: a 3-D convolution needs a 5-D (N, C, D, H, W) input, got {x_shape}")
        kernel = tuple(int(k) for k in (kernel or self.kernel_shape))
        batch, cin, *size = (int(d) for d in x_shape)
        stride = self.strides or (1, 1, 1)
        dilation = self.dilations or (1, 1, 1)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            upper = self.auto_pad == "SAME_UPPER"
            pads = [same_pads(size[i], kernel[i], stride[i], dilation[i], upper) for i in range(3)]
            begin, end = tuple(p[0] for p in pads), tuple(p[1] for p in pads)
        elif self.auto_pad == "VALID":
            begin = end = (0, 0, 0)
        else:
            pads = self.pads or (0,) * 6
            begin, end = tuple(pads[:3]), tuple(pads[3:])
        out = tuple(
            (size[i] + begin[i] + end[i] - (kernel[i] - 1) * dilation[i] - 1) // stride[i] + 1
            for i in range(3)
        )
        if min(out) < 1:
            raise ShapeError(
                f"Conv: empty output {out} for input {x_shape}, kernel {kernel}, pads {begin + end}, "
                f"strides {stride}, dilations {dilation}"
            )
        if cin % self.group or cout % self.group:
            raise ShapeError(
                f"Conv: group {self.group} does not divide Cin {cin} and Cout {cout} (input {x_shape})"
            )
        return Geometry3D(
            batch, cin, cout, self.group, tuple(size), kernel, tuple(stride), tuple(dilation), begin, end, out
        )

    def _geometry_of(self, shapes) -> Geometry3D:
        x, w = shapes[0], shapes[1]
        if x is None or len(x) != 5:
            raise ShapeError(f"Conv: a 3-D convolution needs a 5-D (N, C, D, H, W) input, got {x}")
        if w is None or len(w) != 5:
            raise ShapeError(f"Conv: weight must have rank 5, got shape {w} (input {x})")
        if tuple(self.kernel_shape) != tuple(w[2:]):
            raise ShapeError(f"Conv: kernel_shape {list(self.kernel_shape)} does not match weight {w}")
        return self._channels_checked(self.geometry(x, int(w[0]), tuple(w[2:])), shapes)

    def infer(self, shapes, consts):
        geo = self._geometry_of(shapes)
        if len(shapes) > 2 and shapes[2] is not None and len(consts) > 2 and consts[2] is None:
            raise UnsupportedOp(self.op_type, "?", None, "bias B must be a constant")
        return [(geo.batch, geo.cout, *geo.out)]

    def _part_range(self, geo: Geometry3D, part: Part | None) -> tuple[int, int, int, int]:
        """(r0, r1, c0, c1): the output rows ((depth, height) pairs) and channels `part` computes."""
        r0, r1, c0, c1 = 0, geo.rows, 0, geo.cout
        if part is None:
            return r0, r1, c0, c1
        if part.axis is Axis.ROWS:
            r0, r1, limit = part.start, part.stop, geo.rows
        elif part.axis is Axis.CHANNELS:
            c0, c1, limit = part.start, part.stop, geo.cout
            if geo.group > 1 and not geo.depthwise:
                raise ValueError(
                    f"Conv: a grouped 3-D convolution (group {geo.group}) is not cut by channels"
                )
        else:
            raise ValueError(f"Conv: cannot slice along {part.axis!r}")
        if not 0 <= part.start < part.stop <= limit:
            raise ValueError(f"Conv: part {part} outside [0, {limit})")
        return r0, r1, c0, c1

    def _band3d(self, geo: Geometry3D, rows: int) -> int:
        """Output rows per im2col band: below IM2COL_BAND_BYTES, at least MIN_BAND_COLS columns."""
        out_w = geo.out[2]
        return band_rows(rows, geo.k * out_w * 4, out_w, IM2COL_BAND_BYTES, MIN_BAND_COLS)

    def scratch_bytes(self, shapes, part=None):
        geo = self._geometry_of(shapes)
        r0, r1, _, _ = self._part_range(geo, part)
        if geo.pointwise:
            return 0
        return 4 * geo.k * self._band3d(geo, r1 - r0) * geo.out[2]

    def flops(self, shapes, out_shapes):
        geo = self._geometry_of(shapes)
        return 2 * geo.batch * geo.cout * geo.plane * geo.k

    # ---- what the planner and the simulator ask --------------------------------------------------
    def slice_axes(self, shapes, out_shapes):
        geo = self._geometry_of(shapes)
        axes = []
        if self.group == 1 or geo.depthwise:
            axes.append(SliceAxis(Axis.CHANNELS, geo.cout))
        axes.append(SliceAxis(Axis.ROWS, geo.rows, geo.out[2]))
        return tuple(axes)

    def shares_operand(self, shapes, part):
        return False

    def cost_kind(self, shapes):
        return COST_DEPTHWISE if self._geometry_of(shapes).depthwise else COST_GEMM

    def shared_bytes(self, shapes):
        """The im2col matrix, which every channel part builds and reads whole."""
        geo = self._geometry_of(shapes)
        return 0 if geo.depthwise else 4 * geo.k * geo.group * geo.batch * geo.plane

    def dense_flops(self, shapes, out_shapes):
        return 0

    # ---- execution ------------------------------------------------------------------------------
    def bind(self, ins, outs, scratch, part=None, reuse=False) -> Kernel:
        x, wp, y = ins[0], ins[1], outs[0]
        bias = ins[2] if len(ins) > 2 and ins[2] is not None else NO_BIAS
        w_shape = (y.shape[1], self.cin_of(x.shape), *self.kernel_shape)
        geo = self._geometry_of([x.shape, w_shape, None])
        r0, r1, c0, c1 = self._part_range(geo, part)
        want_y = (geo.batch, geo.cout, *geo.out)
        want_w = (c1 - c0, geo.k)
        if tuple(y.shape) != want_y or tuple(wp.shape) != want_w or bias.size not in (0, want_w[0]):
            raise ShapeError(
                f"Conv.bind: input {x.shape}, weight {wp.shape}, bias {bias.shape}, output {y.shape}; "
                f"want weight {want_w}, output {want_y} for part {part}"
            )
        for name, a in (("input", x), ("weight", wp), ("bias", bias), ("output", y)):
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                raise ValueError(f"Conv.bind: {name} must be C-contiguous float32, got {a.dtype} {a.strides}")
        if reuse:
            raise ValueError(f"Conv.bind: the parts of a 3-D convolution share no operand (part {part})")
        act, alpha, beta = (
            ACT_CODES[self.activation],
            float(self.activation_alpha),
            float(self.activation_beta),
        )
        res = NO_BIAS
        if self.residual:
            if ins[3].shape != y.shape:
                raise ShapeError(f"Conv.bind: residual {ins[3].shape} for output {y.shape}")
            res = reshape_view(ins[3], (-1,))
        flat = reshape_view(y, (-1,))
        out_w, plane = geo.out[2], geo.plane
        spatial = (*geo.out[1:], *geo.kernel, *geo.stride, *geo.dilation, *geo.pad_begin)
        band = self._band3d(geo, r1 - r0)
        if geo.depthwise:
            col_d = scratch_floats(scratch, geo.k * band * out_w)
            bands = [(b0, min(b0 + band, r1)) for b0 in range(r0, r1, band)]
            cols_d = [
                col_d[: geo.k * (b1 - b0) * out_w].reshape(geo.k, (b1 - b0) * out_w) for b0, b1 in bands
            ]

            def run_depthwise():
                for n in range(geo.batch):
                    for (b0, b1), col in zip(bands, cols_d, strict=True):
                        depthwise3d(x, wp, y, col, n, c0, c1, b0, b1, spatial)
                        off = (n * geo.cout + c0) * plane + b0 * out_w
                        bias_act(flat, res, off, plane, c1 - c0, (b1 - b0) * out_w, bias, 0, act, alpha, beta)

            return run_depthwise
        cout_g, cin_g = geo.cout // geo.group, geo.cin // geo.group
        if not geo.pointwise:
            scratch = scratch_floats(scratch, geo.k * band * out_w)
        tasks = []
        for n in range(geo.batch):
            for grp in range(c0 // cout_g, -(-c1 // cout_g)):
                lo_c, hi_c = max(grp * cout_g, c0), min((grp + 1) * cout_g, c1)
                w_g = wp[lo_c - c0 : hi_c - c0]
                y_g = reshape_view(y[n, lo_c:hi_c], (hi_c - lo_c, plane))
                for b0 in range(r0, r1, band):
                    b1 = min(b0 + band, r1)
                    cols = slice(b0 * out_w, b1 * out_w)
                    if geo.pointwise:  # output row r reads input row r: the band is a view of the input
                        col = reshape_view(x[n, grp * cin_g : (grp + 1) * cin_g], (cin_g, plane))[:, cols]
                    else:
                        col = scratch[: geo.k * (b1 - b0) * out_w].reshape(geo.k, (b1 - b0) * out_w)
                    out = y_g[:, cols]
                    check_blas(w_g, col, out)
                    off = (n * geo.cout + lo_c) * plane + b0 * out_w
                    tasks.append((n, grp * cin_g, b0, b1, w_g, col, out, off, hi_c - lo_c, lo_c - c0))
        pointwise = geo.pointwise

        def run():
            for n, ci, b0, b1, w_g, col, out, off, n_rows, boff in tasks:
                if not pointwise:
                    im2col3d(x, n, ci, cin_g, col, b0, b1, spatial)
                np.matmul(w_g, col, out=out)
                bias_act(flat, res, off, plane, n_rows, out.shape[1], bias, boff, act, alpha, beta)

        return run

    def cin_of(self, x_shape) -> int:
        """The weight's input channels for an input of `x_shape` (bind sees the prepared weight)."""
        if len(x_shape) != 5 or x_shape[1] % self.group:
            raise ShapeError(f"Conv: input {x_shape} for a 3-D convolution of group {self.group}")
        return x_shape[1] // self.group

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float64)
        w = np.asarray(ins[1], dtype=np.float64)
        bias = ins[2] if len(ins) > 2 and ins[2] is not None else np.zeros(w.shape[0])
        g = self._geometry_of([x.shape, w.shape, None])
        xp = np.pad(x, ((0, 0), (0, 0), *zip(g.pad_begin, g.pad_end, strict=True)))
        y = np.zeros((g.batch, g.cout, *g.out))
        cin_g, cout_g = g.cin // g.group, g.cout // g.group
        for grp in range(g.group):
            xs = xp[:, grp * cin_g : (grp + 1) * cin_g]
            ws = w[grp * cout_g : (grp + 1) * cout_g]
            for taps in np.ndindex(*g.kernel):
                sel = tuple(
                    slice(t * d, t * d + (o - 1) * s + 1, s)
                    for t, d, o, s in zip(taps, g.dilation, g.out, g.stride, strict=True)
                )
                y[:, grp * cout_g : (grp + 1) * cout_g] += np.einsum(
                    "ncdhw,oc->nodhw",
                    xs[(slice(None), slice(None), *sel)],
                    ws[(slice(None), slice(None), *taps)],
                )
        y += np.asarray(bias, dtype=np.float64).reshape(1, -1, 1, 1, 1)
        if self.residual:
            y += np.asarray(ins[3], dtype=np.float64)
        return [reference_activation(y, self.activation, self.activation_alpha, self.activation_beta)]
