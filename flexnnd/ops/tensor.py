"""Tensor plumbing: Flatten, Reshape, Squeeze, Unsqueeze, Identity, Dropout, Concat, Transpose.

The first six are alias ops: output 0 is input 0 with another shape, so the executor gives them
no memory of their own and `bind` returns a no-op (handed memory of its own, say for a graph
output that is also an input, `bind` copies instead). Their constant parameter inputs (Reshape's
shape, Squeeze/Unsqueeze's axes) are absorbed into fields at import, and a non-constant one is
an UnsupportedOp: every shape must be static. All of them take every element type the arena holds
(ops/strided.py: MOVABLE_DTYPES): they only move bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.graph.ir import Shape
from flexnnd.ops.base import Op, internal, register
from flexnnd.ops.jit import kernel
from flexnnd.ops.strided import Copy, flat_bits, run_all, same_dtype


def reshaped(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """`a` viewed with another shape; never a copy (arena views must stay views)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous buffer, got strides {a.strides} for shape {a.shape}")
    return a.reshape(tuple(shape))


def normalize_axis(op: str, axis: int, rank: int, shape: Shape | None = None) -> int:
    """`axis` in [0, rank), from ONNX's [-rank, rank); a ShapeError naming the shape otherwise."""
    if not -rank <= axis < rank:
        raise ShapeError(f"{op}: axis {axis} is out of range for rank {rank} (shape {shape})")
    return axis % rank


def _noop() -> None:
    pass


@kernel
def copy_flat(src, dst):
    """dst = src over flat contiguous arrays of the same size."""
    for i in range(dst.size):
        dst[i] = src[i]


# ---- alias ops ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Alias(Op):
    """Output 0 is input 0 reinterpreted: no kernel, no memory of its own."""

    alias = True

    def output_dtypes(self, dtypes):
        return [same_dtype(self.op_type, dtypes)]

    def flops(self, shapes, out_shapes):
        return 0

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        src, dst = ins[0], outs[0]
        if np.may_share_memory(src, dst):
            return _noop
        # The executor gave the output its own memory (e.g. a graph output that is an input): copy.
        src_flat, dst_flat = flat_bits(src), flat_bits(dst)
        return lambda: copy_flat(src_flat, dst_flat)

    def reference(self, ins):
        return [np.asarray(ins[0]).reshape(self.infer([tuple(ins[0].shape)], [None])[0]).copy()]


@register
@dataclass(frozen=True)
class Identity(_Alias):
    op_type = "Identity"

    def infer(self, shapes, consts):
        return [tuple(shapes[0])]


@register
@dataclass(frozen=True)
class Dropout(_Alias):
    """Dropout at inference: the identity.

    Rejected at import: training_mode true or not a constant. The importer rejects a node that
    asks for the second output ("mask"); `from_onnx` does not see outputs.
    """

    op_type = "Dropout"
    optional_inputs = (1, 2)
    const_inputs = (2,)
    seed: int = 0
    ratio: float = 0.5  # an attribute before opset 12, an input since; unused at inference

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        if len(consts) > 2:
            mode = consts[2]
            if mode is None:
                raise UnsupportedOp(cls.op_type, node, opset, "training_mode is not a constant")
            if bool(np.asarray(mode).reshape(())):
                raise UnsupportedOp(cls.op_type, node, opset, "training_mode is true")
        op, _ = super().from_onnx(attrs, consts[:1], node, opset)
        return op, (0,)

    def infer(self, shapes, consts):
        return [tuple(shapes[0])]


@register
@dataclass(frozen=True)
class Flatten(_Alias):
    op_type = "Flatten"
    axis: int = 1

    def infer(self, shapes, consts):
        shape = tuple(shapes[0])
        rank = len(shape)
        if not -rank <= self.axis <= rank:
            raise ShapeError(f"Flatten: axis {self.axis} is out of range for shape {shape}")
        axis = self.axis + rank if self.axis < 0 else self.axis
        return [(int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))]


@register
@dataclass(frozen=True)
class Reshape(_Alias):
    """Reshape; the target shape (a constant input since opset 5) is absorbed into `shape`."""

    op_type = "Reshape"
    const_inputs = (1,)
    allowzero: int = 0
    shape: tuple[int, ...] = internal(())

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        if len(consts) < 2 or consts[1] is None:
            raise UnsupportedOp(cls.op_type, node, opset, "the target shape is not a constant")
        op, _ = super().from_onnx(attrs, consts[:1], node, opset)
        target = tuple(int(d) for d in np.asarray(consts[1]).reshape(-1))
        return cls(allowzero=op.allowzero, shape=target), (0,)

    def infer(self, shapes, consts):
        src = tuple(shapes[0])
        bad = f"Reshape: cannot reshape {src} to {self.shape}"
        out = []
        for i, d in enumerate(self.shape):
            if d == 0 and not self.allowzero:
                if i >= len(src):
                    raise ShapeError(f"{bad}: 0 at position {i} copies a dimension the input lacks")
                d = src[i]
            out.append(d)
        if out.count(-1) > 1 or any(d < -1 for d in out):
            raise ShapeError(f"{bad}: at most one -1 and no other negative dimension")
        size = int(np.prod(src, dtype=np.int64))
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if -1 in out:
            if known == 0 or size % known:
                raise ShapeError(f"{bad}: {size} elements do not divide into blocks of {known}")
            out[out.index(-1)] = size // known
        elif known != size:
            raise ShapeError(f"{bad}: {size} elements vs {known}")
        return [tuple(out)]


