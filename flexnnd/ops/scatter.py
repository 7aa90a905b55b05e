"""Writing at run-time indices: ScatterND, ScatterElements (and its old name Scatter), OneHot.

The output starts as a copy of data; each update is then written (reduction "none") or combined
("add", "mul", "max", "min") at its index, in index order, so duplicate indices behave as in ONNX
Runtime's reference loop. Plain writes copy unsigned integers of the element's size (one kernel
per size); reductions compute in the element's own type. An index out of range fails the request
with InputValueError, and nothing outside the output is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import Op, internal, register
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.gather import (
    DATA_DTYPES,
    _Indexing,
    check_constant_indices,
    data_dtype,
    element_view,
    elements_shapes,
    index_dtype,
    moved_last,
    nd_shapes,
    out_of_range,
)
from flexnnd.ops.jit import kernel
from flexnnd.ops.tensor import normalize_axis

REDUCTIONS = {"none": 0, "add": 1, "mul": 2, "max": 3, "min": 4}
_NUMPY_REDUCE = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


@kernel(inline="always")
def _combine(reduction, old, new):
    # Loop-invariant `reduction`: LLVM unswitches the loop.
    if reduction == 1:
        return old + new
    if reduction == 2:
        return old * new
    if reduction == 3:
        return max(old, new)
    if reduction == 4:
        return min(old, new)
    return new


@dataclass(frozen=True)
class _Scatter(_Indexing):
    reduction: str = "none"

    def check(self, node, opset):
        if self.reduction not in REDUCTIONS:
            raise UnsupportedOp(
                self.op_type, node, opset, f"reduction {self.reduction!r} is not one of {sorted(REDUCTIONS)}"
            )

    def output_dtypes(self, dtypes):
        data, _, updates = dtypes[:3]
        index_dtype(self.op_type, dtypes[1])
        if data != updates:
            raise DtypeRefused(
                f"{self.op_type}: data is {data} and updates {updates}; they must have one type"
            )
        if self.reduction != "none" and data == "bool":
            raise DtypeRefused(f"{self.op_type}: reduction {self.reduction!r} on bool")
        return [data_dtype(self.op_type, data)]

    def kernel_view(self, a: np.ndarray) -> np.ndarray:
        """The view the kernel writes: raw elements for plain writes, the real type to reduce."""
        return element_view(a) if self.reduction == "none" else a


# ---- ScatterND ----------------------------------------------------------------------------------


@kernel
def scatter_nd(dst, indices, updates, dims, row, reduction):
    """Row t of `updates` (rows of `row` elements) goes to the row of dst at index tuple t, tuples of
    dims.size entries in `indices`; all flat. Returns False, writing nothing, if an index is out of
    range."""
    k = dims.size
    count = indices.size // k
    for t in range(count):
        for j in range(k):
            v = indices[t * k + j]
            if v < -dims[j] or v >= dims[j]:
                return False
    for t in range(count):
        offset = 0
        for j in range(k):
            v = indices[t * k + j]
            if v < 0:
                v += dims[j]
            offset = offset * dims[j] + v
        d = np.uint64(offset * row)
        s = np.uint64(t * row)
        for i in range(np.uint64(row)):
            dst[d + i] = _combine(reduction, dst[d + i], updates[s + i])
    return True


@register
@dataclass(frozen=True)
class ScatterND(_Scatter):
    """ONNX ScatterND (opsets 11, 13; reduction since 16, max/min since 18)."""

    op_type = "ScatterND"
    in_place = True  # run_scatter_nd copies data whole first

    def infer(self, shapes, consts):
        data, indices, updates = (tuple(s) for s in shapes[:3])
        k = nd_shapes(self.op_type, data, indices, 0)
        if updates != indices[:-1] + data[k:]:
            raise ShapeError(
                f"ScatterND: updates {updates} must be {indices[:-1] + data[k:]} for data {data}, indices {indices}"
            )
        return [data]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        self.whole(self.op_type, part, reuse)
        data, indices, updates = ins[:3]
        out = outs[0]
        if out.shape != data.shape or out.dtype != data.dtype or updates.dtype != data.dtype:
            raise ShapeError(
                f"ScatterND.bind: data {data.shape} {data.dtype}, updates {updates.dtype}, out {out.shape} {out.dtype}"
            )
        k = nd_shapes(self.op_type, data.shape, indices.shape, 0)
        dims = np.array(data.shape[:k], dtype=np.int64)
        row = math.prod(data.shape[k:])
        src = reshape_view(data, (-1,))
        dst, upd = reshape_view(self.kernel_view(out), (-1,)), reshape_view(self.kernel_view(updates), (-1,))
        flat, flat_out = reshape_view(indices, (-1,)), reshape_view(out, (-1,))
        reduction = REDUCTIONS[self.reduction]

        def run_scatter_nd():
            np.copyto(flat_out, src)
            if not scatter_nd(dst, flat, upd, dims, row, reduction):
                raise out_of_range(
                    self.op_type, indices, np.broadcast_to(dims, indices.shape), "data dimensions"
                )

        return run_scatter_nd

    def reference(self, ins):
        data, indices, updates = np.asarray(ins[0]), np.asarray(ins[1]).astype(np.int64), np.asarray(ins[2])
        k = indices.shape[-1]
        dims = np.array(data.shape[:k], dtype=np.int64)
        if ((indices < -dims) | (indices >= dims)).any():
            raise out_of_range(self.op_type, indices, np.broadcast_to(dims, indices.shape), "data dimensions")
        out = data.copy()
        tuples = np.where(indices < 0, indices + dims, indices).reshape(-1, k)
        rows = updates.reshape((len(tuples), *data.shape[k:]))
        for t, u in zip(tuples, rows, strict=True):
            at = tuple(int(v) for v in t)
            out[at] = u if self.reduction == "none" else _NUMPY_REDUCE[self.reduction](out[at], u)
        return [out]


# ---- ScatterElements ----------------------------------------------------------------------------


@kernel
def scatter_elements(dst, indices, updates, reduction):
    """dst[..., indices[..., j]] (op)= updates[..., j] over MAX_RANK-D views, the scattered axis
    last. Returns False at the first index outside [-n, n) (earlier updates are written)."""
    d0, d1, d2, d3, d4, d5 = indices.shape
    n = dst.shape[5]
    for i0 in range(d0):
        for i1 in range(d1):
            for i2 in range(d2):
                for i3 in range(d3):
                    for i4 in range(d4):
                        for j in range(d5):
                            k = indices[i0, i1, i2, i3, i4, j]
                            if k < -n or k >= n:
                                return False
                            if k < 0:
                                k += n
                            dst[i0, i1, i2, i3, i4, k] = _combine(
                                reduction, dst[i0, i1, i2, i3, i4, k], updates[i0, i1, i2, i3, i4, j]
                            )
    return True


@register
@dataclass(frozen=True)
class ScatterElements(_Scatter):
    """ONNX ScatterElements (opsets 11, 13; reduction since 16, max/min since 18)."""

    op_type = "ScatterElements"
    in_place = True  # run_scatter_elements copies data whole first
    axis: int = 0

    def infer(self, shapes, consts):
        data, indices, updates = (tuple(s) for s in shapes[:3])
        axis = elements_shapes(self.op_type, data, indices, self.axis)
        if updates != indices:
            raise ShapeError(f"{self.op_type}: updates {updates} must have the shape of indices {indices}")
        check_constant_indices(
            self.op_type, consts[1] if len(consts) > 1 else None, data[axis], f"axis {axis}"
        )
        return [data]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        self.whole(self.op_type, part, reuse)
        data, indices, updates = ins[:3]
        out = outs[0]
        if out.shape != data.shape or out.dtype != data.dtype or updates.dtype != data.dtype:
            raise ShapeError(
                f"{self.op_type}.bind: data {data.shape} {data.dtype}, updates {updates.dtype}, out {out.shape} {out.dtype}"
            )
        axis = elements_shapes(self.op_type, data.shape, indices.shape, self.axis)
        block = tuple(slice(None) if a == axis else slice(0, n) for a, n in enumerate(indices.shape))
        dst = moved_last(self.kernel_view(out)[block], axis)
        idx, upd = moved_last(indices, axis), moved_last(self.kernel_view(updates), axis)
        src, flat_out = reshape_view(data, (-1,)), reshape_view(out, (-1,))
        reduction, size = REDUCTIONS[self.reduction], data.shape[axis]

        def run_scatter_elements():
            np.copyto(flat_out, src)
            if not scatter_elements(dst, idx, upd, reduction):
                raise out_of_range(self.op_type, indices, size, f"axis {axis}")

        return run_scatter_elements

    def reference(self, ins):
        data, indices, updates = np.asarray(ins[0]), np.asarray(ins[1]).astype(np.int64), np.asarray(ins[2])
        axis = normalize_axis(self.op_type, self.axis, data.ndim, data.shape)
        n = data.shape[axis]
        if indices.size and (indices.min() < -n or indices.max() >= n):
            raise out_of_range(self.op_type, indices, n, f"axis {axis}")
        out = data.copy()
        for pos in np.ndindex(*indices.shape):
            at = list(pos)
            at[axis] = int(indices[pos]) % n
            at = tuple(at)
            value = updates[pos]
            out[at] = value if self.reduction == "none" else _NUMPY_REDUCE[self.reduction](out[at], value)
        return [out]


@register
@dataclass(frozen=True)
class Scatter(ScatterElements):
    """ONNX Scatter (opsets 9-10, renamed ScatterElements in 11): the same op without reduction."""

    op_type = "Scatter"
    reduction: str = internal("none")


# ---- OneHot -------------------------------------------------------------------------------------


@kernel
def one_hot(indices, dst, off, on):
    """dst[o, :, i] = off, but on at row indices[o, i] (negative from the end; out of [-depth,
    depth) leaves the column all off, as ONNX says); dst (outer, depth, inner), indices (outer, inner)."""
    outer, depth, inner = dst.shape
    for o in range(outer):
        for d in range(depth):
            for i in range(inner):
                dst[o, d, i] = off
        for i in range(inner):
            v = np.int64(indices[o, i])
            if v < 0:
                v += depth
            if 0 <= v < depth:
                dst[o, v, i] = on


ONE_HOT_INDICES = frozenset({"float32", "int64", "int32", "int16", "int8", "uint8", "uint16"})


@register
@dataclass(frozen=True)
class OneHot(Op):
    """ONNX OneHot (opsets 9, 11): depth and values (off, on) must be constants, absorbed at import."""

    op_type = "OneHot"
    const_inputs = (1, 2)
    axis: int = -1
    depth: int = internal(0)
    values: tuple = internal((0, 1))
    values_dtype: str = internal("float32")

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        if len(consts) < 3 or consts[1] is None or consts[2] is None:
            raise UnsupportedOp(cls.op_type, node, opset, "depth and values must be constants")
        op, _ = super().from_onnx(attrs, consts[:1], node, opset)
        depth, values = np.asarray(consts[1]), np.asarray(consts[2])
        if depth.size != 1 or values.size != 2:
            raise UnsupportedOp(
                cls.op_type, node, opset, f"depth of shape {depth.shape}, values of shape {values.shape}"
            )
        held = "float32" if np.issubdtype(values.dtype, np.floating) else values.dtype.name
        if held not in DATA_DTYPES:
            raise UnsupportedOp(cls.op_type, node, opset, f"values are {values.dtype}")
        pair = tuple(v.item() for v in values.astype(held).reshape(-1))
        return cls(axis=op.axis, depth=int(depth.reshape(-1)[0]), values=pair, values_dtype=held), (0,)

    def output_dtypes(self, dtypes):
        if dtypes[0] not in ONE_HOT_INDICES:
            raise DtypeRefused(f"OneHot: indices are {dtypes[0]}; flexnn takes {sorted(ONE_HOT_INDICES)}")
        return [self.values_dtype]

    def _axis(self, shape) -> int:
        return normalize_axis(self.op_type, self.axis, len(shape) + 1, shape)

    def infer(self, shapes, consts):
        shape = tuple(shapes[0])
        if self.depth <= 0:
            raise ShapeError(f"OneHot: depth {self.depth} must be positive")
        axis = self._axis(shape)
        return [(*shape[:axis], self.depth, *shape[axis:])]

    def slice_axes(self, shapes, out_shapes):
        return ()  # no weights: it runs whole

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"OneHot.bind: OneHot is not sliced, got part {part}")
        indices, out = ins[0], outs[0]
        axis = self._axis(indices.shape)
        if out.shape != self.infer([indices.shape], [None])[0] or out.dtype != np.dtype(self.values_dtype):
            raise ShapeError(f"OneHot.bind: indices {indices.shape}, out {out.shape} {out.dtype}")
        outer, inner = math.prod(indices.shape[:axis]), math.prod(indices.shape[axis:])
        idx = reshape_view(indices, (outer, inner))
        dst = reshape_view(out, (outer, self.depth, inner))
        off, on = (np.dtype(self.values_dtype).type(v) for v in self.values)

        def run_one_hot():
            one_hot(idx, dst, off, on)

        return run_one_hot

    def reference(self, ins):
        indices = np.asarray(ins[0]).astype(np.int64)
        axis = self._axis(indices.shape)
        idx = np.where(indices < 0, indices + self.depth, indices)
        hot = np.expand_dims(idx, axis) == np.arange(self.depth).reshape((-1,) + (1,) * (indices.ndim - axis))
        off, on = (np.asarray(v, dtype=self.values_dtype) for v in self.values)
        return [np.where(hot, on, off)]
