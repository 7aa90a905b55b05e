"""Pooling: MaxPool, AveragePool (1-D and 2-D, NC[H]W), GlobalAveragePool, GlobalMaxPool.

Output sizes follow onnxruntime, which follows the spec plus one rule: with ceil_mode, a window
that would start beyond the input and its left padding is dropped. Padded cells never win a max;
an average divides by its valid cells (count_include_pad=0) or by its cells inside the explicitly
padded input (count_include_pad=1: cells that ceil_mode adds beyond the pads do not count).

The kernels split each output row into interior columns, whose windows lie inside the input
(a branch-free loop over the output width that vectorizes), and the few border columns; the
valid kernel rows are computed once per output row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.graph.ir import Shape
from flexnnd.ops.base import Op, register, require_rank
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


@kernel(inline="always")
def _max_into(dst, src, n):
    """dst[i] = max(dst[i], src[i]) for i < n: slices, not offset indices, so LLVM vectorizes."""
    for i in range(n):
        a = dst[i]
        b = src[i]
        dst[i] = a if a >= b else b


@kernel(inline="always")
def _max_into_strided(dst, src, n, stride):
    if stride == 1:
        _max_into(dst, src, n)
    elif stride == 2:
        for i in range(n):
            a = dst[i]
            b = src[2 * i]
            dst[i] = a if a >= b else b
    else:
        for i in range(n):
            a = dst[i]
            b = src[i * stride]
            dst[i] = a if a >= b else b


@kernel
def max_pool2d_separable(x, y, tmp, height, width, out_h, out_w, kh, kw, sh, sw, pad_top, pad_left):
    """Max pooling without dilation, as a max over rows into `tmp` then a max over columns.

    x: (P, H*W), y: (P, OH*OW), tmp: (OH*W,), all flat and C-contiguous. Each pass is a few
    long loops over slices; with stride 1 and an output as wide as the input, the rows of a plane
    are done in one flat loop per tap, and the few columns whose flat window wraps into the
    next row are recomputed with their valid taps.
    """
    sw = max(sw, 1)
    c_lo = min(out_w, (pad_left + sw - 1) // sw)
    c_hi = max(c_lo, min(out_w, (width - kw + pad_left) // sw + 1))
    flat_columns = sw == 1 and out_w == width
    for p in range(x.shape[0]):
        xf = x[p]
        yf = y[p]
        # Rows: tmp[oh] = max over the window's valid input rows.
        oh = 0
        while oh < out_h:
            h0 = oh * sh - pad_top
            r_lo = max(0, -h0)
            r_hi = min(kh, height - h0)
            if sh == 1 and r_lo == 0 and r_hi == kh:
                # A run of interior rows: one flat loop per tap.
                last = min(out_h, height - kh + pad_top + 1)
                n = (last - oh) * width
                dst = tmp[oh * width : oh * width + n]
                src = xf[h0 * width : h0 * width + n]
                for i in range(n):
                    dst[i] = src[i]
                for r in range(1, kh):
                    _max_into(dst, xf[(h0 + r) * width : (h0 + r) * width + n], n)
                oh = last
                continue
            dst = tmp[oh * width : (oh + 1) * width]
            src = xf[(h0 + r_lo) * width : (h0 + r_lo + 1) * width]
            for i in range(width):
                dst[i] = src[i]
            for r in range(r_lo + 1, r_hi):
                _max_into(dst, xf[(h0 + r) * width : (h0 + r + 1) * width], width)
            oh += 1
        # Columns.
        if flat_columns:
            n = out_h * width - (kw - 1)
            dst = yf[pad_left : pad_left + n]
            src = tmp[0:n]
            for i in range(n):
                dst[i] = src[i]
            for c in range(1, kw):
                _max_into(dst, tmp[c : c + n], n)
            border = True
        else:
            border = c_lo > 0 or c_hi < out_w
            n = c_hi - c_lo
            for oh in range(out_h):
                row = tmp[oh * width : (oh + 1) * width]
                dst = yf[oh * out_w + c_lo : oh * out_w + c_hi]
                start = c_lo * sw - pad_left
                src = row[start:]
                if n > 0:
                    for i in range(n):
                        dst[i] = src[i * sw]
                    for c in range(1, kw):
                        _max_into_strided(dst, row[start + c :], n, sw)
        if border:
            for oh in range(out_h):
                base = oh * width
                for e in range(c_lo + out_w - c_hi):  # only the border columns of each row
                    ow = e if e < c_lo else e - c_lo + c_hi
                    w0 = ow * sw - pad_left
                    t_lo = max(0, -w0)
                    t_hi = min(kw, width - w0)
                    m = tmp[base + w0 + t_lo]
                    for c in range(t_lo + 1, t_hi):
                        v = tmp[base + w0 + c]
                        m = m if m >= v else v
                    yf[oh * out_w + ow] = m


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
        if rank not in (1, 2):
            raise bad(f"kernel_shape {self.kernel_shape}: only 1-D and 2-D pooling")
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

    def windows(self, shape: Shape) -> tuple[Window, Window]:
        """(rows, columns) geometry for an input of `shape`; a 1-D pool has one row."""
        rank = len(self.kernel_shape)
        require_rank(self.op_type, shape, (rank + 2,))
        spatial = tuple(shape[2:])
        strides = self.strides or (1,) * rank
        dilations = self.dilations or (1,) * rank
        pads = self.pads or (0,) * (2 * rank)
        axes = [
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
        if rank == 1:
            axes.insert(0, Window(1, 1, 1, 1, 1, 0, 0))
        return axes[0], axes[1]

    def infer(self, shapes, consts):
        shape = tuple(shapes[0])
        rows, cols = self.windows(shape)
        return [shape[:2] + ((cols.out,) if len(self.kernel_shape) == 1 else (rows.out, cols.out))]

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
        rows, cols = self.windows(x.shape)
        x4 = x.reshape(x.shape[0], x.shape[1], rows.size, cols.size)
        full = []
        for w in (rows, cols):
            reach = (w.out - 1) * w.stride + w.dilation * (w.kernel - 1) + 1
            full.append(max(w.size + w.pad_begin + w.pad_end, reach))
        fill = -np.inf if is_max else 0.0
        padded = np.full(x4.shape[:2] + tuple(full), fill, dtype=np.float32)
        valid = np.zeros(tuple(full), dtype=np.float32)  # which cells count in the divisor
        inside = (
            slice(rows.pad_begin, rows.pad_begin + rows.size),
            slice(cols.pad_begin, cols.pad_begin + cols.size),
        )
        padded[(..., *inside)] = x4
        if include_pad:
            valid[
                : rows.size + rows.pad_begin + rows.pad_end, : cols.size + cols.pad_begin + cols.pad_end
            ] = 1
        else:
            valid[inside] = 1
        acc = np.full((*x4.shape[:2], rows.out, cols.out), fill, dtype=np.float32)
        count = np.zeros((rows.out, cols.out), dtype=np.float32)
        for i in range(rows.kernel):
            for j in range(cols.kernel):
                sel = (
                    slice(
                        i * rows.dilation, i * rows.dilation + (rows.out - 1) * rows.stride + 1, rows.stride
                    ),
                    slice(
                        j * cols.dilation, j * cols.dilation + (cols.out - 1) * cols.stride + 1, cols.stride
                    ),
                )
                if is_max:
                    np.maximum(acc, padded[(..., *sel)], out=acc)
                else:
                    acc += padded[(..., *sel)]
                    count += valid[sel]
        if not is_max:
            acc = np.divide(acc, count, out=np.zeros_like(acc), where=count > 0)
        return acc.reshape(x.shape[:2] + tuple(self.infer([x.shape], [None])[0][2:]))


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
        """No dilation and every window overlapping the input: rows then columns."""
        rows, cols = self.windows(shape)
        return rows.dilation == cols.dilation == 1 and all(
            (w.out - 1) * w.stride - w.pad_begin < w.size and w.kernel > w.pad_begin for w in (rows, cols)
        )

    def scratch_bytes(self, shapes, part=None):
        if not self._separable(shapes[0]):
            return 0
        rows, cols = self.windows(shapes[0])
        return rows.out * cols.size * 4

    def bind(self, ins, outs, scratch, part=None):
        x, y, rows, cols = self.planes(ins[0], outs[0])
        pads = (rows.pad_begin, cols.pad_begin)
        if self._separable(ins[0].shape):
            flat_x, flat_y = reshaped(x, (x.shape[0], -1)), reshaped(y, (y.shape[0], -1))
            tmp = scratch[: rows.out * cols.size]
            geometry = (rows.size, cols.size, rows.out, cols.out, rows.kernel, cols.kernel)
            strides = (rows.stride, cols.stride)
            return lambda: max_pool2d_separable(flat_x, flat_y, tmp, *geometry, *strides, *pads)
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

    def bind(self, ins, outs, scratch, part=None):
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
        shape = tuple(require_rank(self.op_type, shapes[0], (3, 4, 5)))
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

    def bind(self, ins, outs, scratch, part=None):
        x, y = self.flat(ins, outs)
        return lambda: global_average_pool(x, y)

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float32)
        return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float64).astype(np.float32)]


@register
@dataclass(frozen=True)
class GlobalMaxPool(_GlobalPool):
    op_type = "GlobalMaxPool"

    def bind(self, ins, outs, scratch, part=None):
        x, y = self.flat(ins, outs)
        return lambda: global_max_pool(x, y)

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float32)
        return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]
