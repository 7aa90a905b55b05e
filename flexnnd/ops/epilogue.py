"""The epilogue every GEMM-shaped kernel ends with: bias, a fused activation and a fused residual
Add, applied in place to the output (conv, Gemm and BatchNormalization share it)."""

from __future__ import annotations

import numpy as np

from flexnnd.ops.activation import (
    ACT_CLIP,
    ACT_HARDSIGMOID,
    ACT_HARDSWISH,
    ACT_LEAKY,
    ACT_NONE,
    ACT_RELU,
    ACT_SIGMOID,
    ACT_SWISH,
    logistic32,
)
from flexnnd.ops.jit import kernel

# Stands for an absent bias: the epilogue adds 0 when it is empty (bind must not allocate one).
NO_BIAS = np.zeros(0, dtype=np.float32)


@kernel
def bias_act(y, res, off, ld, rows, cols, bias, boff, act, alpha, beta):
    """y[i] = act(y[i] + bias[boff + r] + res[i]) for i = off + r*ld + k, r < rows, k < cols
    (y flat, in place; `res` flat with y's layout, a fused residual Add).

    The branches on the activation kind and on the residual are outside the loops, so every
    loop body vectorizes. An empty `bias` or `res` adds nothing.
    """
    has_bias = bias.size > 0
    n = np.uint64(cols)
    zero, one = np.float32(0.0), np.float32(1.0)
    if res.size > 0:
        if act in (ACT_NONE, ACT_RELU):
            floor = zero if act == ACT_RELU else np.float32(-np.inf)
            for r in range(rows):
                b, s = (bias[boff + r] if has_bias else zero), np.uint64(off + r * ld)
                for k in range(n):
                    y[s + k] = max(y[s + k] + b + res[s + k], floor)
            return
        for r in range(rows):  # rarer activations: add the residual first, then the usual pass
            s = np.uint64(off + r * ld)
            for k in range(n):
                y[s + k] = y[s + k] + res[s + k]
    if act == ACT_NONE:
        if not has_bias:
            return
        for r in range(rows):
            b, s = bias[boff + r], np.uint64(off + r * ld)
            for k in range(n):
                y[s + k] = y[s + k] + b
    elif act == ACT_RELU:
        for r in range(rows):
            b, s = (bias[boff + r] if has_bias else zero), np.uint64(off + r * ld)
            for k in range(n):
                y[s + k] = max(y[s + k] + b, zero)
    elif act == ACT_CLIP:
        lo, hi = np.float32(alpha), np.float32(beta)
        for r in range(rows):
            b, s = (bias[boff + r] if has_bias else zero), np.uint64(off + r * ld)
            for k in range(n):
                y[s + k] = min(max(y[s + k] + b, lo), hi)
    elif act == ACT_LEAKY:
        slope = np.float32(alpha)
        for r in range(rows):
            b, s = (bias[boff + r] if has_bias else zero), np.uint64(off + r * ld)
            for k in range(n):
                v = y[s + k] + b
                y[s + k] = v if v >= zero else v * slope
    elif act == ACT_SIGMOID:
        for r in range(rows):
            b, s = (bias[boff + r] if has_bias else zero), np.uint64(off + r * ld)
            for k in range(n):
                y[s + k] = logistic32(y[s + k] + b)  # arithmetic only: vectorizes
    elif act == ACT_HARDSIGMOID:
        scale, shift = np.float32(alpha), np.float32(beta)
        for r in range(rows):
            b, s = (bias[boff + r] if has_bias else zero), np.uint64(off + r * ld)
            for k in range(n):
                y[s + k] = min(max((y[s + k] + b) * scale + shift, zero), one)
    elif act == ACT_HARDSWISH:
        sixth, half = np.float32(1.0 / 6.0), np.float32(0.5)
        for r in range(rows):
            b, s = (bias[boff + r] if has_bias else zero), np.uint64(off + r * ld)
            for k in range(n):
                v = y[s + k] + b
                y[s + k] = v * min(max(v * sixth + half, zero), one)
    elif act == ACT_SWISH:
        a = np.float32(alpha)
        for r in range(rows):
            b, s = (bias[boff + r] if has_bias else zero), np.uint64(off + r * ld)
            for k in range(n):
                v = y[s + k] + b
                y[s + k] = v * logistic32(a * v)
