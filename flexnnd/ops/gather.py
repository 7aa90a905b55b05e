"""Indexing by run-time tensors: Gather, GatherElements, GatherND.

Embedding lookups (token ids into a table), the CLS token and shape-dependent indexing in
transformers and detectors. The indices may be constants or activations (int32 or int64); the
data any element type flexnn holds. All three only move elements, so the kernels copy raw bytes
(or unsigned integers of the element's size): one compiled kernel per index type, whatever the
data's type. An index out of range fails the request with InputValueError before anything is read
from outside the tensor. All-constant Gathers never reach these ops: graph/fold.py folds them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import DtypeRefused, InputValueError, ShapeError
from flexnnd.graph.ir import Shape
from flexnnd.ops.base import Axis, Op, SliceAxis, internal, register
from flexnnd.ops.buffers import copy, reshape_view
from flexnnd.ops.jit import kernel
from flexnnd.ops.tensor import normalize_axis

# Element types the indexing ops move (bytes, whatever they mean) and the index types they read.
DATA_DTYPES = frozenset({"float32", "int64", "int32", "int16", "int8", "uint8", "uint16", "bool"})
INDEX_DTYPES = frozenset({"int32", "int64"})
MAX_RANK = 6  # GatherElements/ScatterElements loop over views of this rank


def data_dtype(op: str, dtype: str | None, what: str = "data") -> str:
    if dtype not in DATA_DTYPES:
        raise DtypeRefused(f"{op}: {what} is {dtype}; flexnn's {op} takes {sorted(DATA_DTYPES)}")
    return dtype


def index_dtype(op: str, dtype: str | None, what: str = "indices") -> str:
    if dtype not in INDEX_DTYPES:
        raise DtypeRefused(f"{op}: {what} is {dtype}; ONNX indices are int32 or int64")
    return dtype


def byte_view(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The raw bytes of contiguous `a`, viewed with `shape` (the last axis counts bytes)."""
    return reshape_view(reshape_view(a, (-1,)).view(np.uint8), tuple(shape))


def element_view(a: np.ndarray) -> np.ndarray:
    """`a` as unsigned integers of its element's size: copies of them are copies of the values."""
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def moved_last(a: np.ndarray, axis: int) -> np.ndarray:
    """`a` with `axis` moved last and leading size-1 axes up to MAX_RANK (a strided view, no copy)."""
    moved = np.moveaxis(a, axis, -1)
    return reshape_view(moved, (1,) * (MAX_RANK - moved.ndim) + moved.shape)


def out_of_range(op: str, indices: np.ndarray, sizes: np.ndarray | int, what: str) -> InputValueError:
    """The error for the first index outside [-size, size) (found in numpy: only on the error path)."""
    values = np.asarray(indices, dtype=np.int64)
    bad = np.flatnonzero(((values < -sizes) | (values >= sizes)).reshape(-1))
    first = int(values.reshape(-1)[bad[0]]) if bad.size else None
    size = int(np.broadcast_to(sizes, values.shape).reshape(-1)[bad[0]]) if bad.size else sizes
    return InputValueError(
        "",
        op,
        f"index {first} is out of range for {what} of size {size} ({bad.size} of {values.size} indices)",
    )


def check_constant_indices(op: str, indices: np.ndarray | None, size: int, what: str) -> None:
    """Constant indices out of range make every inference fail: refuse them at import."""
    if indices is None:
        return
    values = np.asarray(indices, dtype=np.int64)
    if values.size and (values.min() < -size or values.max() >= size):
        raise ShapeError(
            f"{op}: constant indices {values.reshape(-1)[:8].tolist()} reach outside {what} of size {size}"
        )


@dataclass(frozen=True)
class _Indexing(Op):
    """Moves elements without arithmetic: never sliced, priced by the bytes it moves."""

    def slice_axes(self, shapes, out_shapes):
        return ()  # no weights to cut: indices and data are read whole

    def flops(self, shapes, out_shapes):
        return 0

    @staticmethod
    def whole(name: str, part, reuse) -> None:
        if part is not None or reuse:
            raise ValueError(f"{name}.bind: {name} is not sliced, got part {part}")


# ---- Gather -------------------------------------------------------------------------------------


