"""Pointwise activations: Relu, Clip, LeakyRelu, Sigmoid, HardSigmoid, HardSwish.

One numba kernel serves them all, standalone and fused into a Conv/Gemm epilogue: the branch on
the activation kind sits outside the loops, so each loop body stays branch-free and vectorizes.

Also the float32 exp, expm1 and erfc the elementwise kernels share (here and in
`ops/unary.py`): numba's math.exp calls libm once per element (no SVML here), which keeps a loop
scalar; these are arithmetic only, so LLVM vectorizes the loops that inline them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from flexnnd.ops.base import Op, register
from flexnnd.ops.jit import FASTMATH, kernel

# Without 'reassoc': it would merge the two-part ln2 reduction (r = x - n*LN2_HI - n*LN2_LO) into
# one product and lose the low part's correction.
_EXACT = set(FASTMATH - {"reassoc"})
_F32 = np.float32


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the low 32 of integer `bits` (a bitcast: vectorizes)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


@kernel(fastmath=_EXACT)
def exp32(x):
    """e**x in float32 within 2 ulp (Cephes expf); inf above 88.72, 0 below -103.9, NaN kept."""
    x = _F32(89.0) if x > _F32(89.0) else x  # comparisons keep NaN, unlike min/max
    x = _F32(-104.0) if x < _F32(-104.0) else x
    n = np.floor(x * _F32(1.44269504088896341) + _F32(0.5))
    r = x - n * _F32(0.693359375) - n * _F32(-2.12194440e-4)
    p = _F32(1.9875691500e-4) * r + _F32(1.3981999507e-3)
    p = p * r + _F32(8.3334519073e-3)
    p = p * r + _F32(4.1665795894e-2)
    p = p * r + _F32(1.6666665459e-1)
    p = p * r + _F32(5.0000001201e-1)
    y = p * (r * r) + r + _F32(1.0)
    # 2**n as two normal powers of two, so n from -150 to 128 neither flushes nor overflows early.
    k = np.int32(n)
    k1 = k >> 1
    s1 = _float_from_bits((k1 + 127) << 23)
    s2 = _float_from_bits((k - k1 + 127) << 23)
    return y * s1 * s2


# ONNX Runtime's logistic (MLAS, from Eigen): an odd rational fit on [-18, 18], p(x)/q(x) + 1/2.
_LOGISTIC_P = (
    4.37031012579801e-11,
    1.15627324459942e-07,
    6.08574864600143e-05,
    8.51377133304701e-03,
    2.48287947061529e-01,
)
_LOGISTIC_Q = (
    6.10247389755681e-13,
    5.76102136993427e-09,
    6.29106785017040e-06,
    1.70198817374094e-03,
    1.16817656904453e-01,
    9.93151921023180e-01,
)


@kernel(fastmath=_EXACT)
def logistic32(x):
    """1 / (1 + e**-x) as ONNX Runtime computes it: within 1e-7 of exact, and equal to ORT in the tails,
    where exact gives 1e-7 at x = -16 and ORT's fit gives 0 (a model whose output is all tails, such
    as a detector's score map on a blank image, would otherwise differ from ORT by its whole scale)."""
    x = _F32(-18.0) if x < _F32(-18.0) else x  # comparisons keep NaN, unlike min/max
    x = _F32(18.0) if x > _F32(18.0) else x
    x2 = x * x
    p = x2 * _F32(_LOGISTIC_P[0]) + _F32(_LOGISTIC_P[1])
    p = p * x2 + _F32(_LOGISTIC_P[2])
    p = p * x2 + _F32(_LOGISTIC_P[3])
    p = p * x2 + _F32(_LOGISTIC_P[4])
    p = p * x
    q = x2 * _F32(_LOGISTIC_Q[0]) + _F32(_LOGISTIC_Q[1])
    q = q * x2 + _F32(_LOGISTIC_Q[2])
    q = q * x2 + _F32(_LOGISTIC_Q[3])
    q = q * x2 + _F32(_LOGISTIC_Q[4])
    q = q * x2 + _F32(_LOGISTIC_Q[5])
    y = p / q + _F32(0.5)
    y = _F32(0.0) if y < _F32(0.0) else y
    return _F32(1.0) if y > _F32(1.0) else y


