"""BatchNormalization in inference mode, for a BN that no Conv absorbed (the import folds the rest).

prepare() folds scale, bias, mean and variance into one per-channel affine map y = a*x + b, and
the kernel applies it (and a fused activation) in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.activation import ACT_CODES, ACT_NONE, reference_activation
from flexnnd.ops.base import Op, internal, register, require_rank
from flexnnd.ops.epilogue import bias_act
from flexnnd.ops.jit import kernel


@kernel
def channel_affine(x, y, a, b, inner, act, alpha, beta):
    """y = act(a[c]*x + b[c]) over flat (outer, C, inner) arrays, one channel block at a time."""
    channels = a.size
    n = np.uint64(inner)
    for block in range(x.size // inner):
        c = block % channels
        s, scale, shift = np.uint64(block * inner), a[c], b[c]
        for k in range(n):
            y[s + k] = scale * x[s + k] + shift
        if act != ACT_NONE:
            bias_act(y, b[:0], block * inner, 0, 1, inner, b[:0], 0, act, alpha, beta)


@register
@dataclass(frozen=True)
class BatchNormalization(Op):
    op_type = "BatchNormalization"
    const_inputs = (1, 2, 3, 4)

    epsilon: float = 1e-5
    momentum: float = 0.9
    training_mode: int = 0
    activation: str = internal("")
    activation_alpha: float = internal(0.0)
    activation_beta: float = internal(0.0)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        if len(consts) != 5 or any(c is None for c in consts[1:]):
            raise UnsupportedOp(cls.op_type, node, opset, "scale, B, mean and var must be constants")
        return super().from_onnx(attrs, consts, node, opset)

    def check(self, node: str, opset: int) -> None:
        if self.training_mode:
            raise UnsupportedOp(self.op_type, node, opset, "training_mode=1 (inference only)")
        if self.activation not in ACT_CODES:
            raise UnsupportedOp(self.op_type, node, opset, f"fused activation {self.activation!r}")

    def infer(self, shapes, consts):
        x = require_rank(self.op_type, shapes[0], range(2, 9))
        for name, shape in zip(("scale", "B", "mean", "var"), shapes[1:5], strict=True):
            if tuple(shape or ()) != (x[1],):
                raise ShapeError(
                    f"BatchNormalization: {name} shape {shape} does not match input {x} (want ({x[1]},))"
                )
        return [tuple(x)]

    def prepare(self, consts):
        scale, shift, mean, var = (np.asarray(c, dtype=np.float64) for c in consts[1:5])
        a = scale / np.sqrt(var + self.epsilon)
        # mean and var stay (the contract keeps one value per input); the kernel reads only a, b.
        return [None, a.astype(np.float32), (shift - mean * a).astype(np.float32), *consts[3:5]]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None:
            raise ValueError(f"BatchNormalization cannot be sliced (part {part})")
        x, a, b, y = ins[0], ins[1], ins[2], outs[0]
        if x.shape != y.shape or a.shape != (x.shape[1],) or b.shape != a.shape:
            raise ShapeError(
                f"BatchNormalization.bind: input {x.shape}, a {a.shape}, b {b.shape}, output {y.shape}"
            )
        xf, yf = x.reshape(-1), y.reshape(-1)
        inner = int(np.prod(x.shape[2:], dtype=np.int64))
        act, alpha, beta = (
            ACT_CODES[self.activation],
            float(self.activation_alpha),
            float(self.activation_beta),
        )
        return lambda: channel_affine(xf, yf, a, b, inner, act, alpha, beta)

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float64)
        scale, shift, mean, var = (
            np.asarray(v, dtype=np.float64).reshape(1, -1, *[1] * (x.ndim - 2)) for v in ins[1:5]
        )
        y = (x - mean) / np.sqrt(var + self.epsilon) * scale + shift
        return [reference_activation(y, self.activation, self.activation_alpha, self.activation_beta)]
