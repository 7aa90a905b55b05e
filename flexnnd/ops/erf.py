"""Erf, the Gauss error function, elementwise (ONNX opset 9 and 13, no attributes).

Real models use it for GELU, x * 0.5 * (1 + erf(x / sqrt(2))), in BERT-style transformers. It has
no weights and no scratch, so it is never sliced: it runs whole, priced by the bytes it moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError
from flexnnd.ops.base import Op, register
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.jit import kernel


@kernel
def erf(src, dst):
    """dst = erf(src) over flat contiguous float32 arrays (src may be dst)."""
    for i in range(src.size):
        dst[i] = math.erf(src[i])


@register
@dataclass(frozen=True)
class Erf(Op):
    """ONNX Erf: one input, one output of its shape."""

    op_type = "Erf"

    def infer(self, shapes, consts):
        if shapes[0] is None:
            raise ShapeError("Erf: input shape unknown")
        return [tuple(shapes[0])]

    def slice_axes(self, shapes, out_shapes):
        return ()  # no weights to cut and no scratch to shrink: it runs whole

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"Erf.bind: Erf is not sliced, got part {part}")
        x, y = ins[0], outs[0]
        if x.shape != y.shape or x.dtype != np.float32 or y.dtype != np.float32:
            raise ShapeError(f"Erf.bind: input {x.shape} {x.dtype}, output {y.shape} {y.dtype}")
        src, dst = reshape_view(x, (-1,)), reshape_view(y, (-1,))

        def run_erf():
            erf(src, dst)

        return run_erf

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float64)
        return [np.vectorize(math.erf, otypes=[np.float64])(x).astype(np.float32)]
