"""Ops that move or mask data without arithmetic on it (Tile, Expand, DepthToSpace, SpaceToDepth,
Trilu), and CumSum. None has weights or scratch, so none is sliced: each runs whole.

Their parameters (Tile's repeats, Expand's shape, Trilu's k, CumSum's axis) are inputs that must be
constants known at import; they are absorbed into fields. The copies are views handed to the one
strided copy kernel (ops/strided.py), so they take every element type the arena holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import Op, broadcast_shapes, internal, register, require_rank
from flexnnd.ops.jit import kernel
from flexnnd.ops.slice import constant_ints
from flexnnd.ops.strided import Copy, flat_bits, same_dtype
from flexnnd.ops.tensor import normalize_axis


@dataclass(frozen=True)
class _Movement(Op):
    """One data input (input 0) of any movable type, one output of its type; its other inputs are
    constants absorbed by from_onnx."""

    def output_dtypes(self, dtypes):
        return [same_dtype(self.op_type, dtypes)]

    def flops(self, shapes, out_shapes):
        return 0


def _absorb(cls, attrs, consts, node, opset, pos: int, field: str, what: str, required: bool = True):
    """The op built with constant input `pos` as `field` (a tuple of ints); keeps input 0 only."""
    value = constant_ints(cls.op_type, node, opset, consts, pos, what, optional=not required)
    if value is None and required:
        raise UnsupportedOp(cls.op_type, node, opset, f"{what} (input {pos}) is missing")
    op, _ = Op.from_onnx.__func__(cls, attrs, consts[:1], node, opset)
    if value is not None:
        op = cls(**{**op.to_dict(), field: value})
        op.check(node, opset)
    return op, (0,)


@register
@dataclass(frozen=True)
class Tile(_Movement):
    op_type = "Tile"
    const_inputs = (1,)
    repeats: tuple[int, ...] = internal(())

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        return _absorb(cls, attrs, consts, node, opset, 1, "repeats", "repeats")

    def infer(self, shapes, consts):
        shape = tuple(shapes[0])
        if len(self.repeats) != len(shape) or any(r < 0 for r in self.repeats):
            raise ShapeError(f"Tile: repeats {self.repeats} do not fit shape {shape}")
        return [tuple(d * r for d, r in zip(shape, self.repeats, strict=True))]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = ins[0], outs[0]
        src, dst = flat_bits(x), flat_bits(y)
        # The output as (repeat, extent) pairs per axis; the input read with stride 0 along repeats.
        pairs = tuple(v for r, d in zip(self.repeats, x.shape, strict=True) for v in (r, d))
        whole = src.reshape(x.shape)
        strides = tuple(v for s in whole.strides for v in (0, s))
        tiled = np.lib.stride_tricks.as_strided(whole, pairs, strides, writeable=False)
        return Copy.between(tiled, src, dst.reshape(pairs), dst)

    def reference(self, ins):
        return [np.tile(ins[0], self.repeats)]


@register
@dataclass(frozen=True)
class Expand(_Movement):
    """Expand: numpy's two-way broadcast of the input against a constant shape."""

    op_type = "Expand"
    const_inputs = (1,)
    shape: tuple[int, ...] = internal(())

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        return _absorb(cls, attrs, consts, node, opset, 1, "shape", "shape")

    def infer(self, shapes, consts):
        if any(d < 0 for d in self.shape):
            raise ShapeError(f"Expand: shape {self.shape} has a negative dimension")
        return [broadcast_shapes("Expand", tuple(shapes[0]), self.shape)]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = ins[0], outs[0]
        src, dst = flat_bits(x), flat_bits(y)
        lead = (1,) * (y.ndim - x.ndim)
        return Copy.between(
            np.broadcast_to(src.reshape(lead + x.shape), y.shape), src, dst.reshape(y.shape), dst
        )

    def reference(self, ins):
        x = np.asarray(ins[0])
        return [np.broadcast_to(x, broadcast_shapes("Expand", x.shape, self.shape)).copy()]


