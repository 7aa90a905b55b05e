"""Normalizations that compute their statistics at run time: LayerNormalization,
InstanceNormalization, GroupNormalization, MeanVarianceNormalization and LpNormalization.

(BatchNormalization, whose statistics are constants, is in norm.py.)

The first three normalize contiguous rows of the input: LayerNorm's rows are the trailing axes from
`axis` on, InstanceNorm's one channel of one image, GroupNorm's the channels of one group. One
kernel, `normalize_rows`, serves them: a single pass sums x and x*x in float64 (so E[x^2] - E[x]^2
loses nothing to cancellation at float32 precision), then a second pass writes
(x - mean) * invstd * scale + bias. MeanVarianceNormalization and LpNormalization reduce over any
set of axes, so `normalize_blocks` walks the tensor in memory order and keeps one float64
accumulator per group in the scratch.

None has weights worth cutting or a scratch worth shrinking: each runs whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.graph.ir import Shape
from flexnnd.ops.base import Op, internal, register, require_rank
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.jit import kernel
from flexnnd.ops.tensor import normalize_axis

# Stands for an absent bias or statistics output (bind must not allocate one).
_NONE = np.zeros(0, dtype=np.float32)
_FLOAT = 1  # TensorProto.FLOAT: the one stash_type the kernels compute in


@kernel
def normalize_rows(x, y, scale, bias, n, inner, epsilon, mean_out, inv_out):
    """Normalize each row of n elements of flat x into y (y may be x), then scale and shift.

    inner == 1: the row is n // period repetitions of scale[off : off + period], period =
    min(scale.size, n) and off = r * period % scale.size (LayerNorm: one period of Scale, off 0).
    inner > 1: the row is chunks of `inner` elements, chunk j of row r using one value,
    scale[(r * (n // inner) + j) % scale.size] (InstanceNorm, GroupNorm). An empty `bias` adds 0;
    non-empty `mean_out`/`inv_out` receive each row's mean and 1/sqrt(var + epsilon).
    """
    rows = x.size // n
    nn = np.uint64(n)
    has_bias = bias.size > 0
    period = np.uint64(scale.size if inner > 1 else min(scale.size, n))
    chunks = n // inner
    for r in range(rows):
        start = np.uint64(r) * nn
        s1 = 0.0
        s2 = 0.0
        for i in range(nn):
            v = np.float64(x[start + i])
            s1 += v
            s2 += v * v
        mean = s1 / n
        var = max(s2 / n - mean * mean, 0.0)
        inv = 1.0 / math.sqrt(var + epsilon)
        if mean_out.size > 0:
            mean_out[r] = mean
        if inv_out.size > 0:
            inv_out[r] = inv
        m, a = np.float32(mean), np.float32(inv)
        if inner == 1:
            off = np.uint64(r) * period % np.uint64(scale.size)
            for b in range(nn // period):
                s = start + np.uint64(b) * period
                if has_bias:
                    for k in range(period):
                        y[s + k] = (x[s + k] - m) * a * scale[off + k] + bias[off + k]
                else:
                    for k in range(period):
                        y[s + k] = (x[s + k] - m) * a * scale[off + k]
        else:
            for j in range(chunks):
                c = (r * chunks + j) % scale.size
                f = a * scale[c]
                shift = bias[c] if has_bias else np.float32(0.0)
                s = start + np.uint64(j * inner)
                for k in range(np.uint64(inner)):
                    y[s + k] = (x[s + k] - m) * f + shift


@kernel(inline="always")
def _group_of(o, dims, gstrides):
    """The group index of the first element of block o (blocks: the innermost axis' runs)."""
    g = 0
    for a in range(dims.size - 2, -1, -1):
        g += (o % dims[a]) * gstrides[a]
        o //= dims[a]
    return g


@kernel
def normalize_blocks(x, y, dims, gstrides, acc, center, p):
    """y = (x - mean_g) * factor_g, the groups g given by the merged axes `dims` of flat x (y may be
    x): axis a moves the group index by gstrides[a], 0 for the axes reduced over.

    center (MeanVarianceNormalization): mean_g and factor_g = 1 / (std_g + 1e-9). Otherwise
    (LpNormalization, p 1 or 2): mean 0 and factor_g = 1 / ||x_g||_p, 0 where that norm is 0.
    acc is float64 scratch of 2 * groups: the means, then the factors.
    """
    groups = acc.size // 2
    mean, factor = acc[:groups], acc[groups:]
    inner = dims[dims.size - 1]
    step = gstrides[gstrides.size - 1]
    n = np.uint64(inner)
    mean[:] = 0.0
    factor[:] = 0.0
    count = x.size // groups
    if center:
        for o in range(x.size // inner):
            g, s = _group_of(o, dims, gstrides), np.uint64(o * inner)
            if step == 0:
                t = 0.0
                for k in range(n):
                    t += x[s + k]
                mean[g] += t
            else:
                for k in range(n):
                    mean[np.uint64(g) + k] += x[s + k]
        for g in range(groups):
            mean[g] /= count
    for o in range(x.size // inner):
        g, s = _group_of(o, dims, gstrides), np.uint64(o * inner)
        if step == 0:
            t, mg = 0.0, mean[g]
            for k in range(n):
                d = x[s + k] - mg
                t += abs(d) if p == 1 else d * d
            factor[g] += t
        else:
            gu = np.uint64(g)
            for k in range(n):
                d = x[s + k] - mean[gu + k]
                factor[gu + k] += abs(d) if p == 1 else d * d
    for g in range(groups):
        if center:
            factor[g] = 1.0 / (math.sqrt(factor[g] / count) + 1e-9)
        else:
            norm = factor[g] if p == 1 else math.sqrt(factor[g])
            factor[g] = 1.0 / norm if norm > 0.0 else 0.0
    for o in range(x.size // inner):
        g, s = _group_of(o, dims, gstrides), np.uint64(o * inner)
        if step == 0:
            mg, fg = mean[g], factor[g]
            for k in range(n):
                y[s + k] = (x[s + k] - mg) * fg
        else:
            gu = np.uint64(g)
            for k in range(n):
                y[s + k] = (x[s + k] - mean[gu + k]) * factor[gu + k]


def _float32_only(op_type: str, dtypes, outputs: int = 1) -> list[str]:
    for pos, dtype in enumerate(dtypes):
        if dtype is not None and dtype != "float32":
            raise DtypeRefused(f"input {pos} is {dtype}; {op_type} runs on float32")
    return ["float32"] * outputs


def _unsliced(op_type: str, part) -> None:
    if part is not None:
        raise ValueError(f"{op_type}.bind: {op_type} is not sliced, got part {part}")


def _flat(op_type: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.shape != y.shape or x.dtype != np.float32 or y.dtype != np.float32:
        raise ShapeError(f"{op_type}.bind: input {x.shape} {x.dtype}, output {y.shape} {y.dtype}")
    return reshape_view(x, (-1,)), reshape_view(y, (-1,))


def _channel_param(op_type: str, name: str, shape: Shape | None, want: int, x: Shape) -> None:
    if tuple(shape or ()) != (want,):
        raise ShapeError(f"{op_type}: {name} shape {shape} does not match input {x} (want ({want},))")


# ---- LayerNormalization --------------------------------------------------------------------------


def _suffix_broadcast(name: str, shape: Shape, x: Shape, axis: int) -> Shape:
    """`shape` (Scale's or B's) left-padded to x's rank, checked to vary only along a run of
    trailing axes within the normalized ones (what a per-row period in the kernel can express)."""
    if len(shape) > len(x):
        raise ShapeError(f"LayerNormalization: {name} shape {shape} has a higher rank than input {x}")
    padded = (1,) * (len(x) - len(shape)) + tuple(shape)
    if any(s not in (1, d) for s, d in zip(padded, x, strict=True)):
        raise ShapeError(f"LayerNormalization: {name} shape {shape} does not broadcast to input {x}")
    first = next((k for k, s in enumerate(padded) if s != 1), len(x))
    if first < axis:
        raise ShapeError(
            f"LayerNormalization: {name} shape {shape} varies along axis {first}, before the normalized "
            f"axes {axis}..{len(x) - 1} of input {x}; flexnn takes a {name} over the normalized axes"
        )
    if any(s != d for s, d in zip(padded[first:], x[first:], strict=True)):
        raise ShapeError(
            f"LayerNormalization: {name} shape {shape} repeats along a trailing axis of input {x}; "
            f"flexnn takes a {name} whose shape is a suffix of the normalized shape {x[axis:]}"
        )
    return padded


@register
@dataclass(frozen=True)
class LayerNormalization(Op):
    """ONNX LayerNormalization (opset 17): Y = (X - mean) / sqrt(var + epsilon) * Scale + B over
    the axes from `axis` on; optional outputs Mean and InvStdDev, shaped X.shape[:axis] + 1s."""

    op_type = "LayerNormalization"
    const_inputs = (1, 2)
    optional_inputs = (2,)

    axis: int = -1
    epsilon: float = 1e-5
    stash_type: int = _FLOAT

    def check(self, node, opset):
        if self.stash_type != _FLOAT:
            raise UnsupportedOp(
                self.op_type, node, opset, f"stash_type {self.stash_type} (flexnn computes in float, 1)"
            )

    def output_dtypes(self, dtypes):
        return _float32_only(self.op_type, dtypes, outputs=3)

    def _rows(self, x: Shape) -> tuple[int, int]:
        axis = normalize_axis(self.op_type, self.axis, len(x), x)
        return math.prod(x[:axis]), math.prod(x[axis:])

    def infer(self, shapes, consts):
        x = require_rank(self.op_type, shapes[0], range(1, 9))
        axis = normalize_axis(self.op_type, self.axis, len(x), x)
        params = [("Scale", shapes[1])] + ([("B", shapes[2])] if len(shapes) > 2 and shapes[2] else [])
        for name, shape in params:
            if shape is None:
                raise ShapeError(f"LayerNormalization: {name} shape unknown")
            _suffix_broadcast(name, tuple(shape), tuple(x), axis)
        stats = tuple(x[:axis]) + (1,) * (len(x) - axis)
        return [tuple(x), stats, stats]

    def prepare(self, consts):
        # Scale and B broadcast to one flat period, so the kernel indexes both alike.
        scale = np.asarray(consts[1], dtype=np.float32)
        bias = consts[2] if len(consts) > 2 else None
        if bias is None:
            return [None, scale.reshape(-1), *consts[2:]]
        scale, bias = np.broadcast_arrays(scale, np.asarray(bias, dtype=np.float32))
        return [None, np.ascontiguousarray(scale).reshape(-1), np.ascontiguousarray(bias).reshape(-1)]

    def flops(self, shapes, out_shapes):
        return 7 * math.prod(out_shapes[0])

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        _unsliced(self.op_type, part)
        x, y = _flat(self.op_type, ins[0], outs[0])
        rows, n = self._rows(ins[0].shape)
        scale = reshape_view(ins[1], (-1,))
        bias = reshape_view(ins[2], (-1,)) if len(ins) > 2 and ins[2] is not None else _NONE
        if n % scale.size or (bias.size and bias.size != scale.size):
            raise ShapeError(
                f"LayerNormalization.bind: Scale of {scale.size} and B of {bias.size} values for rows of {n}"
            )
        stats = [reshape_view(o, (-1,)) for o in outs[1:3]]
        if any(s.size != rows or s.dtype != np.float32 for s in stats):
            raise ShapeError(
                f"LayerNormalization.bind: Mean/InvStdDev {[o.shape for o in outs[1:]]}, {rows} rows"
            )
        mean, inv = (*stats, _NONE, _NONE)[:2]
        eps = float(self.epsilon)

        def run_layer_normalization():
            normalize_rows(x, y, scale, bias, n, 1, eps, mean, inv)

        return run_layer_normalization

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float64)
        axis = normalize_axis(self.op_type, self.axis, x.ndim, x.shape)
        rows, n = self._rows(x.shape)
        flat = x.reshape(rows, n)
        mean = flat.mean(axis=1, keepdims=True)
        inv = 1.0 / np.sqrt(((flat - mean) ** 2).mean(axis=1, keepdims=True) + self.epsilon)
        y = ((flat - mean) * inv).reshape(x.shape) * np.asarray(ins[1], dtype=np.float64)
        if len(ins) > 2 and ins[2] is not None:
            y = y + np.asarray(ins[2], dtype=np.float64)
        stats = x.shape[:axis] + (1,) * (x.ndim - axis)
        return [
            y.astype(np.float32),
            mean.reshape(stats).astype(np.float32),
            inv.reshape(stats).astype(np.float32),
        ]


# ---- InstanceNormalization and GroupNormalization ------------------------------------------------


@dataclass(frozen=True)
class _ChannelGroups(Op):
    """Normalizes groups of whole channels of each image (X is N x C x D1 ... Dn), then applies a
    per-channel (or, GroupNormalization before opset 21, per-group) scale and bias."""

    const_inputs = (1, 2)
    min_rank: ClassVar[int] = 2

    def groups(self, channels: int) -> int:
        raise NotImplementedError

    def param_count(self, channels: int) -> int:
        return channels

    def output_dtypes(self, dtypes):
        return _float32_only(self.op_type, dtypes)

    def infer(self, shapes, consts):
        x = require_rank(self.op_type, shapes[0], range(self.min_rank, 9))
        groups = self.groups(x[1])
        if x[1] % groups:
            raise ShapeError(
                f"{self.op_type}: {x[1]} channels of input {x} do not split into {groups} groups"
            )
        for name, shape in zip(("scale", "bias"), shapes[1:3], strict=True):
            _channel_param(self.op_type, name, shape, self.param_count(x[1]), x)
        return [tuple(x)]

    def flops(self, shapes, out_shapes):
        return 6 * math.prod(out_shapes[0])

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        _unsliced(self.op_type, part)
        x, y = _flat(self.op_type, ins[0], outs[0])
        shape = ins[0].shape
        groups, spatial = self.groups(shape[1]), math.prod(shape[2:])
        n = shape[1] // groups * spatial
        scale, bias = reshape_view(ins[1], (-1,)), reshape_view(ins[2], (-1,))
        if scale.size != self.param_count(shape[1]) or bias.size != scale.size:
            raise ShapeError(
                f"{self.op_type}.bind: scale {ins[1].shape}, bias {ins[2].shape} for input {shape}"
            )
        # Per-group values cover a whole row; per-channel ones a chunk of `spatial` elements.
        inner = n if scale.size == groups else spatial
        eps = float(self.epsilon)

        def run_channel_groups():
            normalize_rows(x, y, scale, bias, n, inner, eps, _NONE, _NONE)

        return run_channel_groups

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float64)
        groups = self.groups(x.shape[1])
        g = x.reshape(x.shape[0], groups, -1)
        norm = (g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + self.epsilon)
        scale, bias = (np.asarray(v, dtype=np.float64).reshape(-1) for v in ins[1:3])
        if scale.size == groups != x.shape[1]:
            scale, bias = (np.repeat(v, x.shape[1] // groups) for v in (scale, bias))
        ones = (1,) * (x.ndim - 2)
        y = norm.reshape(x.shape) * scale.reshape(-1, *ones) + bias.reshape(-1, *ones)
        return [y.astype(np.float32)]


@register
@dataclass(frozen=True)
class InstanceNormalization(_ChannelGroups):
    """ONNX InstanceNormalization (opsets 6, 22): each channel of each image normalized alone."""

    op_type = "InstanceNormalization"
    min_rank = 3  # ONNX Runtime refuses an (N, C) input
    epsilon: float = 1e-5

    def groups(self, channels):
        return channels


@register
@dataclass(frozen=True)
class GroupNormalization(_ChannelGroups):
    """ONNX GroupNormalization: opset 18 takes scale and bias per group (`per_group`), opset 21
    per channel."""

    op_type = "GroupNormalization"
    num_groups: int = 0
    epsilon: float = 1e-5
    stash_type: int = _FLOAT
    per_group: bool = internal(False)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        if "num_groups" not in attrs:
            raise UnsupportedOp(cls.op_type, node, opset, "the required attribute num_groups is missing")
        op, kept = super().from_onnx(attrs, consts, node, opset)
        return replace(op, per_group=opset < 21), kept

    def check(self, node, opset):
        if self.num_groups < 1:
            raise UnsupportedOp(self.op_type, node, opset, f"num_groups {self.num_groups} (must be >= 1)")
        if self.stash_type != _FLOAT:
            raise UnsupportedOp(
                self.op_type, node, opset, f"stash_type {self.stash_type} (flexnn computes in float, 1)"
            )

    def groups(self, channels):
        return self.num_groups

    def param_count(self, channels):
        return self.num_groups if self.per_group else channels


# ---- MeanVarianceNormalization and LpNormalization -----------------------------------------------


def _merged_axes(shape: Shape, reduced: set[int]) -> tuple[np.ndarray, np.ndarray, int]:
    """(dims, group strides, groups) of `shape` with size-1 axes dropped and neighbours of the same
    kind (reduced or kept) merged; a reduced axis moves the group index by 0."""
    runs: list[list] = []  # [size, kept]
    for a, d in enumerate(shape):
        if d == 1:
            continue
        kept = a not in reduced
        if runs and runs[-1][1] == kept:
            runs[-1][0] *= d
        else:
            runs.append([d, kept])
    runs = runs or [[1, False]]
    strides, groups = [], 1
    for size, kept in reversed(runs):
        strides.insert(0, groups if kept else 0)
        groups *= size if kept else 1
    return np.array([r[0] for r in runs], np.int64), np.array(strides, np.int64), groups


@dataclass(frozen=True)
class _BlockNorm(Op):
    """Normalizes over a set of axes through `normalize_blocks`, its accumulators in the scratch."""

    def reduced_axes(self, shape: Shape) -> set[int]:
        raise NotImplementedError

    def output_dtypes(self, dtypes):
        return _float32_only(self.op_type, dtypes)

    def infer(self, shapes, consts):
        if shapes[0] is None:
            raise ShapeError(f"{self.op_type}: input shape unknown")
        self.reduced_axes(tuple(shapes[0]))
        return [tuple(shapes[0])]

    def scratch_bytes(self, shapes, part=None):
        return 16 * _merged_axes(tuple(shapes[0]), self.reduced_axes(tuple(shapes[0])))[2]

    def flops(self, shapes, out_shapes):
        return 5 * math.prod(out_shapes[0])

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        _unsliced(self.op_type, part)
        x, y = _flat(self.op_type, ins[0], outs[0])
        dims, strides, groups = _merged_axes(ins[0].shape, self.reduced_axes(ins[0].shape))
        have = 0 if scratch is None else scratch.nbytes
        if have < 16 * groups:
            raise ValueError(f"{self.op_type}.bind: scratch of {have} bytes, need {16 * groups}")
        acc = reshape_view(scratch, (-1,))[: 4 * groups].view(np.float64)
        center, p = self.center_and_p()

        def run_block_normalization():
            normalize_blocks(x, y, dims, strides, acc, center, p)

        return run_block_normalization

    def center_and_p(self) -> tuple[bool, int]:
        raise NotImplementedError


@register
@dataclass(frozen=True)
class MeanVarianceNormalization(_BlockNorm):
    """ONNX MeanVarianceNormalization (opsets 9, 13): (X - E[X]) / (sqrt(E[(X - E[X])^2]) + 1e-9)
    over `axes`."""

    op_type = "MeanVarianceNormalization"
    axes: tuple[int, ...] = (0, 2, 3)

    def reduced_axes(self, shape):
        axes = {normalize_axis(self.op_type, a, len(shape), shape) for a in self.axes}
        if len(axes) != len(self.axes):
            raise ShapeError(f"{self.op_type}: axes {list(self.axes)} name an axis twice (input {shape})")
        return axes

    def center_and_p(self):
        return True, 2

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float64)
        axes = tuple(sorted(self.reduced_axes(x.shape)))
        mean = x.mean(axis=axes, keepdims=True)
        std = np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True))
        return [((x - mean) / (std + 1e-9)).astype(np.float32)]


@register
@dataclass(frozen=True)
class LpNormalization(_BlockNorm):
    """ONNX LpNormalization (opsets 1, 22): X / ||X||_p along `axis`, p 1 or 2; 0 where the norm
    is 0 (the spec's node tests and ONNX Runtime agree)."""

    op_type = "LpNormalization"
    axis: int = -1
    p: int = 2

    def check(self, node, opset):
        if self.p not in (1, 2):
            raise UnsupportedOp(self.op_type, node, opset, f"p {self.p} (ONNX allows 1 and 2)")

    def reduced_axes(self, shape):
        return {normalize_axis(self.op_type, self.axis, len(shape), shape)}

    def center_and_p(self):
        return False, self.p

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float64)
        axis = normalize_axis(self.op_type, self.axis, x.ndim, x.shape)
        if self.p == 1:
            norm = np.abs(x).sum(axis=axis, keepdims=True)
        else:
            norm = np.sqrt((x * x).sum(axis=axis, keepdims=True))
        safe = np.where(norm > 0, norm, 1.0)
        return [np.where(norm > 0, x / safe, 0.0).astype(np.float32)]
