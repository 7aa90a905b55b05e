"""Reductions: ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceL1, ReduceL2,
ReduceSumSquare, ReduceLogSum, ReduceLogSumExp; ArgMax and ArgMin.

`axes` is an attribute before opset 18 (13 for ReduceSum) and an optional constant input since;
both are absorbed into the `axes` field at import. No axes (or an empty list) means every axis,
or none at all with noop_with_empty_axes (the map still applies: ReduceSumSquare squares).

One loop nest serves every reduction pattern. Size-1 axes are dropped and adjacent axes that are all
kept or all reduced are merged, which leaves at most six alternating blocks, seen as
(K0, R0, K1, R1, K2, R2): the output is (K0, K1, K2). When R2 > 1 the innermost loop runs along a
contiguous row (ReduceMean over H, W of NCHW: (C, HW); LayerNorm's last axis: (rows, 768)); when
R2 = 1 it accumulates contiguous rows of K2 into the output (a reduction over the channel axis).
None of these ops has weights, so none is sliced: each runs whole, priced by the bytes it moves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.graph.ir import Shape
from flexnnd.ops.activation import exp32
from flexnnd.ops.base import Op, register
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.jit import kernel

# How elements combine (after |x| or x*x); all keep the element type, so ints stay exact (and wrap
# on overflow, as numpy does; ONNX Runtime saturates, the spec says nothing). FMAX and
# FMIN take float32 bits as int32 (see _key): LLVM vectorizes an integer max, not a float one.
SUM, SUM_ABS, SUM_SQUARE, PROD, MAX, MIN, FMAX, FMIN = range(8)
# What the float ops do with the combined value: nothing, times 1/count, sqrt, log, or
# log-sum-exp (a max, then a sum of exp(x - max), then max + log(sum)).
KEEP, SCALE, SQRT, LOG, LOG_SUM_EXP = range(5)

BLOCKS = 6  # (K0, R0, K1, R1, K2, R2)
INT_TYPES = ("int32", "int64")
SMALL_TYPES = ("uint8", "bool")  # Max and Min only (masks, quantized tensors)


@kernel  # called (LLVM inlines it): numba's own inlining here doubled reduce_max's compile time
def _key(bits):
    """float32 bits (as an int32) mapped to an integer that orders as the float does; its own
    inverse. Ordered so: -NaN < -inf < ... < -0.0 < +0.0 < ... < +inf < +NaN."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@kernel(inline="always")
def _sum_like(kind, acc, x):
    # Loop-invariant `kind`: LLVM unswitches the loop, so each loop body stays branch-free.
    if kind == SUM:
        return acc + x
    if kind == SUM_ABS:
        return acc + abs(x)
    if kind == SUM_SQUARE:
        return acc + x * x
    return acc * x


@kernel(inline="always")
def _max_like(kind, acc, x):
    if kind == MAX:
        return max(acc, x)
    if kind == MIN:
        return min(acc, x)
    if kind == FMAX:
        return max(acc, _key(x))
    return min(acc, _key(x))


@kernel(inline="always")
def _row(src, start, n, kind, acc, combine):
    """acc combined with src[start : start + n]."""
    s = np.uint64(start)
    for j in range(np.uint64(n)):
        acc = combine(kind, acc, src[s + j])
    return acc


@kernel(inline="always")
def _into(src, start, dst, at, n, kind, combine):
    """dst[at : at + n] combined elementwise with src[start : start + n]."""
    s, d = np.uint64(start), np.uint64(at)
    for j in range(np.uint64(n)):
        dst[d + j] = combine(kind, dst[d + j], src[s + j])


@kernel(inline="always")
def _reduce(src, dst, k0n, r0n, k1n, r1n, k2n, r2n, kind, init, combine):
    """dst (K0, K1, K2) = src (K0, R0, K1, R1, K2, R2) reduced over the R axes; both flat."""
    for i in range(dst.size):
        dst[i] = init
    for k0 in range(k0n):
        for r0 in range(r0n):
            for k1 in range(k1n):
                for r1 in range(r1n):
                    s = (((k0 * r0n + r0) * k1n + k1) * r1n + r1) * k2n * r2n
                    d = (k0 * k1n + k1) * k2n
                    if r2n == 1:
                        _into(src, s, dst, d, k2n, kind, combine)
                    else:
                        for k2 in range(k2n):
                            dst[d + k2] = _row(src, s + k2 * r2n, r2n, kind, dst[d + k2], combine)


