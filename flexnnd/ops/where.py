"""Where: out = X where the condition holds, else Y, all three broadcast as numpy does (opsets 9, 16).

Masks in transformers (attention masks, padding) and detectors' score thresholds. The condition is
bool; X and Y share any element type flexnn holds, and since the op only picks elements, it copies
them as unsigned integers of their size: one compiled kernel per element size. Axes along which
every operand is either whole or broadcast are merged first, so the 6-D loop is short.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError
from flexnnd.graph.ir import Shape
from flexnnd.ops.base import Op, broadcast_shapes, register
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.gather import MAX_RANK, data_dtype, element_view
from flexnnd.ops.jit import kernel


@kernel
def where6(cond, x, y, out):
    """out = cond ? x : y over MAX_RANK-D views of out's shape (inputs may have zero strides)."""
    d0, d1, d2, d3, d4, d5 = out.shape
    for i0 in range(d0):
        for i1 in range(d1):
            for i2 in range(d2):
                for i3 in range(d3):
                    for i4 in range(d4):
                        for i5 in range(d5):
                            if cond[i0, i1, i2, i3, i4, i5]:
                                out[i0, i1, i2, i3, i4, i5] = x[i0, i1, i2, i3, i4, i5]
                            else:
                                out[i0, i1, i2, i3, i4, i5] = y[i0, i1, i2, i3, i4, i5]


def merged_broadcast(out: Shape, shapes: list[Shape]) -> tuple[Shape, list[Shape]]:
    """`out` and each operand's shape with adjacent axes merged where every operand is either whole
    or size 1 on both (size-1 axes of `out` dropped): the same broadcast with fewer, longer loops."""
    rank = len(out)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    groups: list[tuple[tuple[bool, ...], list[int]]] = []
    for axis in range(rank):
        if out[axis] == 1:
            continue
        pattern = tuple(s[axis] == 1 for s in padded)
        if groups and groups[-1][0] == pattern:
            groups[-1][1].append(axis)
        else:
            groups.append((pattern, [axis]))
    merged_out = tuple(math.prod(out[a] for a in axes) for _, axes in groups)
    merged = [
        tuple(1 if pattern[i] else math.prod(out[a] for a in axes) for pattern, axes in groups)
        for i in range(len(shapes))
    ]
    return merged_out, merged


def broadcast_views(out: np.ndarray, arrays: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """MAX_RANK-D views of `out` and of every array broadcast to it (zero strides, no copies)."""
    shape, shapes = merged_broadcast(out.shape, [a.shape for a in arrays])
    pad = (1,) * (MAX_RANK - len(shape))
    views = [
        np.broadcast_to(reshape_view(a, pad + s), pad + shape) for a, s in zip(arrays, shapes, strict=True)
    ]
    return reshape_view(out, pad + shape), views


@register
@dataclass(frozen=True)
class Where(Op):
    op_type = "Where"

    def output_dtypes(self, dtypes):
        cond, x, y = dtypes[:3]
        if cond != "bool":
            raise DtypeRefused(f"Where: the condition is {cond}; it must be bool")
        if x != y:
            raise DtypeRefused(f"Where: X is {x} and Y is {y}; they must have one type")
        return [data_dtype("Where", x, "X")]

    def infer(self, shapes, consts):
        out = broadcast_shapes("Where", *[tuple(s) for s in shapes[:3]])
        merged, _ = merged_broadcast(out, [tuple(s) for s in shapes[:3]])
        if len(merged) > MAX_RANK:
            raise ShapeError(f"Where: shapes {list(shapes)} need {len(merged)} loops, above {MAX_RANK}")
        return [out]

    def slice_axes(self, shapes, out_shapes):
        return ()  # no weights: it runs whole

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"Where.bind: Where is not sliced, got part {part}")
        out = outs[0]
        # A constant scalar is stored as shape (1,); read it as the scalar it is.
        cond, x, y = (a.reshape(()) if a.ndim > out.ndim and a.size == 1 else a for a in ins[:3])
        want = broadcast_shapes("Where", cond.shape, x.shape, y.shape)
        if out.shape != want or cond.dtype != np.bool_ or not x.dtype == y.dtype == out.dtype:
            raise ShapeError(
                f"Where.bind: condition {cond.shape} {cond.dtype}, X {x.shape} {x.dtype}, "
                f"Y {y.shape} {y.dtype}, out {out.shape} {out.dtype}"
            )
        dst, (c6, x6, y6) = broadcast_views(element_view(out), [cond, element_view(x), element_view(y)])

        def run_where():
            where6(c6, x6, y6, dst)

        return run_where

    def reference(self, ins):
        return [np.where(np.asarray(ins[0], dtype=bool), ins[1], ins[2])]
