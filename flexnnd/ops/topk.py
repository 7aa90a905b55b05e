"""TopK: the k largest (or smallest) elements along an axis, and their int64 indices.

k is an attribute in opsets 1-9 and a constant input since opset 10 (absorbed into `k` at import;
a k computed at run time is refused). The output is always sorted, best first, equal values by
the lower index first, as ONNX Runtime does; with sorted=0 the spec leaves the order free, so
sorted output is a valid answer there too.

The kernel keeps, per slice, a heap of the k best seen so far in the output itself (its root the
worst of them), then sorts it in place: no scratch, O(n log k) per slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.base import Op, register
from flexnnd.ops.jit import kernel
from flexnnd.ops.reduce import INT_TYPES, _flat, _refuse_dtypes


@kernel(inline="always")
def _better(va, ia, vb, ib, largest):
    """Whether (value va, index ia) ranks before (vb, ib)."""
    if va == vb:
        return ia < ib
    return va > vb if largest else va < vb


@kernel  # called, not inlined: four inlined copies would triple the compile time
def _sift_down(vals, idx, base, step, size, at, largest):
    """Restore the heap (root = the worst) of `size` entries at vals/idx[base + j * step] below `at`."""
    while True:
        child = 2 * at + 1
        if child >= size:
            return
        c = base + child * step
        if child + 1 < size and _better(vals[c], idx[c], vals[c + step], idx[c + step], largest):
            child += 1
            c += step
        a = base + at * step
        if not _better(vals[a], idx[a], vals[c], idx[c], largest):
            return
        vals[a], vals[c] = vals[c], vals[a]
        idx[a], idx[c] = idx[c], idx[a]
        at = child


@kernel
def top_k(src, vals, idx, outer, n, inner, k, largest):
    """vals/idx (outer, k, inner) = the k best of src (outer, n, inner) along n, best first; flat."""
    for o in range(outer):
        for i in range(inner):
            s = o * n * inner + i
            base = o * k * inner + i
            for j in range(k):
                vals[base + j * inner] = src[s + j * inner]
                idx[base + j * inner] = j
            for at in range(k // 2 - 1, -1, -1):
                _sift_down(vals, idx, base, inner, k, at, largest)
            for j in range(k, n):
                x = src[s + j * inner]
                if _better(x, j, vals[base], idx[base], largest):
                    vals[base] = x
                    idx[base] = j
                    _sift_down(vals, idx, base, inner, k, 0, largest)
            for end in range(k - 1, 0, -1):  # move the worst to the end, then the next worst
                e = base + end * inner
                vals[base], vals[e] = vals[e], vals[base]
                idx[base], idx[e] = idx[e], idx[base]
                _sift_down(vals, idx, base, inner, end, 0, largest)


@register
@dataclass(frozen=True)
class TopK(Op):
    """ONNX TopK: outputs Values (the input's type) and Indices (int64)."""

    op_type = "TopK"
    const_inputs = (1,)
    axis: int = -1
    largest: int = 1
    sorted: int = 1
    k: int = 0  # an attribute before opset 10, input 1 since

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        attrs = dict(attrs)
        if len(consts) > 1:
            if consts[1] is None:
                raise UnsupportedOp(cls.op_type, node, opset, "k (input 1) is not a constant")
            k = np.asarray(consts[1])
            if k.size != 1:
                raise UnsupportedOp(cls.op_type, node, opset, f"k (input 1) has {k.size} values, not 1")
            attrs["k"] = int(k.reshape(-1)[0])
        op, _ = super().from_onnx(attrs, consts[:1], node, opset)
        return op, (0,)

    def check(self, node, opset):
        if self.k < 1:  # missing (attribute or input), or an empty output flexnn cannot hold
            raise UnsupportedOp(self.op_type, node, opset, f"k is {self.k}; flexnn needs k >= 1")
        if self.largest not in (0, 1) or self.sorted not in (0, 1):
            raise UnsupportedOp(
                self.op_type, node, opset, f"largest {self.largest} / sorted {self.sorted} are not 0 or 1"
            )

    def output_dtypes(self, dtypes):
        return [_refuse_dtypes(self.op_type, dtypes, ("float32", *INT_TYPES)), "int64"]

    def _axis(self, shape) -> int:
        rank = len(shape)
        if not -rank <= self.axis < rank:
            raise ShapeError(f"TopK: axis {self.axis} is out of range for shape {shape}")
        return self.axis % rank

    def infer(self, shapes, consts):
        if shapes[0] is None:
            raise ShapeError("TopK: input shape unknown")
        shape = tuple(shapes[0])
        axis = self._axis(shape)
        if not 0 <= self.k <= shape[axis]:
            raise ShapeError(
                f"TopK: k {self.k} is not in [0, {shape[axis]}] (axis {self.axis} of shape {shape})"
            )
        out = (*shape[:axis], self.k, *shape[axis + 1 :])
        return [out, out]

    def flops(self, shapes, out_shapes):
        return int(np.prod(shapes[0], dtype=np.int64)) * max(1, int(self.k).bit_length())

    def slice_axes(self, shapes, out_shapes):
        return ()  # no weights to cut: it runs whole

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"TopK.bind: TopK is not sliced, got part {part}")
        x = ins[0]
        if len(outs) not in (1, 2):
            raise ShapeError(f"TopK.bind: {len(outs)} outputs, expected 1 or 2")
        want = self.infer([x.shape], [None])[0]
        values = outs[0]
        indices = outs[1] if len(outs) > 1 else None
        if (
            values.shape != want
            or values.dtype != x.dtype
            or str(x.dtype) not in ("float32", *INT_TYPES)
            or (indices is not None and (indices.shape != want or indices.dtype != np.int64))
        ):
            raise ShapeError(
                f"TopK.bind: input {x.shape} {x.dtype}, outputs "
                f"{[(o.shape, str(o.dtype)) for o in outs]}; expected {want} {x.dtype} and {want} int64"
            )
        if indices is None:
            raise ShapeError("TopK.bind: the Indices output is needed (the kernel keeps its heap there)")
        axis = self._axis(x.shape)
        outer = int(np.prod(x.shape[:axis], dtype=np.int64))
        n, inner = x.shape[axis], int(np.prod(x.shape[axis + 1 :], dtype=np.int64))
        src, vals, idx = _flat(x), _flat(values), _flat(indices)
        k, largest = self.k, bool(self.largest)
        return lambda: top_k(src, vals, idx, outer, n, inner, k, largest)

    def reference(self, ins):
        x = np.asarray(ins[0])
        axis = self._axis(x.shape)
        n = x.shape[axis]
        if self.largest:  # descending by value, equal values by ascending index
            order = n - 1 - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
        else:
            order = np.argsort(x, axis=axis, kind="stable")
        order = np.take(order, np.arange(self.k), axis=axis).astype(np.int64)
        return [np.take_along_axis(x, order, axis=axis), order]