# Two kernels, not one: each dtype compiles only the kinds it can take (compile time).
@kernel
def reduce_sum(src, dst, k0n, r0n, k1n, r1n, k2n, r2n, kind, init):
    """_reduce with SUM, SUM_ABS, SUM_SQUARE or PROD."""
    _reduce(src, dst, k0n, r0n, k1n, r1n, k2n, r2n, kind, init, _sum_like)


@kernel
def reduce_max(src, dst, k0n, r0n, k1n, r1n, k2n, r2n, kind, init):
    """_reduce with MAX, MIN, FMAX or FMIN (then the keys made floats again)."""
    _reduce(src, dst, k0n, r0n, k1n, r1n, k2n, r2n, kind, init, _max_like)
    if kind in (FMAX, FMIN):
        for i in range(dst.size):
            dst[i] = _key(dst[i])


@kernel
def finish(dst, post, scale):
    """dst (float32) times `scale`, or its sqrt or log, in place."""
    for i in range(dst.size):
        if post == SCALE:
            dst[i] *= scale
        elif post == SQRT:
            dst[i] = math.sqrt(dst[i])
        else:
            dst[i] = math.log(dst[i])


@kernel(inline="always")
def _finite_or_zero(m):
    return m if math.isfinite(m) else np.float32(0.0)


@kernel
def log_sum_exp(src, dst, tmp, k0n, r0n, k1n, r1n, k2n, r2n):
    """dst = dst + log(sum(exp(src - dst))) over the R axes, dst holding the max (float32);
    tmp (dst's size) holds the sums. A max of +-inf (or NaN) is the result itself (the sum,
    shifted by 0 instead, is ignored: exp(inf - inf) would make a NaN)."""
    for i in range(dst.size):
        tmp[i] = 0.0
    for k0 in range(k0n):
        for r0 in range(r0n):
            for k1 in range(k1n):
                for r1 in range(r1n):
                    s = np.uint64((((k0 * r0n + r0) * k1n + k1) * r1n + r1) * k2n * r2n)
                    d = np.uint64((k0 * k1n + k1) * k2n)
                    if r2n == 1:
                        for k2 in range(np.uint64(k2n)):
                            tmp[d + k2] += exp32(src[s + k2] - _finite_or_zero(dst[d + k2]))
                        continue
                    for k2 in range(np.uint64(k2n)):
                        m = _finite_or_zero(dst[d + k2])
                        row = s + k2 * np.uint64(r2n)
                        acc = np.float32(0.0)
                        for j in range(np.uint64(r2n)):
                            acc += exp32(src[row + j] - m)
                        tmp[d + k2] += acc
    for i in range(dst.size):
        if math.isfinite(dst[i]):
            dst[i] += math.log(tmp[i])


def reduced_blocks(op: str, shape: Shape, axes: Sequence[int]) -> tuple[int, ...]:
    """`shape` reduced over `axes` as (K0, R0, K1, R1, K2, R2): size-1 axes dropped, adjacent axes
    of one kind merged. Raises UnsupportedOp when more than six blocks remain (rank 7 and up)."""
    groups: list[list[int]] = []  # [size, reduced]
    for a, size in enumerate(shape):
        if size == 1:
            continue
        reduced = int(a in axes)
        if groups and groups[-1][1] == reduced:
            groups[-1][0] *= size
        else:
            groups.append([size, reduced])
    blocks = [1] * BLOCKS
    pos = BLOCKS if groups and groups[-1][1] else BLOCKS - 1
    for size, _ in reversed(groups):
        pos -= 1
        if pos < 0:
            raise UnsupportedOp(
                op, "?", None, f"axes {tuple(axes)} of shape {shape} alternate more than 6 times"
            )
        blocks[pos] = size
    return tuple(blocks)


def _normalize_axes(op: str, axes: Sequence[int], shape: Shape) -> tuple[int, ...]:
    rank = len(shape)
    out = []
    for a in axes:
        if not -rank <= a < max(rank, 1):
            raise ShapeError(f"{op}: axis {a} is out of range for shape {shape}")
        out.append(a % rank if rank else 0)
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: axes {tuple(axes)} repeat an axis of shape {shape}")
    return tuple(sorted(out))