@kernel
def gather_rows(src, indices, dst, outer, axis_len, row):
    """dst[o, j, :] = src[o, indices[j], :] over flat byte arrays of rows of `row` bytes.
    Returns False (nothing written) if an index is outside [-axis_len, axis_len)."""
    n = indices.size
    for j in range(n):
        if indices[j] < -axis_len or indices[j] >= axis_len:
            return False
    for o in range(outer):
        for j in range(n):
            k = indices[j]
            if k < 0:
                k += axis_len
            copy(dst, (o * n + j) * row, src, (o * axis_len + k) * row, row)
    return True


@kernel
def gather_table_rows(src, indices, dst, lo, hi, axis_len, row):
    """The part of an axis-0 Gather from a constant table that holds table rows [lo, hi) (src is
    those rows): dst[j, :] = src[indices[j] - lo, :] for every index in the part; the others are
    another part's. Returns False (nothing written) if an index is outside [-axis_len, axis_len)."""
    n = indices.size
    for j in range(n):
        if indices[j] < -axis_len or indices[j] >= axis_len:
            return False
    for j in range(n):
        k = indices[j]
        if k < 0:
            k += axis_len
        if lo <= k < hi:
            copy(dst, j * row, src, (k - lo) * row, row)
    return True


@register
@dataclass(frozen=True)
class Gather(_Indexing):
    """ONNX Gather (opsets 1, 11, 13): out = data indexed along `axis` by every index.

    An embedding lookup (a constant table, run-time indices, axis 0) may be cut by table rows, like
    a weight by output channels: part [a, b) holds rows [a, b) of the table and writes the output
    rows whose index falls there, so a big vocabulary streams in pieces."""

    op_type = "Gather"
    axis: int = 0
    table: bool = internal(False)  # data is a constant and the indices are not
    vocab: int = internal(0)  # the table's rows then (a part sees only its own)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        op, kept = super().from_onnx(attrs, consts, node, opset)
        data = consts[0] if consts else None
        if len(consts) > 1 and data is not None and data.ndim and consts[1] is None:
            op = dataclasses.replace(op, table=True, vocab=int(data.shape[0]))
        return op, kept

    def slice_axes(self, shapes, out_shapes):
        data = shapes[0]
        if not self.table or not data or normalize_axis("Gather", self.axis, len(data), data) != 0:
            return ()
        return (SliceAxis(Axis.CHANNELS, int(data[0])),)

    def output_dtypes(self, dtypes):
        index_dtype("Gather", dtypes[1])
        return [data_dtype("Gather", dtypes[0])]

    def infer(self, shapes, consts):
        data, indices = tuple(shapes[0]), tuple(shapes[1])
        if not data:
            raise ShapeError(f"Gather: data must have rank >= 1, got shape {data}")
        axis = normalize_axis("Gather", self.axis, len(data), data)
        check_constant_indices("Gather", consts[1] if len(consts) > 1 else None, data[axis], f"axis {axis}")
        return [data[:axis] + indices + data[axis + 1 :]]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None:
            return self._bind_table_part(ins, outs, part)
        self.whole("Gather", part, reuse)
        data, indices, out = ins[0], ins[1], outs[0]
        axis = normalize_axis("Gather", self.axis, data.ndim, data.shape)
        # Scalar or not, the indices give the output indices.size rows along the axis.
        want = (*data.shape[:axis], indices.size, *data.shape[axis + 1 :])
        if out.dtype != data.dtype or out.size != math.prod(want) or out.shape[:axis] != data.shape[:axis]:
            raise ShapeError(
                f"Gather.bind: data {data.shape} {data.dtype}, indices {indices.shape}, out {out.shape} {out.dtype}"
            )
        outer, axis_len = math.prod(data.shape[:axis]), data.shape[axis]
        row = math.prod(data.shape[axis + 1 :]) * data.itemsize
        src, dst = byte_view(data, (-1,)), byte_view(out, (-1,))
        flat = reshape_view(indices, (-1,))

        def run_gather():
            if not gather_rows(src, flat, dst, outer, axis_len, row):
                raise out_of_range("Gather", flat, axis_len, f"axis {axis}")

        return run_gather

    def _bind_table_part(self, ins, outs, part):
        table, indices, out = ins[0], ins[1], outs[0]
        if not self.table or part.axis is not Axis.CHANNELS or table.shape[0] != part.stop - part.start:
            raise ValueError(
                f"Gather.bind: not sliced but as an embedding table by its rows; got part {part} of {table.shape}"
            )
        vocab = self.vocab
        row = math.prod(table.shape[1:]) * table.itemsize
        src, dst = byte_view(table, (-1,)), byte_view(out, (-1,))
        flat = reshape_view(indices, (-1,))
        lo, hi = part.start, part.stop

        def run_gather_part():
            if not gather_table_rows(src, flat, dst, lo, hi, vocab, row):
                raise out_of_range("Gather", flat, vocab, "axis 0")

        return run_gather_part

    def reference(self, ins):
        data, indices = np.asarray(ins[0]), np.asarray(ins[1])
        axis = normalize_axis("Gather", self.axis, data.ndim, data.shape)
        if indices.size and (indices.min() < -data.shape[axis] or indices.max() >= data.shape[axis]):
            raise out_of_range("Gather", indices, data.shape[axis], f"axis {axis}")
        return [np.take(data, indices.astype(np.int64), axis=axis)]


