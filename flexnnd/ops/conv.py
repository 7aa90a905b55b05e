"""Conv (2-D, NCHW, float32) with a fused bias + activation epilogue.

Four paths, picked in bind() by shape (conv_geometry.Geometry), each in its own module, all
writing straight into the output and ending in the shared epilogue (epilogue.bias_act):
  pointwise  1×1, stride 1, no padding: the input already is the GEMM operand (no im2col);
  winograd   3×3, stride 1, dense, large enough: F(2×2, 3×3), 16 batched GEMMs on transformed
             tiles (2.25× fewer multiplies), in bands of tile rows and chunks of output channels;
  im2col     anything else that is not depthwise: im2col into scratch, then a BLAS matmul, per
             group and per band of output rows, so the scratch stays cache-sized; with a column
             stride (the 7x7/2 and 3x3/2 stems) im2col_strided splits input rows by phase first;
  depthwise  group == Cin == Cout: a direct numba kernel, one pass per output channel.
(pointwise and im2col in conv_im2col.py, winograd in conv_winograd.py, depthwise in conv_depthwise.py)
A band of output rows is also exactly what Part("rows", r0, r1) asks for, so the planner's input
slicing and the kernel's cache blocking are the same machinery. Part("channels", c0, c1) parts of
one conv share one im2col (or Winograd input transform) of the whole image (see shares_operand).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.activation import ACT_CODES, reference_activation
from flexnnd.ops.base import (
    COST_DEPTHWISE,
    COST_GEMM,
    COST_WINOGRAD,
    Axis,
    Op,
    Part,
    SliceAxis,
    internal,
    register,
)
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.conv_depthwise import bind_depthwise, bind_depthwise3x3, depthwise_scratch
from flexnnd.ops.conv_geometry import Geometry, band_rows, reference_conv, same_pads
from flexnnd.ops.conv_im2col import (
    IM2COL_BAND_BYTES,
    MIN_BAND_COLS,
    POINTWISE_BAND_BYTES,
    bind_gemm,
    im2col_floats,
)
from flexnnd.ops.conv_winograd import WinogradPlan, bind_winograd
from flexnnd.ops.epilogue import NO_BIAS


# ---- the op ---------------------------------------------------------------------------------------
@register
@dataclass(frozen=True)
class Conv(Op):
    """ONNX Conv, 2-D NCHW; W (and B) constant, W prepared as (Cout, Cin/group*kh*kw)."""

    op_type = "Conv"
    const_inputs = (1, 2)
    optional_inputs = (2,)

    auto_pad: str = "NOTSET"
    dilations: tuple[int, ...] = ()
    group: int = 1
    kernel_shape: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    activation: str = internal("")
    activation_alpha: float = internal(0.0)
    activation_beta: float = internal(0.0)
    # A fused residual Add: a fourth input, added before the activation (not for depthwise).
    residual: bool = internal(False)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        if len(consts) < 2 or consts[1] is None:
            raise UnsupportedOp(cls.op_type, node, opset, "weight W must be a constant")
        w = consts[1]
        if w.ndim == 5 and cls is Conv:
            from flexnnd.ops.conv3d import Conv3D  # 3-D convolutions: their own op, in ops/conv3d.py

            return Conv3D.from_onnx(attrs, consts, node, opset)
        if w.ndim != 4:
            raise UnsupportedOp(
                cls.op_type, node, opset, f"{w.ndim - 2}-D convolution (weight shape {w.shape})"
            )
        attrs = dict(attrs)
        # bind() sees only the prepared (Cout, K) weight: keep the kernel size in the op.
        attrs.setdefault("kernel_shape", tuple(int(d) for d in w.shape[2:]))
        return super().from_onnx(attrs, consts, node, opset)

    @classmethod
    def from_dict(cls, d):
        if cls is Conv and len(d.get("kernel_shape", ())) == 3:  # a saved Conv3D (ops/conv3d.py)
            from flexnnd.ops.conv3d import Conv3D

            return Conv3D.from_dict(d)
        return super().from_dict(d)

    def check(self, node: str, opset: int) -> None:
        def bad(why: str) -> UnsupportedOp:
            return UnsupportedOp(self.op_type, node, opset, why)

        for name, value, rank in (
            ("kernel_shape", self.kernel_shape, 2),
            ("strides", self.strides, 2),
            ("dilations", self.dilations, 2),
            ("pads", self.pads, 4),
        ):
            if value and len(value) != rank:
                raise bad(f"{len(value) * 2 // rank}-D convolution ({name}={list(value)})")
        if self.auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
            raise bad(f"auto_pad={self.auto_pad!r}")
        if any(v < 1 for v in (*self.kernel_shape, *self.strides, *self.dilations)) or self.group < 1:
            raise bad(f"kernel_shape/strides/dilations/group must be >= 1, got {self.to_dict()}")
        if any(p < 0 for p in self.pads):
            raise bad(f"negative pads {list(self.pads)}")
        if self.activation not in ACT_CODES:
            raise bad(f"fused activation {self.activation!r}")

    # ---- shapes ---------------------------------------------------------------------------------
    def geometry(self, x_shape, cout: int, kernel: tuple[int, int] | None = None) -> Geometry:
        if len(x_shape) != 4:
            raise UnsupportedOp(
                self.op_type, "?", None, f"{len(x_shape) - 2}-D convolution (input {x_shape})"
            )
        kernel = kernel or self.kernel_shape
        if len(kernel) != 2:
            raise ShapeError(f"Conv: kernel_shape unknown or not 2-D: {kernel}")
        batch, cin, height, width = (int(d) for d in x_shape)
        kh, kw = kernel
        sh, sw = self.strides or (1, 1)
        dh, dw = self.dilations or (1, 1)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            upper = self.auto_pad == "SAME_UPPER"
            pt, pb = same_pads(height, kh, sh, dh, upper)
            pl, pr = same_pads(width, kw, sw, dw, upper)
        elif self.auto_pad == "VALID":
            pt = pl = pb = pr = 0
        else:
            pt, pl, pb, pr = self.pads or (0, 0, 0, 0)
        out_h = (height + pt + pb - (kh - 1) * dh - 1) // sh + 1
        out_w = (width + pl + pr - (kw - 1) * dw - 1) // sw + 1
        if out_h < 1 or out_w < 1:
            raise ShapeError(
                f"Conv: empty output {out_h}x{out_w} for input {x_shape}, kernel {kernel}, "
                f"pads {(pt, pl, pb, pr)}, strides {(sh, sw)}, dilations {(dh, dw)}"
            )
        if cin % self.group or cout % self.group:
            raise ShapeError(
                f"Conv: group {self.group} does not divide Cin {cin} and Cout {cout} (input {x_shape})"
            )
        return Geometry(
            batch, cin, height, width, cout, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, out_h, out_w, self.group
        )

    def _geometry_of(self, shapes) -> Geometry:
        x, w = shapes[0], shapes[1]
        if x is None or len(x) != 4:
            rank = None if x is None else len(x)
            raise UnsupportedOp(self.op_type, "?", None, f"input of rank {rank} (only 2-D NCHW convolution)")
        if w is None or len(w) != 4:
            raise ShapeError(f"Conv: weight must have rank 4, got shape {w} (input {x})")
        if self.kernel_shape and tuple(self.kernel_shape) != tuple(w[2:]):
            raise ShapeError(f"Conv: kernel_shape {list(self.kernel_shape)} does not match weight {w}")
        return self._channels_checked(self.geometry(x, int(w[0]), (int(w[2]), int(w[3]))), shapes)

    def _channels_checked(self, geo, shapes):
        """`geo`, once the weight's input channels and the bias agree with it (2-D and 3-D alike)."""
        x, w = shapes[0], shapes[1]
        if w[1] * self.group != geo.cin:
            raise ShapeError(
                f"Conv: input {x} has {geo.cin} channels but weight {w} with group {self.group} "
                f"expects {w[1] * self.group}"
            )
        bias = shapes[2] if len(shapes) > 2 else None
        if bias is not None and tuple(bias) != (geo.cout,):
            raise ShapeError(f"Conv: bias shape {bias} does not match weight {w} (want ({geo.cout},))")
        return geo

    def infer(self, shapes, consts):
        geo = self._geometry_of(shapes)
        if len(shapes) > 2 and shapes[2] is not None and len(consts) > 2 and consts[2] is None:
            raise UnsupportedOp(self.op_type, "?", None, "bias B must be a constant")
        return [(geo.batch, geo.cout, geo.out_h, geo.out_w)]

    def prepare(self, consts):
        out = list(consts)
        w = consts[1]
        out[1] = np.ascontiguousarray(np.asarray(w, dtype=np.float32).reshape(w.shape[0], -1))
        if len(consts) > 2 and consts[2] is not None:
            out[2] = np.ascontiguousarray(consts[2], dtype=np.float32).reshape(-1)
        return out

    def _part_range(self, geo: Geometry, part: Part | None) -> tuple[int, int, int, int]:
        """(r0, r1, c0, c1): the output rows and channels that `part` computes."""
        r0, r1, c0, c1 = 0, geo.out_h, 0, geo.cout
        if part is None:
            return r0, r1, c0, c1
        if part.axis is Axis.ROWS:
            r0, r1 = part.start, part.stop
            limit = geo.out_h
        elif part.axis is Axis.CHANNELS:
            c0, c1 = part.start, part.stop
            limit = geo.cout
            per_group = geo.cout // geo.group
            if geo.group > 1 and not geo.depthwise and (c0 % per_group or c1 % per_group):
                raise ValueError(
                    f"Conv: channel part [{c0}, {c1}) does not align to groups of {per_group} channels"
                )
        else:
            raise ValueError(f"Conv: cannot slice along {part.axis!r}")
        if not 0 <= part.start < part.stop <= limit:
            raise ValueError(f"Conv: part {part} outside [0, {limit})")
        return r0, r1, c0, c1

    def _band(self, geo: Geometry, rows: int) -> int:
        """Output rows per im2col / pointwise band."""
        if geo.pointwise:
            per_group_out = geo.cout // geo.group
            row_bytes = (geo.cin // geo.group + per_group_out) * geo.width * 4
            return band_rows(rows, row_bytes, geo.width, POINTWISE_BAND_BYTES, MIN_BAND_COLS)
        return band_rows(rows, geo.k * geo.out_w * 4, geo.out_w, IM2COL_BAND_BYTES, MIN_BAND_COLS)

    def _shared(self, geo: Geometry, part: Part | None) -> bool:
        """Whether `part` is a channel part sharing the conv's im2col (or Winograd input transform)
        with the others: batch 1, not grouped, and the whole image one band (see shares_operand)."""
        if part is None or part.axis is not Axis.CHANNELS or geo.batch != 1 or geo.group != 1:
            return False
        if geo.winograd:
            return 2 * WinogradPlan.of(geo, geo.out_h, geo.cout).band >= geo.out_h
        return not geo.pointwise and self._band(geo, geo.out_h) == geo.out_h

    def scratch_bytes(self, shapes, part=None):
        geo = self._geometry_of(shapes)
        r0, r1, c0, c1 = self._part_range(geo, part)
        if geo.depthwise_direct:
            return 0
        if geo.depthwise:
            g = geo
            return 4 * sum(depthwise_scratch(r1 - r0, g.out_w, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw))
        if geo.winograd:
            return 4 * sum(WinogradPlan.of(geo, r1 - r0, c1 - c0, self._shared(geo, part)).buffers.values())
        if geo.pointwise:
            return 0
        return 4 * im2col_floats(geo, self._band(geo, r1 - r0))

    def flops(self, shapes, out_shapes):
        geo = self._geometry_of(shapes)
        return 2 * geo.batch * geo.cout * geo.out_h * geo.out_w * geo.k

    # ---- what the planner and the simulator ask --------------------------------------------------
    def slice_axes(self, shapes, out_shapes):
        x, out = shapes[0], out_shapes[0]
        axes = []
        # A grouped conv is cut by channels only when each part is whole groups of one channel.
        if self.group == 1 or (x is not None and self.group == x[1]):
            axes.append(SliceAxis(Axis.CHANNELS, int(shapes[1][0])))
        if len(out) == 4:
            axes.append(SliceAxis(Axis.ROWS, int(out[2]), int(out[3])))
        return tuple(axes)

    def shares_operand(self, shapes, part):
        return self._shared(self.geometry(shapes[0], shapes[1][0]), part)

    def cost_kind(self, shapes):
        geo = self.geometry(shapes[0], shapes[1][0])
        return COST_DEPTHWISE if geo.depthwise else COST_WINOGRAD if geo.winograd else COST_GEMM

    def shared_bytes(self, shapes):
        """The im2col matrix of a GEMM conv, the transformed input of a Winograd one."""
        geo = self.geometry(shapes[0], shapes[1][0])
        if geo.depthwise:
            return 0  # each channel reads only its own plane
        pixels = geo.batch * geo.out_h * geo.out_w
        # Winograd F(2x2,3x3): 16 transformed values per 2x2 output tile and input channel.
        return 4 * (4 * geo.cin * pixels if geo.winograd else geo.k * geo.group * pixels)

    def dense_flops(self, shapes, out_shapes):
        """A depthwise conv's FLOPs times its strides: its kernel's time follows the input's pixels."""
        geo = self.geometry(shapes[0], shapes[1][0])
        if not geo.depthwise:
            return 0
        return self.flops(shapes, out_shapes) * geo.sh * geo.sw

    # ---- execution ------------------------------------------------------------------------------
    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, wp, y = ins[0], ins[1], outs[0]
        bias = ins[2] if len(ins) > 2 and ins[2] is not None else NO_BIAS
        geo = self.geometry(x.shape, y.shape[1])
        r0, r1, c0, c1 = self._part_range(geo, part)
        rows, chans = (r0, r1), (c0, c1)
        want_y = (geo.batch, geo.cout, geo.out_h, geo.out_w)
        want_w = (chans[1] - chans[0], geo.k)
        if tuple(y.shape) != want_y or tuple(wp.shape) != want_w or bias.size not in (0, want_w[0]):
            raise ShapeError(
                f"Conv.bind: input {x.shape}, weight {wp.shape}, bias {bias.shape}, output {y.shape}; "
                f"want weight {want_w}, output {want_y} for part {part}"
            )
        for name, a in (("input", x), ("weight", wp), ("bias", bias), ("output", y)):
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                raise ValueError(f"Conv.bind: {name} must be C-contiguous float32, got {a.dtype} {a.strides}")
        epilogue = (ACT_CODES[self.activation], float(self.activation_alpha), float(self.activation_beta))
        res = NO_BIAS
        if self.residual:
            res = reshape_view(ins[3], (-1,))
            if ins[3].shape != y.shape or geo.depthwise:
                raise ShapeError(
                    f"Conv.bind: residual {ins[3].shape} for output {y.shape} (depthwise {geo.depthwise})"
                )
        if geo.depthwise_direct:
            return bind_depthwise3x3(geo, x, wp, bias, y, rows, chans, epilogue)
        if geo.depthwise:
            return bind_depthwise(geo, x, wp, bias, y, scratch, rows, chans, epilogue)
        shared = self._shared(geo, part)
        if reuse and not (shared and part.start > 0):
            raise ValueError(
                f"Conv.bind: part {part} of {geo.cout} channels cannot reuse an operand: only a channel "
                f"part after the first of a conv whose parts share their im2col (shares_operand) can"
            )
        if geo.winograd:
            return bind_winograd(geo, x, wp, bias, y, res, scratch, rows, chans, epilogue, shared, reuse)
        band = self._band(geo, rows[1] - rows[0])
        return bind_gemm(geo, band, x, wp, bias, y, res, scratch, rows, chans, epilogue, reuse)

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float64)
        w = np.asarray(ins[1], dtype=np.float64)
        bias = ins[2] if len(ins) > 2 and ins[2] is not None else np.zeros(w.shape[0])
        g = self._geometry_of([x.shape, w.shape, None])
        y = reference_conv(x, w, g)
        y += np.asarray(bias, dtype=np.float64).reshape(1, -1, 1, 1)
        if self.residual:
            y += np.asarray(ins[3], dtype=np.float64)
        return [reference_activation(y, self.activation, self.activation_alpha, self.activation_beta)]