def _flat(a: np.ndarray) -> np.ndarray:
    flat = reshape_view(a, (-1,))
    return flat.view(np.uint8) if flat.dtype == np.bool_ else flat  # bools reduce as bytes


def _refuse_dtypes(op: str, dtypes: Sequence[str | None], allowed: Sequence[str]) -> str:
    dtype = dtypes[0]
    if dtype not in allowed:
        raise DtypeRefused(f"input 0 is {dtype}; {op} runs on {', '.join(allowed)}")
    return dtype


# ---- ReduceXxx -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reduce(Op):
    """A reduction over `axes` (every axis when empty, unless noop_with_empty_axes)."""

    optional_inputs = (1,)
    const_inputs = (1,)
    kind: ClassVar[int] = SUM
    post: ClassVar[int] = KEEP
    dtypes: ClassVar[tuple[str, ...]] = ("float32",)
    axes: tuple[int, ...] = ()
    keepdims: int = 1
    noop_with_empty_axes: int = 0

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        attrs = dict(attrs)
        if len(consts) > 1 and consts[1] is not None:  # a runtime axes input: the importer refuses it
            if "axes" in attrs:
                raise UnsupportedOp(cls.op_type, node, opset, "axes given both as attribute and as input 1")
            attrs["axes"] = tuple(int(a) for a in np.asarray(consts[1]).reshape(-1))
        op, _ = super().from_onnx(attrs, consts[:1], node, opset)
        return op, (0,)

    def check(self, node, opset):
        if self.keepdims not in (0, 1) or self.noop_with_empty_axes not in (0, 1):
            raise UnsupportedOp(
                self.op_type,
                node,
                opset,
                f"keepdims {self.keepdims} / noop_with_empty_axes {self.noop_with_empty_axes} are not 0 or 1",
            )

    def output_dtypes(self, dtypes):
        return [_refuse_dtypes(self.op_type, dtypes, self.dtypes)]

    def reduced_axes(self, shape: Shape) -> tuple[int, ...]:
        if not self.axes:
            return () if self.noop_with_empty_axes else tuple(range(len(shape)))
        return _normalize_axes(self.op_type, self.axes, shape)

    def infer(self, shapes, consts):
        if shapes[0] is None:
            raise ShapeError(f"{self.op_type}: input shape unknown")
        shape = tuple(shapes[0])
        axes = self.reduced_axes(shape)
        reduced_blocks(self.op_type, shape, axes)  # refuses what the kernel cannot loop over
        if self.keepdims:
            return [tuple(1 if a in axes else d for a, d in enumerate(shape))]
        return [tuple(d for a, d in enumerate(shape) if a not in axes)]

    def flops(self, shapes, out_shapes):
        return int(np.prod(shapes[0], dtype=np.int64))  # one step per input element, not output

    def scratch_bytes(self, shapes, part=None):
        if self.post != LOG_SUM_EXP:
            return 0
        return 4 * int(np.prod(self.infer(shapes, [None])[0], dtype=np.int64))

    def slice_axes(self, shapes, out_shapes):
        return ()  # no weights to cut, and a part would need the whole reduced extent anyway

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"{self.op_type}.bind: reductions are not sliced, got part {part}")
        x, y = ins[0], outs[0]
        want = self.infer([x.shape], [None])[0]
        if y.shape != want or y.dtype != x.dtype or str(x.dtype) not in self.dtypes:
            raise ShapeError(
                f"{self.op_type}.bind: input {x.shape} {x.dtype}, output {y.shape} {y.dtype}; "
                f"expected output {want} {x.dtype}"
            )
        blocks = reduced_blocks(self.op_type, x.shape, self.reduced_axes(x.shape))
        src, dst = _flat(x), _flat(y)
        kind, post = self.kind, self.post
        if kind in (MAX, MIN) or post == LOG_SUM_EXP:
            keys, key_dst = src, dst
            if src.dtype == np.float32:  # float32 bits as ordered int32 keys (see _key)
                keys, key_dst, kind = src.view(np.int32), dst.view(np.int32), FMIN if kind == MIN else FMAX
            init = _identity(kind, keys.dtype)
            if post != LOG_SUM_EXP:
                return lambda: reduce_max(keys, key_dst, *blocks, kind, init)
            tmp = _scratch(self.op_type, scratch, dst.size)

            def run_log_sum_exp():
                reduce_max(keys, key_dst, *blocks, kind, init)
                log_sum_exp(src, dst, tmp, *blocks)

            return run_log_sum_exp
        init = _identity(kind, src.dtype)
        if post == KEEP:
            return lambda: reduce_sum(src, dst, *blocks, kind, init)
        scale = np.float32(dst.size / x.size)

        def run_then_finish():
            reduce_sum(src, dst, *blocks, kind, init)
            finish(dst, post, scale)

        return run_then_finish

    def reference(self, ins):
        x = np.asarray(ins[0])
        axes = self.reduced_axes(x.shape)
        out = self._reference(x, axes)
        if not self.keepdims:
            out = np.squeeze(out, axis=axes)
        return [np.asarray(out).astype(x.dtype)]

    def _reference(self, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        """The reduction with keepdims; floats in float64."""
        raise NotImplementedError


def _scratch(op: str, scratch: np.ndarray | None, need: int) -> np.ndarray:
    have = 0 if scratch is None else scratch.size
    if have < need:
        raise ValueError(f"{op}.bind: scratch of {have * 4} bytes, need {need * 4}")
    return reshape_view(scratch, (-1,))[:need]


def _identity(kind: int, dtype: np.dtype) -> np.generic:
    """The value a reduction of kind `kind` starts from, as a scalar of `dtype`."""
    if kind in (MAX, MIN, FMAX, FMIN):
        if dtype.kind == "f":
            return dtype.type(-np.inf if kind == MAX else np.inf)
        info = np.iinfo(dtype)
        return dtype.type(info.min if kind in (MAX, FMAX) else info.max)
    return dtype.type(1 if kind == PROD else 0)


def _wide(x: np.ndarray) -> np.ndarray:
    """Floats in float64 for the references; integers as they are (they wrap as the kernels do)."""
    return x.astype(np.float64) if x.dtype.kind == "f" else x


@register
@dataclass(frozen=True)
class ReduceSum(_Reduce):
    op_type = "ReduceSum"
    dtypes = ("float32", *INT_TYPES)

    def _reference(self, x, axes):
        return np.sum(_wide(x), axis=axes, keepdims=True, dtype=_wide(x).dtype)


@register
@dataclass(frozen=True)
class ReduceMean(_Reduce):
    op_type = "ReduceMean"
    post = SCALE

    def _reference(self, x, axes):
        return np.mean(_wide(x), axis=axes, keepdims=True)


@register
@dataclass(frozen=True)
class ReduceMax(_Reduce):
    op_type = "ReduceMax"
    kind = MAX
    dtypes = ("float32", *INT_TYPES, *SMALL_TYPES)

    def _reference(self, x, axes):
        return np.max(x, axis=axes, keepdims=True)


@register
@dataclass(frozen=True)
class ReduceMin(_Reduce):
    op_type = "ReduceMin"
    kind = MIN
    dtypes = ("float32", *INT_TYPES, *SMALL_TYPES)

    def _reference(self, x, axes):
        return np.min(x, axis=axes, keepdims=True)


@register
@dataclass(frozen=True)
class ReduceProd(_Reduce):
    op_type = "ReduceProd"
    kind = PROD
    dtypes = ("float32", *INT_TYPES)

    def _reference(self, x, axes):
        return np.prod(_wide(x), axis=axes, keepdims=True, dtype=_wide(x).dtype)


@register
@dataclass(frozen=True)
class ReduceL1(_Reduce):
    op_type = "ReduceL1"
    kind = SUM_ABS

    def _reference(self, x, axes):
        return np.sum(np.abs(_wide(x)), axis=axes, keepdims=True)


@register
@dataclass(frozen=True)
class ReduceL2(_Reduce):
    op_type = "ReduceL2"
    kind = SUM_SQUARE
    post = SQRT

    def _reference(self, x, axes):
        return np.sqrt(np.sum(np.square(_wide(x)), axis=axes, keepdims=True))


@register
@dataclass(frozen=True)
class ReduceSumSquare(_Reduce):
    op_type = "ReduceSumSquare"
    kind = SUM_SQUARE

    def _reference(self, x, axes):
        return np.sum(np.square(_wide(x)), axis=axes, keepdims=True)


@register
@dataclass(frozen=True)
class ReduceLogSum(_Reduce):
    op_type = "ReduceLogSum"
    post = LOG

    def _reference(self, x, axes):
        with np.errstate(divide="ignore", invalid="ignore"):  # log of 0 or of a negative sum
            return np.log(np.sum(_wide(x), axis=axes, keepdims=True))


@register
@dataclass(frozen=True)
class ReduceLogSumExp(_Reduce):
    op_type = "ReduceLogSumExp"
    post = LOG_SUM_EXP

    def _reference(self, x, axes):
        w = _wide(x)
        m = np.max(w, axis=axes, keepdims=True)
        shift = np.where(np.isfinite(m), m, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(np.sum(np.exp(w - shift), axis=axes, keepdims=True)) + shift


# ---- ArgMax, ArgMin ------------------------------------------------------------------------------


@kernel(inline="always")
def _wins(x, best, largest, last):
    """Whether x displaces best: strictly larger (smaller), or equal when the last index is wanted."""
    if x == best:
        return last
    return x > best if largest else x < best


@kernel
def arg_reduce(src, dst, outer, n, inner, largest, last):
    """dst (outer, inner) = the index along n of the max (largest) or min of src (outer, n, inner),
    the first such or the last; both flat, dst int64."""
    for o in range(outer):
        for i in range(inner):
            s = o * n * inner + i
            best = src[s]
            at = 0
            for r in range(1, n):
                x = src[s + r * inner]
                if _wins(x, best, largest, last):
                    best = x
                    at = r
            dst[o * inner + i] = at


@dataclass(frozen=True)
class _ArgReduce(Op):
    """ArgMax/ArgMin along `axis`: int64 indices (select_last_index from opset 12)."""

    largest: ClassVar[bool] = True
    axis: int = 0
    keepdims: int = 1
    select_last_index: int = 0

    def check(self, node, opset):
        if self.keepdims not in (0, 1) or self.select_last_index not in (0, 1):
            raise UnsupportedOp(
                self.op_type,
                node,
                opset,
                f"keepdims {self.keepdims} / select_last_index {self.select_last_index} are not 0 or 1",
            )

    def output_dtypes(self, dtypes):
        _refuse_dtypes(self.op_type, dtypes, ("float32", *INT_TYPES))
        return ["int64"]

    def _axis(self, shape: Shape) -> int:
        rank = len(shape)
        if not -rank <= self.axis < rank:
            raise ShapeError(f"{self.op_type}: axis {self.axis} is out of range for shape {shape}")
        return self.axis % rank

    def infer(self, shapes, consts):
        if shapes[0] is None:
            raise ShapeError(f"{self.op_type}: input shape unknown")
        shape = tuple(shapes[0])
        axis = self._axis(shape)
        if self.keepdims:
            return [(*shape[:axis], 1, *shape[axis + 1 :])]
        return [(*shape[:axis], *shape[axis + 1 :])]

    def flops(self, shapes, out_shapes):
        return int(np.prod(shapes[0], dtype=np.int64))

    def slice_axes(self, shapes, out_shapes):
        return ()  # no weights to cut: it runs whole

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"{self.op_type}.bind: {self.op_type} is not sliced, got part {part}")
        x, y = ins[0], outs[0]
        want = self.infer([x.shape], [None])[0]
        if y.shape != want or y.dtype != np.int64 or str(x.dtype) not in ("float32", *INT_TYPES):
            raise ShapeError(
                f"{self.op_type}.bind: input {x.shape} {x.dtype}, output {y.shape} {y.dtype}; "
                f"expected output {want} int64"
            )
        axis = self._axis(x.shape)
        outer = int(np.prod(x.shape[:axis], dtype=np.int64))
        n, inner = x.shape[axis], int(np.prod(x.shape[axis + 1 :], dtype=np.int64))
        src, dst = _flat(x), _flat(y)
        largest, last = self.largest, bool(self.select_last_index)
        return lambda: arg_reduce(src, dst, outer, n, inner, largest, last)

    def reference(self, ins):
        x = np.asarray(ins[0])
        axis = self._axis(x.shape)
        pick = np.argmax if self.largest else np.argmin
        if self.select_last_index:
            at = x.shape[axis] - 1 - pick(np.flip(x, axis), axis=axis)
        else:
            at = pick(x, axis=axis)
        at = at.astype(np.int64)
        return [np.expand_dims(at, axis) if self.keepdims else at]


@register
@dataclass(frozen=True)
class ArgMax(_ArgReduce):
    op_type = "ArgMax"


@register
@dataclass(frozen=True)
class ArgMin(_ArgReduce):
    op_type = "ArgMin"
    largest = False
