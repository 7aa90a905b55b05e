"""Split: the input cut along one axis into several outputs, any element type.

The sizes are the `split` attribute (opsets 2-12) or a constant input (13+), or, since opset 18,
`num_outputs` equal chunks of ceil(d / num_outputs) with a smaller last one. Without either (opsets
up to 17), ONNX splits equally among the node's outputs (for_outputs tells the op how many).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.base import Op, internal, register
from flexnnd.ops.slice import constant_ints
from flexnnd.ops.strided import Copy, flat_bits, run_all, same_dtype
from flexnnd.ops.tensor import normalize_axis


@register
@dataclass(frozen=True)
class Split(Op):
    op_type = "Split"
    const_inputs = (1,)
    optional_inputs = (1,)
    axis: int = 0
    num_outputs: int | None = None
    split: tuple[int, ...] | None = internal(None)  # an attribute before opset 13, an input since
    outputs: int = internal(0)  # the node's outputs, for equal parts without split or num_outputs

    @classmethod
    def accepted_attributes(cls, opset):
        return cls.onnx_attribute_names() | ({"split"} if opset < 13 else set())  # an input since 13

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        attrs = dict(attrs)
        unknown = set(attrs) - cls.accepted_attributes(opset)
        if unknown:
            raise UnsupportedOp(cls.op_type, node, opset, f"attribute(s) {sorted(unknown)} not supported")
        if "split" in attrs:
            attrs["split"] = tuple(int(v) for v in attrs["split"])
        sizes = constant_ints(cls.op_type, node, opset, consts, 1, "split", optional=True)
        if sizes is not None:
            attrs["split"] = sizes
        op = cls(**attrs)
        op.check(node, opset)
        return op, (0,)

    def for_outputs(self, count):
        if self.split is None and self.num_outputs is None:
            return dataclasses.replace(self, outputs=count)
        return self

    def check(self, node, opset):
        if self.split is not None and self.num_outputs is not None:
            raise UnsupportedOp(self.op_type, node, opset, "both split and num_outputs are given")
        if self.num_outputs is not None and self.num_outputs < 1:
            raise UnsupportedOp(self.op_type, node, opset, f"num_outputs is {self.num_outputs}")
        if self.split is not None and any(s < 0 for s in self.split):
            raise UnsupportedOp(self.op_type, node, opset, f"split {self.split} has a negative size")

    def output_dtypes(self, dtypes):
        count = len(self.split) if self.split is not None else self.num_outputs or self.outputs
        return [same_dtype(self.op_type, dtypes)] * count

    def sizes(self, shape) -> tuple[int, tuple[int, ...]]:
        """The normalized axis and each output's extent along it."""
        axis = normalize_axis("Split", self.axis, len(shape), tuple(shape))
        d = shape[axis]
        if self.split is not None:
            if sum(self.split) != d:
                raise ShapeError(
                    f"Split: sizes {self.split} do not add up to {d} (axis {self.axis} of {tuple(shape)})"
                )
            return axis, self.split
        if self.num_outputs is None:  # equal parts among the node's outputs (opsets up to 17)
            if not self.outputs or d % self.outputs:
                raise ShapeError(
                    f"Split: no sizes, and {d} (axis {self.axis} of {tuple(shape)}) does not split equally "
                    f"among {self.outputs} outputs"
                )
            return axis, (d // self.outputs,) * self.outputs
        chunk = -(-d // self.num_outputs)
        if chunk * (self.num_outputs - 1) >= d:
            raise ShapeError(
                f"Split: {d} (axis {self.axis} of {tuple(shape)}) cannot make {self.num_outputs} parts"
            )
        return axis, (chunk,) * (self.num_outputs - 1) + (d - chunk * (self.num_outputs - 1),)

    def infer(self, shapes, consts):
        shape = tuple(shapes[0])
        axis, sizes = self.sizes(shape)
        return [(*shape[:axis], n, *shape[axis + 1 :]) for n in sizes]

    def flops(self, shapes, out_shapes):
        return 0

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x = ins[0]
        axis, sizes = self.sizes(x.shape)
        src = flat_bits(x)
        whole = src.reshape(x.shape)
        copies, start = [], 0
        for y, n in zip(outs, sizes, strict=False):  # outputs past the last one named are not computed
            index = (slice(None),) * axis + (slice(start, start + n),)
            if whole[index].shape != y.shape:
                raise ShapeError(f"Split.bind: part {whole[index].shape} of {x.shape} into output {y.shape}")
            dst = flat_bits(y)
            copies.append(Copy.between(whole[index], src, dst.reshape(y.shape), dst))
            start += n
        return run_all(copies)

    def reference(self, ins):
        x = np.asarray(ins[0])
        axis, sizes = self.sizes(x.shape)
        return [part.copy() for part in np.split(x, np.cumsum(sizes)[:-1], axis=axis)]
