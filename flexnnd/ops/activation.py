"""Pointwise activations: Relu, Clip, LeakyRelu, Sigmoid, HardSigmoid, HardSwish.

One numba kernel serves them all, standalone and fused into a Conv/Gemm epilogue: the branch on
the activation kind sits outside the loops, so each loop body stays branch-free and vectorizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flexnnd.ops.base import Op, register
from flexnnd.ops.jit import kernel

# Activation codes shared with the fused epilogues of Conv and Gemm.
ACT_NONE, ACT_RELU, ACT_CLIP, ACT_LEAKY, ACT_SIGMOID, ACT_HARDSIGMOID, ACT_HARDSWISH = range(7)
ACT_CODES = {
    "": ACT_NONE,
    "Relu": ACT_RELU,
    "Clip": ACT_CLIP,
    "LeakyRelu": ACT_LEAKY,
    "Sigmoid": ACT_SIGMOID,
    "HardSigmoid": ACT_HARDSIGMOID,
    "HardSwish": ACT_HARDSWISH,
}


@kernel
def activate(src, dst, act, alpha, beta):
    """dst = act(src) over flat contiguous float32 arrays (src may be dst)."""
    n = src.size
    if act == ACT_NONE:
        for i in range(n):
            dst[i] = src[i]
    elif act == ACT_RELU:
        for i in range(n):
            dst[i] = max(src[i], np.float32(0.0))
    elif act == ACT_CLIP:
        lo = np.float32(alpha)
        hi = np.float32(beta)
        for i in range(n):
            dst[i] = min(max(src[i], lo), hi)
    elif act == ACT_LEAKY:
        a = np.float32(alpha)
        for i in range(n):
            v = src[i]
            dst[i] = v if v >= 0 else v * a
    elif act == ACT_SIGMOID:
        for i in range(n):
            dst[i] = np.float32(1.0) / (np.float32(1.0) + np.exp(-src[i]))
    elif act == ACT_HARDSIGMOID:
        a = np.float32(alpha)
        b = np.float32(beta)
        for i in range(n):
            dst[i] = min(max(src[i] * a + b, np.float32(0.0)), np.float32(1.0))
    else:  # ACT_HARDSWISH
        sixth = np.float32(1.0 / 6.0)
        for i in range(n):
            v = src[i]
            dst[i] = v * min(max(v * sixth + np.float32(0.5), np.float32(0.0)), np.float32(1.0))


def reference_activation(x: np.ndarray, act: str, alpha: float, beta: float) -> np.ndarray:
    """Plain numpy version of `activate`, by activation name."""
    x = np.asarray(x, dtype=np.float32)
    if act == "":
        return x.copy()
    if act == "Relu":
        return np.maximum(x, 0).astype(np.float32)
    if act == "Clip":
        return np.clip(x, alpha, beta).astype(np.float32)
    if act == "LeakyRelu":
        return np.where(x >= 0, x, x * np.float32(alpha)).astype(np.float32)
    if act == "Sigmoid":
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    if act == "HardSigmoid":
        return np.clip(x * np.float32(alpha) + np.float32(beta), 0, 1).astype(np.float32)
    if act == "HardSwish":
        return (x * np.clip(x / 6.0 + 0.5, 0, 1)).astype(np.float32)
    raise ValueError(f"unknown activation {act!r}")


@dataclass(frozen=True)
class _Activation(Op):
    """Shared plumbing: one input, one output of the same shape."""

    def act(self) -> tuple[str, float, float]:
        return self.op_type, 0.0, 0.0

    def infer(self, shapes, consts):
        return [shapes[0]]

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        src, dst = ins[0].reshape(-1), outs[0].reshape(-1)
        name, alpha, beta = self.act()
        code = ACT_CODES[name]
        return lambda: activate(src, dst, code, alpha, beta)

    def reference(self, ins):
        return [reference_activation(ins[0], *self.act())]


@register
@dataclass(frozen=True)
class Relu(_Activation):
    op_type = "Relu"


@register
@dataclass(frozen=True)
class Sigmoid(_Activation):
    op_type = "Sigmoid"


@register
@dataclass(frozen=True)
class HardSwish(_Activation):
    op_type = "HardSwish"


@register
@dataclass(frozen=True)
class LeakyRelu(_Activation):
    op_type = "LeakyRelu"
    alpha: float = 0.01

    def act(self):
        return "LeakyRelu", float(self.alpha), 0.0


@register
@dataclass(frozen=True)
class HardSigmoid(_Activation):
    op_type = "HardSigmoid"
    alpha: float = 0.2
    beta: float = 0.5

    def act(self):
        return "HardSigmoid", float(self.alpha), float(self.beta)


@register
@dataclass(frozen=True)
class Clip(_Activation):
    """Clip; from opset 11 min/max are (constant) inputs, absorbed here into attributes."""

    op_type = "Clip"
    optional_inputs = (1, 2)
    min: float = -math.inf
    max: float = math.inf

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        attrs = dict(attrs)
        for pos, key in ((1, "min"), (2, "max")):
            if pos < len(consts) and consts[pos] is not None:
                attrs[key] = float(np.asarray(consts[pos]).reshape(()))
        op, _ = super().from_onnx(attrs, consts[:1], node, opset)
        return op, (0,)

    def act(self):
        return "Clip", float(self.min), float(self.max)
