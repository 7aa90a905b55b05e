"""Slice at run time: a strided window of the input, any element type.

starts/ends/axes are attributes before opset 10 and constant inputs (with steps) since; they are
absorbed into fields at import and normalized as ONNX says (negative values count from the end,
then clamped; INT64_MAX means "to the end"). The kernel is one strided copy (ops/strided.py), a
negative step being a negative stride.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.base import Op, internal, register
from flexnnd.ops.strided import Copy, flat_bits, same_dtype
from flexnnd.ops.tensor import normalize_axis


def constant_ints(
    op_type: str, node: str, opset: int, consts, pos: int, what: str, optional: bool = False
) -> tuple[int, ...] | None:
    """Input `pos` as a tuple of ints, or None when absent. A required one computed at run time is an
    UnsupportedOp; an optional one reads as None whether absent or computed, and the importer
    refuses the latter (a named input the op does not keep must be a constant)."""
    if len(consts) <= pos or (consts[pos] is None and optional):
        return None
    if consts[pos] is None:
        raise UnsupportedOp(op_type, node, opset, f"{what} (input {pos}) is not a constant")
    return tuple(int(v) for v in np.asarray(consts[pos]).reshape(-1))


@register
@dataclass(frozen=True)
class Slice(Op):
    op_type = "Slice"
    const_inputs = (1, 2, 3, 4)
    optional_inputs = (3, 4)
    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()
    axes: tuple[int, ...] | None = None  # None: 0 .. len(starts) - 1
    steps: tuple[int, ...] = internal(None)  # None: all 1 (an input since opset 10)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        attrs = dict(attrs)
        if opset >= 10:
            if set(attrs):
                raise UnsupportedOp(cls.op_type, node, opset, f"attribute(s) {sorted(attrs)} not supported")
            for pos, name in enumerate(("starts", "ends", "axes", "steps"), start=1):
                value = constant_ints(cls.op_type, node, opset, consts, pos, name, optional=pos > 2)
                if value is not None:
                    attrs[name] = value
            if "starts" not in attrs or "ends" not in attrs:
                raise UnsupportedOp(cls.op_type, node, opset, "starts and ends are required")
            op = cls(**attrs)
            op.check(node, opset)
        else:
            op, _ = super().from_onnx(attrs, consts[:1], node, opset)
        return op, (0,)

    def check(self, node, opset):
        n = len(self.starts)
        lengths = [len(self.ends), n if self.axes is None else len(self.axes)]
        lengths.append(n if self.steps is None else len(self.steps))
        if any(k != n for k in lengths):
            raise UnsupportedOp(
                self.op_type, node, opset, f"starts, ends, axes and steps differ in length: {[n, *lengths]}"
            )
        if self.steps is not None and 0 in self.steps:
            raise UnsupportedOp(self.op_type, node, opset, f"steps {self.steps} contain 0")

    def output_dtypes(self, dtypes):
        return [same_dtype(self.op_type, dtypes)]

    def windows(self, shape) -> list[slice]:
        """One Python slice per axis of `shape`, normalized and clamped as ONNX says."""
        rank = len(shape)
        axes = range(len(self.starts)) if self.axes is None else self.axes
        steps = self.steps or (1,) * len(self.starts)
        index = [slice(None)] * rank
        seen = set()
        for start, end, axis, step in zip(self.starts, self.ends, axes, steps, strict=True):
            a = normalize_axis("Slice", axis, rank, tuple(shape))
            if a in seen:
                raise ShapeError(f"Slice: axis {axis} repeated in {tuple(axes)} (shape {tuple(shape)})")
            seen.add(a)
            # Python's slice.indices clamps as ONNX does, for either sign of step and any magnitude.
            first, stop, step = slice(start, end, step).indices(shape[a])
            index[a] = slice(first, stop if stop >= 0 else None, step)  # stop -1: past the front
        return index

    def infer(self, shapes, consts):
        shape = tuple(shapes[0])
        return [tuple(len(range(*w.indices(n))) for w, n in zip(self.windows(shape), shape, strict=True))]

    def flops(self, shapes, out_shapes):
        return 0

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = ins[0], outs[0]
        src, dst = flat_bits(x), flat_bits(y)
        window = src.reshape(x.shape)[tuple(self.windows(x.shape))]
        if window.shape != y.shape:
            raise ShapeError(f"Slice.bind: input {x.shape} gives {window.shape}, output is {y.shape}")
        return Copy.between(window, src, dst.reshape(y.shape), dst)

    def reference(self, ins):
        x = np.asarray(ins[0])
        return [x[tuple(self.windows(x.shape))].copy()]