# ---- GatherElements -----------------------------------------------------------------------------


@kernel
def gather_elements(src, indices, dst):
    """dst[..., j] = src[..., indices[..., j]] over MAX_RANK-D views (the gathered axis last);
    returns False at the first index outside [-n, n) for that axis's size n."""
    d0, d1, d2, d3, d4, d5 = dst.shape
    n = src.shape[5]
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
                            dst[i0, i1, i2, i3, i4, j] = src[i0, i1, i2, i3, i4, k]
    return True


def elements_shapes(op: str, data: Shape, indices: Shape, axis: int) -> int:
    """The normalized axis; indices must have data's rank and no larger dimension off the axis
    (ONNX Runtime reads a smaller one as a sub-block, as torch.gather does)."""
    if len(indices) != len(data) or not data:
        raise ShapeError(f"{op}: indices {indices} must have the rank of data {data} (>= 1)")
    axis = normalize_axis(op, axis, len(data), data)
    if any(i > d for a, (i, d) in enumerate(zip(indices, data, strict=True)) if a != axis):
        raise ShapeError(f"{op}: indices {indices} exceed data {data} off axis {axis}")
    if len(data) > MAX_RANK:
        raise ShapeError(f"{op}: rank {len(data)} above {MAX_RANK} (data {data})")
    return axis


@register
@dataclass(frozen=True)
class GatherElements(_Indexing):
    """ONNX GatherElements (opsets 11, 13): out[p] = data[p with p[axis] = indices[p]]."""

    op_type = "GatherElements"
    axis: int = 0

    def output_dtypes(self, dtypes):
        index_dtype(self.op_type, dtypes[1])
        return [data_dtype(self.op_type, dtypes[0])]

    def infer(self, shapes, consts):
        data, indices = tuple(shapes[0]), tuple(shapes[1])
        axis = elements_shapes(self.op_type, data, indices, self.axis)
        check_constant_indices(
            self.op_type, consts[1] if len(consts) > 1 else None, data[axis], f"axis {axis}"
        )
        return [indices]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        self.whole(self.op_type, part, reuse)
        data, indices, out = ins[0], ins[1], outs[0]
        axis = elements_shapes(self.op_type, data.shape, indices.shape, self.axis)
        if out.shape != indices.shape or out.dtype != data.dtype:
            raise ShapeError(
                f"GatherElements.bind: indices {indices.shape}, out {out.shape} {out.dtype}, data {data.dtype}"
            )
        # Only the block data[:indices.shape] off the axis is read: a view of it keeps the loops simple.
        block = tuple(slice(None) if a == axis else slice(0, n) for a, n in enumerate(indices.shape))
        src = moved_last(element_view(data)[block], axis)
        idx, dst = moved_last(indices, axis), moved_last(element_view(out), axis)
        size = data.shape[axis]

        def run_gather_elements():
            if not gather_elements(src, idx, dst):
                raise out_of_range(self.op_type, indices, size, f"axis {axis}")

        return run_gather_elements

    def reference(self, ins):
        data, indices = np.asarray(ins[0]), np.asarray(ins[1]).astype(np.int64)
        axis = normalize_axis(self.op_type, self.axis, data.ndim, data.shape)
        n = data.shape[axis]
        if indices.size and (indices.min() < -n or indices.max() >= n):
            raise out_of_range(self.op_type, indices, n, f"axis {axis}")
        block = tuple(slice(None) if a == axis else slice(0, s) for a, s in enumerate(indices.shape))
        return [np.take_along_axis(data[block], np.where(indices < 0, indices + n, indices), axis=axis)]