@dataclass(frozen=True)
class _AxesOp(_Alias):
    """Squeeze/Unsqueeze: `axes` is an attribute before opset 13, a constant input since."""

    optional_inputs = (1,)
    const_inputs = (1,)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        attrs = dict(attrs)
        if len(consts) > 1:  # the importer drops an absent trailing input
            if consts[1] is None:
                raise UnsupportedOp(cls.op_type, node, opset, "axes is not a constant")
            attrs["axes"] = tuple(int(a) for a in np.asarray(consts[1]).reshape(-1))
        op, _ = super().from_onnx(attrs, consts[:1], node, opset)
        return op, (0,)


@register
@dataclass(frozen=True)
class Squeeze(_AxesOp):
    op_type = "Squeeze"
    axes: tuple[int, ...] | None = None  # None: every dimension of size 1

    def infer(self, shapes, consts):
        shape = tuple(shapes[0])
        if self.axes is None:
            return [tuple(d for d in shape if d != 1)]
        axes = {normalize_axis("Squeeze", a, len(shape), shape) for a in self.axes}
        if len(axes) != len(self.axes):
            raise ShapeError(f"Squeeze: repeated axis in {self.axes} (shape {shape})")
        if any(shape[a] != 1 for a in axes):
            raise ShapeError(f"Squeeze: axes {self.axes} of shape {shape} are not all of size 1")
        return [tuple(d for i, d in enumerate(shape) if i not in axes)]


@register
@dataclass(frozen=True)
class Unsqueeze(_AxesOp):
    op_type = "Unsqueeze"
    axes: tuple[int, ...] = ()

    def check(self, node, opset):
        if not self.axes:
            raise UnsupportedOp(self.op_type, node, opset, "axes is missing")

    def infer(self, shapes, consts):
        shape = tuple(shapes[0])
        rank = len(shape) + len(self.axes)
        axes = {normalize_axis("Unsqueeze", a, rank, shape) for a in self.axes}
        if len(axes) != len(self.axes):
            raise ShapeError(f"Unsqueeze: repeated axis in {self.axes} (shape {shape})")
        rest = iter(shape)
        return [tuple(1 if i in axes else next(rest) for i in range(rank))]


# ---- copies -------------------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class Concat(Op):
    """Concat: each input is copied into its column band of the output seen as (outer, rest).

    Where the bands are contiguous (every dimension before the axis is 1), the planner has the
    producers write straight into them (concat_axis, graph/elision.py) and this kernel never runs.
    """

    op_type = "Concat"
    axis: int = 0

    def output_dtypes(self, dtypes):
        return [same_dtype(self.op_type, dtypes, range(len(dtypes)))]

    def infer(self, shapes, consts):
        first = tuple(shapes[0])
        axis = normalize_axis("Concat", self.axis, len(first), first)
        for s in shapes[1:]:
            if len(s) != len(first) or any(s[i] != first[i] for i in range(len(first)) if i != axis):
                raise ShapeError(
                    f"Concat: shapes {[tuple(s) for s in shapes]} differ outside axis {self.axis}"
                )
        return [(*first[:axis], sum(s[axis] for s in shapes), *first[axis + 1 :])]

    def flops(self, shapes, out_shapes):
        return 0

    def concat_axis(self):
        return self.axis

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        out = outs[0]
        axis = normalize_axis("Concat", self.axis, out.ndim, out.shape)
        outer = int(np.prod(out.shape[:axis], dtype=np.int64))
        dst = flat_bits(out)
        bands = dst.reshape(outer, -1)
        widths = [x.size // outer for x in ins]
        if sum(widths) != bands.shape[1] or any(x.dtype != out.dtype or x.size % outer for x in ins):
            raise ShapeError(
                f"Concat: inputs {[(x.shape, str(x.dtype)) for x in ins]} do not fill output {out.shape} {out.dtype}"
            )
        copies, col = [], 0
        for x, width in zip(ins, widths, strict=True):
            src = flat_bits(x)
            copies.append(Copy.between(src.reshape(outer, width), src, bands[:, col : col + width], dst))
            col += width
        return run_all(copies)

    def reference(self, ins):
        return [np.concatenate([np.asarray(x) for x in ins], axis=self.axis)]


@register
@dataclass(frozen=True)
class Transpose(Op):
    op_type = "Transpose"
    perm: tuple[int, ...] | None = None  # None: reverse the axes

    def _perm(self, rank: int, shape: Shape) -> tuple[int, ...]:
        perm = tuple(range(rank))[::-1] if self.perm is None else self.perm
        if sorted(perm) != list(range(rank)):
            raise ShapeError(f"Transpose: perm {perm} is not a permutation of the axes of shape {shape}")
        return perm

    def output_dtypes(self, dtypes):
        return [same_dtype(self.op_type, dtypes)]

    def infer(self, shapes, consts):
        shape = tuple(shapes[0])
        perm = self._perm(len(shape), shape)
        return [tuple(shape[a] for a in perm)]

    def flops(self, shapes, out_shapes):
        return 0

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = ins[0], outs[0]
        perm = self._perm(x.ndim, x.shape)
        src, dst = flat_bits(x), flat_bits(y)
        # Strided reads, contiguous writes: the copy merges the axes that stay adjacent.
        return Copy.between(src.reshape(x.shape).transpose(perm), src, dst.reshape(y.shape), dst)

    def reference(self, ins):
        return [np.ascontiguousarray(np.transpose(ins[0], self.perm))]
