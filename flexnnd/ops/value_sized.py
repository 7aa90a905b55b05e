"""NonZero and Range: ops whose output's size is their input's values, not its shape.

flexnn plans every tensor's size at import, so these run only where those values are known then:
with constant inputs the importer computes them (graph/fold.py, as ONNX Runtime does), which covers
the shape computations exporters write them in (positions = Range(0, Shape(x)[1], 1)). A node that
reaches these classes reads a tensor computed at run time, and is refused saying so.
"""

from __future__ import annotations

from dataclasses import dataclass

from flexnnd.errors import UnsupportedOp
from flexnnd.ops.base import Op, register

CONSTANT_ONLY = frozenset({"NonZero", "Range"})  # registered only to refuse: `flexnnctl check` says so
RUN_TIME_SIZE = "output size depends on run-time values (computed at import only when {} constant)"


class _ValueSized(Op):
    inputs_named = ""

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        raise UnsupportedOp(cls.op_type, node, opset, RUN_TIME_SIZE.format(cls.inputs_named))


@register
@dataclass(frozen=True)
class NonZero(_ValueSized):
    """ONNX NonZero (opsets 9, 13): the indices of the input's nonzero elements, (rank, count)."""

    op_type = "NonZero"
    inputs_named = "its input is"


@register
@dataclass(frozen=True)
class Range(_ValueSized):
    """ONNX Range (opset 11): start, start + delta, ... below limit."""

    op_type = "Range"
    inputs_named = "start, limit and delta are"
