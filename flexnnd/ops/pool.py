"""Pooling: MaxPool, AveragePool, LpPool (1-D, 2-D and 3-D); GlobalAveragePool, GlobalMaxPool,
GlobalLpPool (any rank).

Output sizes follow onnxruntime, which follows the spec plus one rule: with ceil_mode, a window
that would start beyond the input and its left padding is dropped. Padded cells never win a max;
an average divides by its valid cells (count_include_pad=0) or by its cells inside the explicitly
padded input (count_include_pad=1: cells that ceil_mode adds beyond the pads do not count).

The generic kernels split each output row into interior columns, whose windows lie inside the
input (a branch-free loop over the output width that vectorizes), and the few border columns; the
valid kernel rows are computed once per output row. MaxPool without dilation has two faster
kernels: max_pool3x3_same (GoogLeNet's 3x3 stride-1 pools: flat loops over chunks of planes) and
max_pool2d_rows (all others: a max over rows into one padded row buffer, then over columns).

A 1-D pool is the 2-D one of height 1. A 3-D pool is separable, since a window is a box and its
divisor the product of per-axis counts: the 2-D kernels pool every depth slice into scratch, then
pool_depth reduces over the depth taps (no kernel specialized per rank).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.graph.ir import Shape
from flexnnd.ops.base import Kernel, Op, register, require_rank
from flexnnd.ops.jit import kernel
from flexnnd.ops.tensor import reshaped

AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


@dataclass(frozen=True)
class Window:
    """The geometry of one spatial axis of a pooling."""

    size: int  # input size
    out: int  # output size
    kernel: int
    stride: int
    dilation: int
    pad_begin: int
    pad_end: int  # explicit (or auto) padding; ceil_mode may add windows beyond it


def window(size, kernel, stride, dilation, pad_begin, pad_end, auto_pad, ceil_mode, op="pool") -> Window:
    """One axis' output size and pads, as onnxruntime computes them."""
    extent = dilation * (kernel - 1) + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = -(-size // stride)
        total = (out - 1) * stride + extent - size
        if total < 0:
            # onnxruntime's MaxPool rejects this; its AveragePool crops the input instead.
            raise ShapeError(
                f"{op}: auto_pad {auto_pad} gives negative padding {total} (kernel {kernel} < stride "
                f"{stride} on input size {size})"
            )
        pad_begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        return Window(size, out, kernel, stride, dilation, pad_begin, total - pad_begin)
    if auto_pad == "VALID":
        pad_begin = pad_end = 0
    span = size + pad_begin + pad_end - extent
    if span < 0:  # onnxruntime truncates toward zero here and may still give one output
        raise ShapeError(
            f"{op}: window of {extent} (kernel {kernel}, dilation {dilation}) does not fit input size "
            f"{size} with pads ({pad_begin}, {pad_end})"
        )
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1
    return Window(size, out, kernel, stride, dilation, pad_begin, pad_end)


# ---- kernels ------------------------------------------------------------------------------------


@kernel(inline="always")
def _taps(start, dilation, kernel, size):
    """Kernel taps [lo, hi) whose cell start + tap*dilation lies in [0, size)."""
    lo = max(0, (dilation - 1 - start) // dilation)
    hi = min(kernel, (size - 1 - start) // dilation + 1)
    return lo, max(lo, hi)


@kernel(inline="always")
def _interior(size, out, kernel, stride, dilation, pad_begin):
    """Output columns [lo, hi) whose whole window lies inside the input."""
    lo = min(out, (pad_begin + stride - 1) // stride)
    hi = min(out, (size - 1 - dilation * (kernel - 1) + pad_begin) // stride + 1)
    return lo, max(lo, hi)


@kernel(inline="always")
def _row_max(acc, src, n, stride):
    """acc[i] = max(acc[i], src[i * stride]) for i < n; unit and 2 strides get their own loop
    (a constant stride vectorizes, a variable one does not)."""
    if stride == 1:
        for i in range(n):
            acc[i] = max(acc[i], src[i])
    elif stride == 2:
        for i in range(n):
            acc[i] = max(acc[i], src[2 * i])
    else:
        for i in range(n):
            acc[i] = max(acc[i], src[i * stride])


@kernel(inline="always")
def _row_sum(acc, src, n, stride):
    """acc[i] += src[i * stride] for i < n (see _row_max)."""
    if stride == 1:
        for i in range(n):
            acc[i] += src[i]
    elif stride == 2:
        for i in range(n):
            acc[i] += src[2 * i]
    else:
        for i in range(n):
            acc[i] += src[i * stride]


@kernel
def max_pool2d(x, y, kh, kw, sh, sw, dh, dw, pad_top, pad_left):
    """y[p] = max pooling of x[p]: x (P, H, W), y (P, OH, OW), both C-contiguous."""
    planes, height, width = x.shape
    out_h, out_w = y.shape[1], y.shape[2]
    sw = max(sw, 1)  # tells LLVM that i * sw >= 0: no negative-index wraparound in the hot loop
    c_lo, c_hi = _interior(width, out_w, kw, sw, dw, pad_left)
    lowest = np.float32(-np.inf)
    for p in range(planes):
        for oh in range(out_h):
            h0 = oh * sh - pad_top
            r_lo, r_hi = _taps(h0, dh, kh, height)
            yrow = y[p, oh]
            for ow in range(out_w):
                yrow[ow] = lowest
            inner = yrow[c_lo:c_hi]
            for r in range(r_lo, r_hi):
                xrow = x[p, h0 + r * dh]
                for c in range(kw):
                    _row_max(inner, xrow[c_lo * sw + c * dw - pad_left :], c_hi - c_lo, sw)
                for k in range(c_lo + out_w - c_hi):  # the border columns
                    ow = k if k < c_lo else k - c_lo + c_hi
                    w0 = ow * sw - pad_left
                    t_lo, t_hi = _taps(w0, dw, kw, width)
                    m = yrow[ow]
                    for c in range(t_lo, t_hi):
                        m = max(m, xrow[w0 + c * dw])
                    yrow[ow] = m


# The max of two cells; `a if a > b else b` compiles to one vmaxps (a NaN in `a` is dropped).
@kernel(inline="always")
def _larger(a, b):
    return a if a > b else b


# LLVM runs a vectorized loop 32 floats at a time and the rest one by one; short rows (7..56 wide)
# are mostly rest, so the row kernel computes whole 32-float spans and lets the excess spill
# into the next row (recomputed after) wherever that stays inside the tensor.
SPAN = 32


@kernel(inline="always")
def _span(n):
    return (n + SPAN - 1) // SPAN * SPAN


def row_buffer_length(width: int, out_w: int, kw: int, sw: int, pad_left: int) -> int:
    """Cells of max_pool2d_rows' row buffer: the padded input row, or all that spans read."""
    spanned = -(-out_w // SPAN) * SPAN
    return max(pad_left + -(-width // SPAN) * SPAN, (spanned - 1) * sw + kw)


@kernel
def max_pool2d_rows(x, y, row, height, width, out_h, out_w, kh, kw, sh, sw, pad_top, pad_left):
    """Max pooling without dilation, one output row at a time: the max over the window's valid
    input rows goes into `row` between -inf pads, then each output is a max over kw cells of it.

    x: (P*H*W,), y: (P*OH*OW,) flat and C-contiguous; row: (row_buffer_length(...),). Every
    window must overlap the input.
    """
    lowest = np.float32(-np.inf)
    plane = height * width
    planes = x.shape[0] // plane if plane > 0 else 0
    reach = (out_w - 1) * sw + kw  # the cells the windows read, pads included
    span_w = _span(width)
    span_out = _span(out_w)
    for i in range(row.shape[0]):
        row[i] = lowest
    cells = row[pad_left:]
    # Unsigned offsets instead of per-row slices: a slice costs tens of ns, a signed offset a
    # wraparound check that stops vectorization.
    u = np.uint64
    w = u(width)
    two = u(2)
    s = u(sw)
    for p in range(planes):
        for oh in range(out_h):
            h0 = oh * sh - pad_top
            r_lo = max(0, -h0)
            r_hi = min(kh, height - h0)
            base = p * plane + (h0 + r_lo) * width
            taps = r_hi - r_lo
            n = u(span_w if base + (taps - 1) * width + span_w <= x.shape[0] else width)
            a = u(base)
            if taps == 3:
                for i in range(n):
                    cells[i] = _larger(_larger(x[a + i], x[a + w + i]), x[a + two * w + i])
            elif taps == 2:
                for i in range(n):
                    cells[i] = _larger(x[a + i], x[a + w + i])
            else:
                for i in range(n):
                    cells[i] = x[a + i]
                for r in range(1, taps):
                    b = a + u(r) * w
                    for i in range(n):
                        cells[i] = _larger(cells[i], x[b + i])
            for i in range(pad_left + width, reach):  # the spill overwrote the right pads
                row[i] = lowest
            start = (p * out_h + oh) * out_w
            m = u(span_out if start + span_out <= y.shape[0] else out_w)
            o = u(start)
            if sw == 2 and kw == 3:
                for i in range(m):
                    j = two * i
                    y[o + i] = _larger(_larger(row[j], row[j + u(1)]), row[j + two])
            elif sw == 2 and kw == 2:
                for i in range(m):
                    j = two * i
                    y[o + i] = _larger(row[j], row[j + u(1)])
            else:
                for i in range(m):
                    y[o + i] = row[i * s]
                for c in range(1, kw):
                    src = row[c:]
                    for i in range(m):
                        y[o + i] = _larger(y[o + i], src[i * s])


# 3x3 stride-1 "same" pooling works on chunks of whole planes of about this many floats.
SAME3_CHUNK = 2048


def same3_chunk(planes: int, plane: int) -> int:
    return plane * max(1, min(planes, SAME3_CHUNK // max(plane, 1)))


@kernel
def max_pool3x3_same(x, y, tmp, code, height, width):
    """3x3 max pooling, stride 1, pads 1, output as large as the input (GoogLeNet's branch pools).

    x, y: (P*H*W,) flat; tmp: (chunk + 2,) floats; code: (chunk,) uint8, where chunk is a whole
    number of planes. A chunk of planes is done as two flat loops (a max over rows into tmp, then
    over columns into y); `code` says per cell which neighbours lie in its plane, so the loops
    have no per-row set-up and vectorize.
    """
    n = x.shape[0]
    plane = height * width
    chunk = code.shape[0]
    for r in range(height):  # bits: 1 row above, 2 row below, 4 column left, 8 column right
        vertical = (1 if r > 0 else 0) | (2 if r < height - 1 else 0)
        cells = code[r * width : (r + 1) * width]
        for c in range(width):
            cells[c] = vertical | (4 if c > 0 else 0) | (8 if c < width - 1 else 0)
    first = code[0:plane]
    for start in range(plane, chunk, plane):
        dst = code[start : start + plane]
        for i in range(plane):
            dst[i] = first[i]
    centre = tmp[1:]
    right = tmp[2:]
    for c0 in range(0, n, chunk):
        m = min(chunk, n - c0)
        # The tensor's first and last rows: their masked neighbour would lie outside x.
        lo = width if c0 == 0 else 0
        hi = m - width if c0 + m == n else m
        if lo > 0:
            below = x[width:] if height > 1 else x
            for i in range(width):
                centre[i] = _larger(x[i], below[i])
        if hi < m:
            above = x[n - 2 * width :] if height > 1 else x[n - width :]
            last = x[n - width :]
            dst = centre[m - width :]
            for i in range(width):
                dst[i] = _larger(above[i], last[i])
        above = x[c0 + lo - width :]
        mid = x[c0 + lo :]
        below = x[c0 + lo + width :]
        dst = centre[lo:]
        bits = code[lo:]
        for j in range(hi - lo):
            v = mid[j]
            u = above[j]
            d = below[j]
            f = bits[j]
            u = u if f & 1 else v
            d = d if f & 2 else v
            dst[j] = _larger(_larger(v, u), d)
        out = y[c0:]
        for i in range(m):
            v = centre[i]
            left = tmp[i]
            r = right[i]
            f = code[i]
            left = left if f & 4 else v
            r = r if f & 8 else v
            out[i] = _larger(_larger(v, left), r)


@kernel
def average_pool2d(x, y, kh, kw, sh, sw, dh, dw, pad_top, pad_left, padded_h, padded_w, include_pad):
    """y[p] = average pooling of x[p]: x (P, H, W), y (P, OH, OW), both C-contiguous.

    padded_h/padded_w: the input size with its explicit pads, the extent counted when include_pad.
    """
    planes, height, width = x.shape
    out_h, out_w = y.shape[1], y.shape[2]
    sw = max(sw, 1)
    c_lo, c_hi = _interior(width, out_w, kw, sw, dw, pad_left)
    zero = np.float32(0.0)
    for p in range(planes):
        for oh in range(out_h):
            h0 = oh * sh - pad_top
            r_lo, r_hi = _taps(h0, dh, kh, height)
            if include_pad:
                n_lo, n_hi = _taps(h0 + pad_top, dh, kh, padded_h)
                rows = n_hi - n_lo
            else:
                rows = r_hi - r_lo
            yrow = y[p, oh]
            for ow in range(out_w):
                yrow[ow] = zero
            inner = yrow[c_lo:c_hi]
            for r in range(r_lo, r_hi):
                xrow = x[p, h0 + r * dh]
                for c in range(kw):
                    _row_sum(inner, xrow[c_lo * sw + c * dw - pad_left :], c_hi - c_lo, sw)
                for k in range(c_lo + out_w - c_hi):  # the border columns
                    ow = k if k < c_lo else k - c_lo + c_hi
                    w0 = ow * sw - pad_left
                    t_lo, t_hi = _taps(w0, dw, kw, width)
                    s = yrow[ow]
                    for c in range(t_lo, t_hi):
                        s += xrow[w0 + c * dw]
                    yrow[ow] = s
            # Interior columns count kw cells; an empty window (all padding) averages to 0.
            scale = np.float32(1.0) / np.float32(rows * kw) if rows > 0 else zero
            for i in range(c_hi - c_lo):
                inner[i] *= scale
            for k in range(c_lo + out_w - c_hi):
                ow = k if k < c_lo else k - c_lo + c_hi
                w0 = ow * sw - pad_left
                if include_pad:
                    t_lo, t_hi = _taps(w0 + pad_left, dw, kw, padded_w)
                else:
                    t_lo, t_hi = _taps(w0, dw, kw, width)
                cells = rows * (t_hi - t_lo)
                yrow[ow] = yrow[ow] / np.float32(cells) if cells > 0 else zero


@kernel
def global_average_pool(x, y):
    """y[p] = mean of x[p, :]: x (P, S), y (P,)."""
    planes, size = x.shape
    for p in range(planes):
        s = np.float32(0.0)
        for i in range(size):
            s += x[p, i]
        y[p] = s / np.float32(size)


@kernel
def global_max_pool(x, y):
    """y[p] = max of x[p, :]: x (P, S), y (P,)."""
    planes, size = x.shape
    for p in range(planes):
        m = x[p, 0]
        for i in range(1, size):
            m = max(m, x[p, i])
        y[p] = m


@kernel
def pool_depth(t, y, kd, sd, dd, pad_front, padded_d, is_max, include_pad):
    """y[p, od] = max or mean of t[p, d] over the depth taps d of window od: t (P, D, S) holds a 3-D
    pool's per-slice 2-D results (means already), y (P, OD, S); both C-contiguous.

    padded_d: the depth with its explicit pads, the extent counted when include_pad.
    """
    planes, depth, size = t.shape
    out_d = y.shape[1]
    lowest, zero = np.float32(-np.inf), np.float32(0.0)
    for p in range(planes):
        for od in range(out_d):
            d0 = od * sd - pad_front
            lo, hi = _taps(d0, dd, kd, depth)
            yrow = y[p, od]
            for i in range(size):
                yrow[i] = lowest if is_max else zero
            for r in range(lo, hi):
                if is_max:
                    _row_max(yrow, t[p, d0 + r * dd], size, 1)
                else:
                    _row_sum(yrow, t[p, d0 + r * dd], size, 1)
            if not is_max:
                if include_pad:
                    n_lo, n_hi = _taps(d0 + pad_front, dd, kd, padded_d)
                    cells = n_hi - n_lo
                else:
                    cells = hi - lo
                scale = np.float32(1.0) / np.float32(cells) if cells > 0 else zero
                for i in range(size):
                    yrow[i] *= scale


@kernel
def lp_power(x, t, p):
    """t = |x|**p (flat)."""
    if p == 2:
        for i in range(x.shape[0]):
            t[i] = x[i] * x[i]
    elif p == 1:
        for i in range(x.shape[0]):
            t[i] = abs(x[i])
    else:
        e = np.float32(p)
        for i in range(x.shape[0]):
            t[i] = abs(x[i]) ** e


@kernel
def lp_root(y, scale, p):
    """y = (y * scale)**(1/p) in place (flat): a sum from a mean over `scale` cells."""
    s = np.float32(scale)
    if p == 2:
        for i in range(y.shape[0]):
            y[i] = np.sqrt(y[i] * s)
    elif p == 1:
        for i in range(y.shape[0]):
            y[i] = y[i] * s
    else:
        e = np.float32(1.0 / p)
        for i in range(y.shape[0]):
            y[i] = (y[i] * s) ** e


@kernel
def global_lp_pool(x, y, p):
    """y[p] = (sum of |x[p, :]|**p)**(1/p): x (P, S), y (P,); summed in float64."""
    planes, size = x.shape
    for q in range(planes):
        s = 0.0
        for i in range(size):
            s += abs(np.float64(x[q, i])) ** p
        y[q] = s ** (1.0 / p)


# ---- ops ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pool(Op):
    """Shared attributes and geometry of MaxPool and AveragePool (1-D or 2-D)."""

    auto_pad: str = "NOTSET"
    ceil_mode: int = 0
    dilations: tuple[int, ...] = ()
    kernel_shape: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()

    def check(self, node, opset):
        def bad(why: str) -> UnsupportedOp:
            return UnsupportedOp(self.op_type, node, opset, why)

        rank = len(self.kernel_shape)
        if rank not in (1, 2, 3):
            raise bad(f"kernel_shape {self.kernel_shape}: only 1-D, 2-D and 3-D pooling")
        for name, value, n in (
            ("strides", self.strides, rank),
            ("dilations", self.dilations, rank),
            ("pads", self.pads, 2 * rank),
        ):
            if value and len(value) != n:
                raise bad(f"{name} {value} does not match kernel_shape {self.kernel_shape}")
        if self.auto_pad not in AUTO_PADS:
            raise bad(f"auto_pad {self.auto_pad!r}")
        if min(self.kernel_shape + self.strides + self.dilations) < 1 or min(self.pads, default=0) < 0:
            raise bad(f"kernel_shape/strides/dilations must be >= 1 and pads >= 0, got {self}")
        if self.auto_pad == "NOTSET" and any(
            p >= self.kernel_shape[i % rank] for i, p in enumerate(self.pads)
        ):
            raise bad(f"pads {self.pads} must be smaller than kernel_shape {self.kernel_shape}")
        if self.auto_pad.startswith("SAME") and any(d != 1 for d in self.dilations):
            # onnxruntime and the spec disagree on SAME padding with dilation.
            raise bad(f"auto_pad {self.auto_pad} with dilations {self.dilations}")

    def axes(self, shape: Shape) -> list[Window]:
        """The geometry of each spatial axis for an input of `shape`."""
        rank = len(self.kernel_shape)
        require_rank(self.op_type, shape, (rank + 2,))
        spatial = tuple(shape[2:])
        strides = self.strides or (1,) * rank
        dilations = self.dilations or (1,) * rank
        pads = self.pads or (0,) * (2 * rank)
        return [
            window(
                spatial[i],
                self.kernel_shape[i],
                strides[i],
                dilations[i],
                pads[i],
                pads[i + rank],
                self.auto_pad,
                self.ceil_mode,
                f"{self.op_type} on input {tuple(shape)}",
            )
            for i in range(rank)
        ]

    def windows(self, shape: Shape) -> tuple[Window, Window]:
        """(rows, columns) geometry for an input of `shape`; a 1-D pool has one row, a 3-D pool's
        are its last two axes."""
        axes = self.axes(shape)
        if len(axes) == 1:
            axes.insert(0, Window(1, 1, 1, 1, 1, 0, 0))
        return axes[-2], axes[-1]

    def plane_op(self, shape: Shape) -> tuple[_Pool, Shape, Window]:
        """A 3-D pool's 2-D pool over (H, W) with its pads resolved, the (N*C*D, 1, H, W) shape it
        pools, and the depth axis' geometry."""
        depth, rows, cols = self.axes(shape)
        op = replace(
            self,
            auto_pad="NOTSET",
            kernel_shape=(rows.kernel, cols.kernel),
            strides=(rows.stride, cols.stride),
            dilations=(rows.dilation, cols.dilation),
            pads=(rows.pad_begin, cols.pad_begin, rows.pad_end, cols.pad_end),
        )
        return op, (shape[0] * shape[1] * depth.size, 1, rows.size, cols.size), depth

    def depth_scratch(self, shape: Shape) -> tuple[int, int]:
        """A 3-D pool's scratch: (floats of its per-slice 2-D results, rounded up to 64 bytes; bytes of
        its 2-D pool's own scratch)."""
        op, flat, _ = self.plane_op(shape)
        rows, cols = op.windows(flat)
        return -(-flat[0] * rows.out * cols.out // 16) * 16, op.scratch_bytes([flat])

    def bind_depth(self, ins, outs, scratch) -> Kernel:
        """A 3-D pool: the 2-D pool of every depth slice into scratch, then pool_depth over depth."""
        x, y = ins[0], outs[0]
        op, flat, depth = self.plane_op(x.shape)
        rows, cols = op.windows(flat)
        floats, plane_bytes = self.depth_scratch(x.shape)
        if scratch is None or scratch.size * 4 < floats * 4 + plane_bytes:
            raise ValueError(f"{self.op_type}.bind: scratch too small for input {x.shape}")
        scratch = reshaped(scratch, (-1,))
        slices = reshaped(scratch[: flat[0] * rows.out * cols.out], (flat[0], 1, rows.out, cols.out))
        plane_scratch = scratch[floats:] if plane_bytes else None
        pool_planes = op.bind([reshaped(x, flat)], [slices], plane_scratch)
        planes = x.shape[0] * x.shape[1]
        t = reshaped(slices, (planes, depth.size, rows.out * cols.out))
        yd = reshaped(y, (planes, depth.out, rows.out * cols.out))
        is_max = isinstance(self, MaxPool)
        include = bool(getattr(self, "count_include_pad", 0))
        padded = depth.size + depth.pad_begin + depth.pad_end
        geometry = (depth.kernel, depth.stride, depth.dilation, depth.pad_begin, padded, is_max, include)

        def run():
            pool_planes()
            pool_depth(t, yd, *geometry)

        return run

    def infer(self, shapes, consts):
        shape = tuple(shapes[0])
        return [shape[:2] + tuple(w.out for w in self.axes(shape))]

    def flops(self, shapes, out_shapes):
        return int(np.prod(out_shapes[0], dtype=np.int64)) * int(np.prod(self.kernel_shape))

    def planes(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, Window, Window]:
        rows, cols = self.windows(x.shape)
        planes = x.shape[0] * x.shape[1]
        return (
            reshaped(x, (planes, rows.size, cols.size)),
            reshaped(y, (planes, rows.out, cols.out)),
            rows,
            cols,
        )

    def reference_pool(self, x: np.ndarray, is_max: bool, include_pad: bool) -> np.ndarray:
        """Pad explicitly (and as far as ceil_mode reaches), then reduce over the kernel taps."""
        x = np.asarray(x, dtype=np.float32)
        axes = self.axes(x.shape)
        full = []
        for w in axes:
            reach = (w.out - 1) * w.stride + w.dilation * (w.kernel - 1) + 1
            full.append(max(w.size + w.pad_begin + w.pad_end, reach))
        fill = -np.inf if is_max else 0.0
        padded = np.full(x.shape[:2] + tuple(full), fill, dtype=np.float32)
        valid = np.zeros(tuple(full), dtype=np.float32)  # which cells count in the divisor
        inside = tuple(slice(w.pad_begin, w.pad_begin + w.size) for w in axes)
        padded[(..., *inside)] = x
        if include_pad:
            valid[tuple(slice(0, w.size + w.pad_begin + w.pad_end) for w in axes)] = 1
        else:
            valid[inside] = 1
        acc = np.full((*x.shape[:2], *(w.out for w in axes)), fill, dtype=np.float32)
        count = np.zeros(tuple(w.out for w in axes), dtype=np.float32)
        for taps in np.ndindex(*(w.kernel for w in axes)):
            sel = tuple(
                slice(t * w.dilation, t * w.dilation + (w.out - 1) * w.stride + 1, w.stride)
                for t, w in zip(taps, axes, strict=True)
            )
            if is_max:
                np.maximum(acc, padded[(..., *sel)], out=acc)
            else:
                acc += padded[(..., *sel)]
                count += valid[sel]
        if not is_max:
            acc = np.divide(acc, count, out=np.zeros_like(acc), where=count > 0)
        return acc


@register
@dataclass(frozen=True)
class MaxPool(_Pool):
    """MaxPool. The optional second output (Indices) is not supported: the importer rejects a
    MaxPool node with two outputs (`from_onnx` does not see outputs). storage_order only
    concerns Indices and is accepted and ignored. A window made only of padding (possible with
    dilation) gives -inf, where onnxruntime gives the lowest finite float."""

    op_type = "MaxPool"
    storage_order: int = 0

    def _separable(self, shape: Shape) -> bool:
        """No dilation and every window overlapping the input: max_pool2d_rows."""
        rows, cols = self.windows(shape)
        return rows.dilation == cols.dilation == 1 and all(
            (w.out - 1) * w.stride - w.pad_begin < w.size and w.kernel > w.pad_begin for w in (rows, cols)
        )

    def _same3(self, shape: Shape) -> bool:
        """3x3, stride 1, pads 1, output as large as the input: max_pool3x3_same."""
        return all(
            (w.kernel, w.stride, w.dilation, w.pad_begin, w.out) == (3, 1, 1, 1, w.size) and w.size > 0
            for w in self.windows(shape)
        )

    def _same3_scratch(self, shape: Shape) -> tuple[int, int]:
        """(tmp floats, code floats) of max_pool3x3_same."""
        rows, cols = self.windows(shape)
        chunk = same3_chunk(shape[0] * shape[1], rows.size * cols.size)
        return chunk + 2, -(-chunk // 4)

    def scratch_bytes(self, shapes, part=None):
        if len(self.kernel_shape) == 3:
            floats, plane_bytes = self.depth_scratch(shapes[0])
            return floats * 4 + plane_bytes
        if self._same3(shapes[0]):
            return sum(self._same3_scratch(shapes[0])) * 4
        if not self._separable(shapes[0]):
            return 0
        _, cols = self.windows(shapes[0])
        return row_buffer_length(cols.size, cols.out, cols.kernel, cols.stride, cols.pad_begin) * 4

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if len(self.kernel_shape) == 3:
            return self.bind_depth(ins, outs, scratch)
        x, y, rows, cols = self.planes(ins[0], outs[0])
        pads = (rows.pad_begin, cols.pad_begin)
        flat_x, flat_y = reshaped(x, (-1,)), reshaped(y, (-1,))
        if self._same3(ins[0].shape):
            tmp_floats, code_floats = self._same3_scratch(ins[0].shape)
            tmp = scratch[:tmp_floats]
            code = scratch[tmp_floats : tmp_floats + code_floats].view(np.uint8)[: tmp_floats - 2]
            return lambda: max_pool3x3_same(flat_x, flat_y, tmp, code, rows.size, cols.size)
        if self._separable(ins[0].shape):
            row = scratch[: row_buffer_length(cols.size, cols.out, cols.kernel, cols.stride, cols.pad_begin)]
            geometry = (rows.size, cols.size, rows.out, cols.out, rows.kernel, cols.kernel)
            strides = (rows.stride, cols.stride)
            return lambda: max_pool2d_rows(flat_x, flat_y, row, *geometry, *strides, *pads)
        args = (rows.kernel, cols.kernel, rows.stride, cols.stride, rows.dilation, cols.dilation)
        return lambda: max_pool2d(x, y, *args, *pads)

    def reference(self, ins):
        return [self.reference_pool(ins[0], is_max=True, include_pad=False)]


@register
@dataclass(frozen=True)
class AveragePool(_Pool):
    """AveragePool (dilations since opset 19)."""

    op_type = "AveragePool"
    count_include_pad: int = 0

    def scratch_bytes(self, shapes, part=None):
        if len(self.kernel_shape) == 3:
            floats, plane_bytes = self.depth_scratch(shapes[0])
            return floats * 4 + plane_bytes
        return 0

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if len(self.kernel_shape) == 3:
            return self.bind_depth(ins, outs, scratch)
        x, y, rows, cols = self.planes(ins[0], outs[0])
        args = (rows.kernel, cols.kernel, rows.stride, cols.stride, rows.dilation, cols.dilation)
        pads = (rows.pad_begin, cols.pad_begin)
        padded = (rows.size + rows.pad_begin + rows.pad_end, cols.size + cols.pad_begin + cols.pad_end)
        include = bool(self.count_include_pad)
        return lambda: average_pool2d(x, y, *args, *pads, *padded, include)

    def reference(self, ins):
        return [self.reference_pool(ins[0], is_max=False, include_pad=bool(self.count_include_pad))]


@dataclass(frozen=True)
class _GlobalPool(Op):
    def infer(self, shapes, consts):
        if shapes[0] is None or len(shapes[0]) < 3:
            raise ShapeError(
                f"{self.op_type}: input must have rank 3 or more (N, C, spatial...), got shape {shapes[0]}"
            )
        shape = tuple(shapes[0])
        return [shape[:2] + (1,) * (len(shape) - 2)]

    def flops(self, shapes, out_shapes):
        return int(np.prod(shapes[0], dtype=np.int64))

    def flat(self, ins, outs) -> tuple[np.ndarray, np.ndarray]:
        x = ins[0]
        planes = x.shape[0] * x.shape[1]
        return reshaped(x, (planes, -1)), reshaped(outs[0], (planes,))


@register
@dataclass(frozen=True)
class GlobalAveragePool(_GlobalPool):
    op_type = "GlobalAveragePool"

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = self.flat(ins, outs)
        return lambda: global_average_pool(x, y)

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float32)
        return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float64).astype(np.float32)]


@register
@dataclass(frozen=True)
class GlobalMaxPool(_GlobalPool):
    op_type = "GlobalMaxPool"

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = self.flat(ins, outs)
        return lambda: global_max_pool(x, y)

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float32)
        return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]


@register
@dataclass(frozen=True)
class LpPool(_Pool):
    """LpPool: (sum of |x|**p over the window)**(1/p), padding counting as zeros. Runs as |x|**p into
    scratch, AveragePool(count_include_pad=1) over it, then (mean * kernel cells)**(1/p): each
    window lies inside the padded input, so its mean is over exactly the kernel's cells (a ceil_mode
    window reaching past the pads is refused)."""

    op_type = "LpPool"
    p: int = 2

    def check(self, node, opset):
        super().check(node, opset)
        if self.p < 1:
            raise UnsupportedOp(self.op_type, node, opset, f"p={self.p}: only p >= 1")

    def mean_op(self) -> AveragePool:
        fields = {k: v for k, v in self.to_dict().items() if k != "p"}
        return AveragePool(count_include_pad=1, **fields)

    def infer(self, shapes, consts):
        for w in self.axes(tuple(shapes[0])):
            if (w.out - 1) * w.stride + w.dilation * (w.kernel - 1) + 1 > w.size + w.pad_begin + w.pad_end:
                raise UnsupportedOp(
                    self.op_type,
                    "?",
                    None,
                    f"ceil_mode window reaching past the pads (input {tuple(shapes[0])}, kernel "
                    f"{self.kernel_shape}, strides {self.strides}, pads {self.pads})",
                )
        return super().infer(shapes, consts)

    def power_floats(self, shape: Shape) -> int:
        """Floats of the |x|**p buffer, rounded up to 64 bytes."""
        return -(-int(np.prod(shape)) // 16) * 16

    def scratch_bytes(self, shapes, part=None):
        return self.power_floats(shapes[0]) * 4 + self.mean_op().scratch_bytes(shapes)

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = ins[0], outs[0]
        floats = self.power_floats(x.shape)
        if scratch is None or scratch.size * 4 < self.scratch_bytes([x.shape]):
            raise ValueError(f"LpPool.bind: scratch too small for input {x.shape}")
        scratch = reshaped(scratch, (-1,))
        powers = reshaped(scratch[: x.size], x.shape)
        mean_scratch = scratch[floats:] if scratch.size > floats else None
        mean = self.mean_op().bind([powers], [y], mean_scratch)
        flat_x, flat_p, flat_y = reshaped(x, (-1,)), reshaped(powers, (-1,)), reshaped(y, (-1,))
        cells, p = int(np.prod(self.kernel_shape)), int(self.p)

        def run():
            lp_power(flat_x, flat_p, p)
            mean()
            lp_root(flat_y, cells, p)

        return run

    def reference(self, ins):
        x = np.abs(np.asarray(ins[0], dtype=np.float64)) ** self.p
        axes = self.axes(x.shape)
        padded = np.pad(x, [(0, 0), (0, 0)] + [(w.pad_begin, w.pad_end) for w in axes])
        acc = np.zeros((*x.shape[:2], *(w.out for w in axes)))
        for taps in np.ndindex(*(w.kernel for w in axes)):
            sel = tuple(
                slice(t * w.dilation, t * w.dilation + (w.out - 1) * w.stride + 1, w.stride)
                for t, w in zip(taps, axes, strict=True)
            )
            acc += padded[(..., *sel)]
        return [(acc ** (1.0 / self.p)).astype(np.float32)]


@register
@dataclass(frozen=True)
class GlobalLpPool(_GlobalPool):
    op_type = "GlobalLpPool"
    p: int = 2

    def check(self, node, opset):
        if self.p < 1:
            raise UnsupportedOp(self.op_type, node, opset, f"p={self.p}: only p >= 1")

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = self.flat(ins, outs)
        p = float(self.p)
        return lambda: global_lp_pool(x, y, p)

    def reference(self, ins):
        x = np.abs(np.asarray(ins[0], dtype=np.float64)) ** self.p
        total = x.sum(axis=tuple(range(2, x.ndim)), keepdims=True)
        return [(total ** (1.0 / self.p)).astype(np.float32)]