# ---- GatherND -----------------------------------------------------------------------------------


@kernel
def gather_nd(src, indices, dst, dims, batches, rows_per_batch, row):
    """dst row (b, n) = src row (b, offset of indices[b, n, :] in `dims`), rows of `row` bytes;
    src, indices (batches * N * k) and dst flat. Returns False at the first index out of range."""
    k = dims.size
    count = indices.size // k
    per_batch = count // batches
    for t in range(count):
        offset = 0
        for j in range(k):
            v = indices[t * k + j]
            d = dims[j]
            if v < -d or v >= d:
                return False
            if v < 0:
                v += d
            offset = offset * d + v
        b = t // per_batch
        copy(dst, t * row, src, (b * rows_per_batch + offset) * row, row)
    return True


def nd_shapes(op: str, data: Shape, indices: Shape, batch_dims: int) -> int:
    """k, the index tuple's length, after checking GatherND/ScatterND's shape rules."""
    if not data or not indices:
        raise ShapeError(f"{op}: data {data} and indices {indices} must have rank >= 1")
    b = batch_dims
    if not 0 <= b < min(len(data), len(indices)):
        raise ShapeError(f"{op}: batch_dims {b} must be below the ranks of data {data} and indices {indices}")
    if indices[:b] != data[:b]:
        raise ShapeError(f"{op}: the first {b} dimensions of indices {indices} and data {data} differ")
    k = indices[-1]
    if not 1 <= k <= len(data) - b:
        raise ShapeError(
            f"{op}: index tuples of length {k} (indices {indices}) for data {data}, batch_dims {b}"
        )
    return k


@register
@dataclass(frozen=True)
class GatherND(_Indexing):
    """ONNX GatherND (opsets 11, 12, 13): slices of data picked by index tuples (batch_dims since 12)."""

    op_type = "GatherND"
    batch_dims: int = 0

    def output_dtypes(self, dtypes):
        index_dtype(self.op_type, dtypes[1])
        return [data_dtype(self.op_type, dtypes[0])]

    def infer(self, shapes, consts):
        data, indices = tuple(shapes[0]), tuple(shapes[1])
        k = nd_shapes(self.op_type, data, indices, self.batch_dims)
        return [indices[:-1] + data[self.batch_dims + k :]]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        self.whole(self.op_type, part, reuse)
        data, indices, out = ins[0], ins[1], outs[0]
        b = self.batch_dims
        k = nd_shapes(self.op_type, data.shape, indices.shape, b)
        if out.dtype != data.dtype or out.shape != indices.shape[:-1] + data.shape[b + k :]:
            raise ShapeError(
                f"GatherND.bind: data {data.shape}, indices {indices.shape}, out {out.shape} {out.dtype}"
            )
        dims = np.array(data.shape[b : b + k], dtype=np.int64)
        batches = math.prod(data.shape[:b])
        rows_per_batch = math.prod(data.shape[b : b + k])
        row = math.prod(data.shape[b + k :]) * data.itemsize
        src, dst, flat = byte_view(data, (-1,)), byte_view(out, (-1,)), reshape_view(indices, (-1,))

        def run_gather_nd():
            if not gather_nd(src, flat, dst, dims, batches, rows_per_batch, row):
                raise out_of_range(
                    self.op_type, indices, np.broadcast_to(dims, indices.shape), "data dimensions"
                )

        return run_gather_nd

    def reference(self, ins):
        data, indices = np.asarray(ins[0]), np.asarray(ins[1]).astype(np.int64)
        b = self.batch_dims
        k = indices.shape[-1]
        dims = np.array(data.shape[b : b + k], dtype=np.int64)
        if indices.size and ((indices < -dims) | (indices >= dims)).any():
            raise out_of_range(self.op_type, indices, np.broadcast_to(dims, indices.shape), "data dimensions")
        indices = np.where(indices < 0, indices + dims, indices)
        batches = math.prod(data.shape[:b])
        flat_data = data.reshape((batches, *data.shape[b:]))
        flat_idx = indices.reshape(batches, -1, k)
        rows = [flat_data[(i, *map(int, t))] for i in range(batches) for t in flat_idx[i]]
        out_shape = indices.shape[:-1] + data.shape[b + k :]
        return [np.array(rows, dtype=data.dtype).reshape(out_shape)]