@dataclass(frozen=True)
class _Blocks(_Movement):
    """DepthToSpace / SpaceToDepth: a 6-D reshape, transpose and reshape of an NCHW tensor."""

    blocksize: int = 0
    mode: str = "DCR"

    def check(self, node, opset):
        if self.blocksize < 1:
            raise UnsupportedOp(self.op_type, node, opset, f"blocksize {self.blocksize}")
        if self.mode not in ("DCR", "CRD"):
            raise UnsupportedOp(self.op_type, node, opset, f"mode {self.mode!r} (DCR or CRD)")

    def views(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x and y as 6-D views of one shape, x's transposed, so that y = x."""
        raise NotImplementedError

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = ins[0], outs[0]
        src, dst = flat_bits(x), flat_bits(y)
        read, write = self.views(src.reshape(x.shape), dst.reshape(y.shape))
        return Copy.between(read, src, write, dst)

    def reference(self, ins):
        x = np.asarray(ins[0])
        (shape,) = self.infer([x.shape], [None])
        y = np.empty(shape, x.dtype)
        read, write = self.views(x, y)
        write[...] = read
        return [y]


@register
@dataclass(frozen=True)
class DepthToSpace(_Blocks):
    op_type = "DepthToSpace"

    def infer(self, shapes, consts):
        b, c, h, w = require_rank("DepthToSpace", shapes[0], (4,))
        bs = self.blocksize
        if c % (bs * bs):
            raise ShapeError(f"DepthToSpace: {c} channels of {tuple(shapes[0])} are not a multiple of {bs}²")
        return [(b, c // (bs * bs), h * bs, w * bs)]

    def views(self, x, y):
        b, c, h, w = x.shape
        bs = self.blocksize
        if self.mode == "DCR":
            read = x.reshape(b, bs, bs, c // (bs * bs), h, w).transpose(0, 3, 4, 1, 5, 2)
        else:
            read = x.reshape(b, c // (bs * bs), bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
        return read, y.reshape(read.shape)


@register
@dataclass(frozen=True)
class SpaceToDepth(_Blocks):
    op_type = "SpaceToDepth"

    def infer(self, shapes, consts):
        b, c, h, w = require_rank("SpaceToDepth", shapes[0], (4,))
        bs = self.blocksize
        if h % bs or w % bs:
            raise ShapeError(f"SpaceToDepth: {h}x{w} of {tuple(shapes[0])} is not a multiple of {bs}")
        return [(b, c * bs * bs, h // bs, w // bs)]

    def views(self, x, y):
        b, c, h, w = x.shape
        bs = self.blocksize
        blocks = x.reshape(b, c, h // bs, bs, w // bs, bs)
        read = (
            blocks.transpose(0, 3, 5, 1, 2, 4) if self.mode == "DCR" else blocks.transpose(0, 1, 3, 5, 2, 4)
        )
        return read, y.reshape(read.shape)


# ---- Trilu ----------------------------------------------------------------------------------------


@kernel
def trilu(src, dst, matrices, rows, cols, k, upper):
    """dst = src with the elements below diagonal k (upper) or above it (lower) zeroed; flat arrays
    of `matrices` row-major rows x cols matrices, seen as unsigned integers (0 is every type's zero)."""
    for m in range(matrices):
        for i in range(rows):
            row = np.uint64((m * rows + i) * cols)
            if upper:  # keep columns j >= i + k
                first = np.uint64(min(max(i + k, 0), cols))
                for j in range(first):
                    dst[row + j] = 0
                for j in range(first, np.uint64(cols)):
                    dst[row + j] = src[row + j]
            else:  # keep columns j <= i + k
                stop = np.uint64(min(max(i + k + 1, 0), cols))
                for j in range(stop):
                    dst[row + j] = src[row + j]
                for j in range(stop, np.uint64(cols)):
                    dst[row + j] = 0


@register
@dataclass(frozen=True)
class Trilu(_Movement):
    op_type = "Trilu"
    const_inputs = (1,)
    optional_inputs = (1,)
    upper: int = 1
    k: int = internal(0)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        op, keep = _absorb(cls, attrs, consts, node, opset, 1, "k", "k", required=False)
        if isinstance(op.k, tuple):
            if len(op.k) != 1:
                raise UnsupportedOp(cls.op_type, node, opset, f"k has {len(op.k)} elements")
            op = cls(upper=op.upper, k=op.k[0])
        return op, keep

    def infer(self, shapes, consts):
        if shapes[0] is None or len(shapes[0]) < 2:
            raise ShapeError(f"Trilu: input must have rank 2 or more, got shape {shapes[0]}")
        return [tuple(shapes[0])]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = ins[0], outs[0]
        src, dst = flat_bits(x), flat_bits(y)
        if x.shape != y.shape:
            raise ShapeError(f"Trilu.bind: input {x.shape}, output {y.shape}")
        rows, cols = x.shape[-2:]
        matrices, k, upper = x.size // (rows * cols), self.k, bool(self.upper)
        return lambda: trilu(src, dst, matrices, rows, cols, k, upper)

    def reference(self, ins):
        x = np.asarray(ins[0])
        return [np.triu(x, self.k) if self.upper else np.tril(x, self.k)]


# ---- CumSum ---------------------------------------------------------------------------------------


@kernel
def cumsum(src, dst, outer, n, inner, exclusive, reverse):
    """dst = the running sum of src along the middle axis of (outer, n, inner), flat arrays."""
    for o in range(outer):
        base = o * n * inner
        for t in range(n):
            at = base + ((n - 1 - t) if reverse else t) * inner
            before = at + inner if reverse else at - inner  # the previous position along the sum
            if t == 0:
                for q in range(inner):
                    dst[at + q] = 0 if exclusive else src[at + q]
            elif exclusive:
                for q in range(inner):
                    dst[at + q] = dst[before + q] + src[before + q]
            else:
                for q in range(inner):
                    dst[at + q] = dst[before + q] + src[at + q]


CUMSUM_DTYPES = ("float32", "int32", "int64")


@register
@dataclass(frozen=True)
class CumSum(Op):
    op_type = "CumSum"
    const_inputs = (1,)
    exclusive: int = 0
    reverse: int = 0
    axis: int = internal(0)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        op, keep = _absorb(cls, attrs, consts, node, opset, 1, "axis", "axis")
        if len(op.axis) != 1:
            raise UnsupportedOp(cls.op_type, node, opset, f"axis has {len(op.axis)} elements")
        return cls(exclusive=op.exclusive, reverse=op.reverse, axis=op.axis[0]), keep

    def output_dtypes(self, dtypes):
        if dtypes[0] not in CUMSUM_DTYPES:
            raise DtypeRefused(f"input 0 is {dtypes[0]}; CumSum takes {', '.join(CUMSUM_DTYPES)}")
        return [dtypes[0]]

    def infer(self, shapes, consts):
        shape = tuple(shapes[0])
        normalize_axis("CumSum", self.axis, len(shape), shape)
        return [shape]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = ins[0], outs[0]
        if x.shape != y.shape or x.dtype != y.dtype:
            raise ShapeError(f"CumSum.bind: input {x.shape} {x.dtype}, output {y.shape} {y.dtype}")
        axis = normalize_axis("CumSum", self.axis, x.ndim, x.shape)
        outer = int(np.prod(x.shape[:axis], dtype=np.int64))
        n, inner = x.shape[axis], int(np.prod(x.shape[axis + 1 :], dtype=np.int64))
        src, dst = x.reshape(-1), y.reshape(-1)
        if not (np.shares_memory(src, x) and np.shares_memory(dst, y)):
            raise ValueError(f"CumSum.bind: buffers {x.strides}, {y.strides} are not contiguous")
        exclusive, reverse = bool(self.exclusive), bool(self.reverse)
        return lambda: cumsum(src, dst, outer, n, inner, exclusive, reverse)

    def reference(self, ins):
        x = np.asarray(ins[0])
        axis = normalize_axis("CumSum", self.axis, x.ndim, x.shape)
        wide = x.astype(np.float64) if x.dtype.kind == "f" else x
        if self.reverse:
            wide = np.flip(wide, axis)
        total = np.cumsum(wide, axis=axis)
        if self.exclusive:
            total = np.concatenate(
                [np.zeros_like(np.take(total, [0], axis)), np.take(total, range(x.shape[axis] - 1), axis)],
                axis,
            )
        if self.reverse:
            total = np.flip(total, axis)
        return [np.ascontiguousarray(total).astype(x.dtype)]