@kernel(fastmath=_EXACT)
def expm1_32(x):
    """e**x - 1 in float32, accurate near 0 too (a Taylor polynomial there)."""
    if abs(x) < _F32(0.35):
        p = x * _F32(1.0 / 5040.0) + _F32(1.0 / 720.0)
        p = p * x + _F32(1.0 / 120.0)
        p = p * x + _F32(1.0 / 24.0)
        p = p * x + _F32(1.0 / 6.0)
        p = p * x + _F32(0.5)
        return p * (x * x) + x
    return exp32(x) - _F32(1.0)


@kernel(fastmath=_EXACT)
def erfc32(z):
    """erfc(z) for z >= 0 (Numerical Recipes' erfcc, no cancellation): within 1.2e-6 relative up to
    z = 4 (erfc 1.5e-8), the float32 rounding of z*z taking over from the fit's 1.2e-7 as z grows."""
    t = _F32(1.0) / (_F32(1.0) + _F32(0.5) * z)
    p = _F32(0.17087277) * t + _F32(-0.82215223)
    p = p * t + _F32(1.48851587)
    p = p * t + _F32(-1.13520398)
    p = p * t + _F32(0.27886807)
    p = p * t + _F32(-0.18628806)
    p = p * t + _F32(0.09678418)
    p = p * t + _F32(0.37409196)
    p = p * t + _F32(1.00002368)
    p = p * t + _F32(-1.26551223)
    return t * exp32(p - z * z)


# Activation codes shared with the fused epilogues of Conv and Gemm.
ACT_NONE, ACT_RELU, ACT_CLIP, ACT_LEAKY, ACT_SIGMOID, ACT_HARDSIGMOID, ACT_HARDSWISH, ACT_SWISH = range(8)
ACT_CODES = {
    "": ACT_NONE,
    "Relu": ACT_RELU,
    "Clip": ACT_CLIP,
    "LeakyRelu": ACT_LEAKY,
    "Sigmoid": ACT_SIGMOID,
    "HardSigmoid": ACT_HARDSIGMOID,
    "HardSwish": ACT_HARDSWISH,
    "Swish": ACT_SWISH,
}


@kernel
def activate(src, dst, act, alpha, beta):
    """dst = act(src) over flat contiguous float32 arrays (src may be dst)."""
    if src.size > 0 and src.ctypes.data == dst.ctypes.data:
        # In place: one array for both, else LLVM's overlap check fails and runs the scalar loop
        # (Sigmoid 35x slower in place than out of place, measured).
        _activate(dst, dst, act, alpha, beta)
    else:
        _activate(src, dst, act, alpha, beta)


@kernel(inline="always")
def _activate(src, dst, act, alpha, beta):
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
            dst[i] = logistic32(src[i])
    elif act == ACT_HARDSIGMOID:
        a = np.float32(alpha)
        b = np.float32(beta)
        for i in range(n):
            dst[i] = min(max(src[i] * a + b, np.float32(0.0)), np.float32(1.0))
    elif act == ACT_HARDSWISH:
        sixth = np.float32(1.0 / 6.0)
        for i in range(n):
            v = src[i]
            dst[i] = v * min(max(v * sixth + np.float32(0.5), np.float32(0.0)), np.float32(1.0))
    else:  # ACT_SWISH: x * sigmoid(alpha * x), SiLU at alpha 1
        a = np.float32(alpha)
        for i in range(n):
            v = src[i]
            dst[i] = v * logistic32(a * v)


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
    if act == "Swish":
        x64 = x.astype(np.float64)
        return (x64 / (1.0 + np.exp(-alpha * x64))).astype(np.float32)
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
class Swish(_Activation):
    """ONNX Swish (opset 24): x * sigmoid(alpha * x); SiLU at alpha 1. Exporters before opset 24
    write x * Sigmoid(x), which graph/fuse_swish.py turns into this op (then into a Conv's epilogue)."""

    op_type = "Swish"
    alpha: float = 1.0

    def act(self):
        return "Swish", float(self.alpha), 0.0


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
