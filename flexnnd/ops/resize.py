"""Resize (opsets 10-19) and Upsample (7-9): nearest, N-linear and N-cubic resampling.

Where ONNX Runtime runs its UpsampleBilinear/UpsampleTrilinear (linear, rank 2 or 4 / 3 or 5 with
N and C unchanged) or ResizeBiCubic (cubic, rank 2 or 4), flexnn repeats its arithmetic bit for
bit: its float32 coordinates, edge weights and order of roundings (`ort_*_table`, kernels without
fastmath), because a DynamicQuantizeLinear downstream turns a last-bit difference into a step. A
resize that changes no length copies, as ORT does.

Everything else is separable: each axis has a table (per output position: which input positions,
with which weights, and whether it falls outside a tf_crop_and_resize box), built once in bind from
the shapes and the absorbed scales/sizes/roi. The last two axes run fused in one pass per plane: a
row is interpolated horizontally once into a small row cache, then output rows blend cached rows
(vectorized). Resized axes before them (rare) run first, one pass each, through scratch. Nearest is
a pure gather, so it takes every element type.

Where ONNX's reference and ONNX Runtime disagree (align_corners and tf_crop_and_resize with a scale
whose output length in * scale is not whole), flexnn refuses rather than pick one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import Op, internal, register
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.resize_kernels import (
    bicubic_ort,
    bilinear_ort,
    gather2d,
    gather_axis,
    interp2d,
    interp_axis,
    nearest2x_bits,
    trilinear_ort,
)

GATHER_DTYPES = ("float32", "int64", "int32", "int16", "int8", "uint8", "uint16", "bool")
MODES = ("nearest", "linear", "cubic")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
TRANSFORMS = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
    "tf_half_pixel_for_nn",
)
# An axis's sampling table holds (taps x length) entries: a hostile length would make it GiBs.
MAX_AXIS = 1 << 24
# Scratch elements of the leading-axis passes are counted at 8 bytes: scratch_bytes sees no dtype.
_WIDEST = 8


# ---- the sampling tables ------------------------------------------------------------------------------
@dataclass(frozen=True)
class AxisTable:
    """Where each output position of one axis reads: `index` and `weight` (n_out, taps), and
    `outside` (n_out,): positions a tf_crop_and_resize box puts outside the input."""

    index: np.ndarray
    weight: np.ndarray
    outside: np.ndarray

    @property
    def taps(self) -> int:
        return self.index.shape[1]

    def is_identity(self, n_in: int) -> bool:
        n_out = self.index.shape[0]
        if n_out != n_in or self.outside.any():
            return False
        own = (self.index == np.arange(n_out)[:, None]) & (self.weight != 0)
        return bool(np.all(self.weight[~own] == 0) and np.allclose((self.weight * own).sum(1), 1.0))

    @staticmethod
    def identity(n: int) -> AxisTable:
        return AxisTable(
            np.arange(n, dtype=np.int64)[:, None], np.ones((n, 1), np.float32), np.zeros(n, bool)
        )


@dataclass(frozen=True)
class AxisPlan:
    """One axis: input and output lengths, the scale the coordinates use, and its crop box."""

    n_in: int
    n_out: int
    scale: float
    roi: tuple[float, float] = (0.0, 1.0)


def source_coords(transform: str, a: AxisPlan, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """x_original for every output position of the axis, and which are outside the box. In float32
    (for nearest, whose rounding flips on the last bit), with ONNX Runtime's order of operations."""
    f = np.dtype(dtype).type
    y = np.arange(a.n_out, dtype=dtype)
    n_in, n_out = f(a.n_in), f(a.n_out)
    scale, half, one = f(a.scale), f(0.5), f(1)
    outside = np.zeros(a.n_out, bool)
    if transform == "half_pixel":
        x = (y + half) / scale - half
    elif transform == "half_pixel_symmetric":
        offset = n_in / f(2) * (one - n_out / (scale * n_in))
        x = offset + (y + half) / scale - half
    elif transform == "pytorch_half_pixel":
        x = (y + half) / scale - half if a.n_out > 1 else np.zeros(a.n_out, dtype)
    elif transform == "align_corners":
        x = y * (n_in - one) / (n_out - one) if a.n_out > 1 else np.zeros(a.n_out, dtype)
    elif transform == "asymmetric":
        x = y / scale
    elif transform == "tf_half_pixel_for_nn":
        x = (y + half) / scale
    elif transform == "tf_crop_and_resize":
        start, end = f(a.roi[0]), f(a.roi[1])
        if a.n_out > 1:
            x = start * (n_in - one) + y * (end - start) * (n_in - one) / (n_out - one)
        else:
            x = np.full(a.n_out, half * (start + end) * (n_in - one), dtype)
        outside = (x < 0) | (x > n_in - one)
    else:
        raise ValueError(f"Resize: coordinate_transformation_mode {transform!r}")
    return x.astype(np.float64), outside


@dataclass(frozen=True)
class LinearTable:
    """ONNX Runtime's bilinear table of one axis: per output position the two input positions `lo`,
    `hi` (int64) and their distances `d_lo`, `d_hi` (float32; the weight of `lo` is d_hi), and
    which positions a tf_crop_and_resize box puts outside the input."""

    lo: np.ndarray
    hi: np.ndarray
    d_lo: np.ndarray
    d_hi: np.ndarray
    outside: np.ndarray


def ort_coords(transform: str, a: AxisPlan) -> np.ndarray:
    """x_original for every output position as ONNX Runtime computes it for linear: float32
    arithmetic in its order of operations (float64 where it promotes), and the position itself
    wherever the axis's float32 scale is exactly 1, whatever the transform."""
    f = np.float32
    x = np.arange(a.n_out, dtype=f)
    scale, half, one = f(a.scale), f(0.5), f(1)
    n_in, n_out = f(a.n_in), f(a.n_out)
    if scale == 1:
        return x
    if transform == "half_pixel":
        return (x + half) / scale - half
    if transform == "half_pixel_symmetric":  # offset in float32, the rest in float64
        offset = np.float64(n_in / f(2) * (one - n_out / (scale * n_in)))
        return ((offset + (x.astype(np.float64) + 0.5) / np.float64(scale)) - 0.5).astype(f)
    if transform == "pytorch_half_pixel":
        return (x + half) / scale - half if a.n_out > 1 else np.zeros(a.n_out, f)
    if transform == "align_corners":
        return x * (n_in - one) / (n_out - one) if a.n_out > 1 else np.zeros(a.n_out, f)
    if transform == "asymmetric":
        return x / scale
    if transform == "tf_half_pixel_for_nn":
        return (x + half) / scale
    if transform == "tf_crop_and_resize":
        start, end = f(a.roi[0]), f(a.roi[1])
        if a.n_out > 1:
            return start * (n_in - one) + (x * (end - start) * (n_in - one)) / (n_out - one)
        return np.full(a.n_out, f(0.5 * np.float64(start + end) * np.float64(n_in - one)), f)
    raise ValueError(f"Resize: coordinate_transformation_mode {transform!r}")


def ort_linear_table(transform: str, a: AxisPlan) -> LinearTable:
    """One axis of ONNX Runtime's UpsampleBilinear setup: clamp x_original into the input, take
    floor and floor + 1 (clamped), their float32 distances; where both are the same, 0.5 each."""
    f = np.float32
    raw = ort_coords(transform, a)
    last = a.n_in - 1
    x = np.maximum(f(0), np.minimum(raw, f(last)))
    lo = np.minimum(x.astype(np.int64), last)
    hi = np.minimum(lo + 1, last)
    d_lo, d_hi = np.abs(x - lo.astype(f)), np.abs(x - hi.astype(f))
    same = lo == hi
    d_lo[same], d_hi[same] = f(0.5), f(0.5)
    outside = (raw < 0) | (raw > f(last)) if transform == "tf_crop_and_resize" else np.zeros(a.n_out, bool)
    return LinearTable(lo, hi, d_lo.astype(f), d_hi.astype(f), outside)


def ort_linear(x: np.ndarray, tabs: tuple[LinearTable, ...], extrap: float) -> np.ndarray:
    """ONNX Runtime's bilinear (two tables) or trilinear (three) over the last axes of float32 `x`,
    in numpy (the kernels' reference): its terms in its order, each product rounded to float32,
    summed left to right."""
    k = len(tabs)
    grids = np.ix_(*[np.arange(t.lo.size) for t in tabs])  # broadcastable output positions per axis
    total, outside = None, np.zeros((), bool)
    for t, g in zip(tabs, grids, strict=True):
        outside = outside | t.outside[g]
    # ORT's term order: x fastest, lo before hi; the weight of lo is d_hi; factors x, y, z.
    for bits in range(1 << k):
        picks = [(bits >> (k - 1 - i)) & 1 for i in range(k)]  # per axis, outermost first
        weight = None
        for i in reversed(range(k)):  # x first
            t, g = tabs[i], grids[i]
            d = (t.d_lo if picks[i] else t.d_hi)[g]
            weight = d if weight is None else weight * d
        index = tuple((tabs[i].hi if picks[i] else tabs[i].lo)[grids[i]] for i in range(k))
        term = weight * x[(Ellipsis, *index)]
        total = term if total is None else total + term
    total[..., outside] = np.float32(extrap)
    return total


@dataclass(frozen=True)
class CubicTable:
    """ONNX Runtime's bicubic table of one axis: per output position four input positions `index`
    (n, 4; floor - 1 .. floor + 2, clamped into the input), their Keys coefficients `coeff` (n, 4,
    float32; zero outside the input with exclude_outside), the coefficients' float32 sum `total`
    (1 without exclude_outside), and which positions a tf_crop_and_resize box puts outside."""

    index: np.ndarray
    coeff: np.ndarray
    total: np.ndarray
    outside: np.ndarray


def ort_cubic_table(transform: str, a: AxisPlan, coeff_a: float, exclude_outside: bool) -> CubicTable:
    """One axis of ONNX Runtime's ResizeBiCubic: coefficients of s = x - floor(x) in float32 in its
    order of operations (GetCubicCoeffs), renormalized with exclude_outside."""
    f = np.float32
    raw = ort_coords(transform, a)
    base = np.floor(raw)
    s = np.abs(raw - base)
    A, one, two, three = f(coeff_a), f(1), f(2), f(3)
    five_a, eight_a, four_a = f(5) * A, f(8) * A, f(4) * A
    s1, s2, s3 = s + one, one - s, two - s
    coeff = np.stack(
        [
            ((A * s1 - five_a) * s1 + eight_a) * s1 - four_a,
            ((A + two) * s - (A + three)) * s * s + one,
            ((A + two) * s2 - (A + three)) * s2 * s2 + one,
            ((A * s3 - five_a) * s3 + eight_a) * s3 - four_a,
        ],
        axis=1,
    ).astype(f)
    index = base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    total = np.ones(a.n_out, f)
    if exclude_outside:
        coeff = np.where((index < 0) | (index >= a.n_in), f(0), coeff)
        total = np.zeros(a.n_out, f)
        for i in range(4):  # ORT's running sum, from 0
            total = total + coeff[:, i]
    outside = (
        (raw < 0) | (raw > f(a.n_in - 1)) if transform == "tf_crop_and_resize" else np.zeros(a.n_out, bool)
    )
    return CubicTable(np.clip(index, 0, a.n_in - 1), coeff, total, outside)


def ort_bicubic(x: np.ndarray, ty: CubicTable, tx: CubicTable, extrap: float) -> np.ndarray:
    """ONNX Runtime's bicubic over the last two axes of float32 `x`, in numpy (bicubic_ort's
    reference): rows interpolated along W, then blended along H, each sum from 0 left to right."""
    out = np.zeros((*x.shape[:-2], ty.index.shape[0], tx.index.shape[0]), np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 only where a box extrapolates
        xw = tx.coeff / tx.total[:, None]
        for i in range(4):
            row = np.zeros_like(out)
            for j in range(4):
                row = row + xw[:, j] * x[..., ty.index[:, i][:, None], tx.index[:, j][None, :]]
            out = out + (row * ty.coeff[:, i][:, None]) / ty.total[:, None]
    out[..., ty.outside[:, None] | tx.outside[None, :]] = np.float32(extrap)
    return out


def _cubic(s: np.ndarray, a: float) -> np.ndarray:
    s = np.abs(s)
    near = ((a + 2) * s - (a + 3)) * s * s + 1
    far = ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
    return np.where(s <= 1, near, np.where(s < 2, far, 0.0))


def axis_table(op: _Resample, transform: str, a: AxisPlan) -> AxisTable:
    """The sampling table of one axis under `op`'s mode (ONNX's reference, per output position)."""
    x, outside = source_coords(transform, a, np.float32 if op.mode == "nearest" else np.float64)
    last = a.n_in - 1
    if op.mode == "nearest":
        if op.legacy_nearest:  # opsets < 11 (and Upsample): truncate up-sampling, ceil down-sampling
            pick = np.ceil(x) if a.scale < 1 else np.trunc(x)
        else:
            pick = {
                "round_prefer_floor": np.ceil(x - 0.5),
                "round_prefer_ceil": np.floor(x + 0.5),
                "floor": np.floor(x),
                "ceil": np.ceil(x),
            }[op.nearest_mode]
        index = np.clip(pick, 0, last).astype(np.int64)[:, None]
        return AxisTable(index, np.ones(index.shape, np.float32), outside)
    # The reference's convention: an integer x reads its left neighbour with ratio 1.
    base = np.floor(x)
    whole = base == x
    base = np.where(whole, x - 1, base)
    ratio = (x - base)[:, None]
    scale = min(a.scale, 1.0) if op.antialias else 1.0
    if op.mode == "linear":
        start = math.floor(-1 / scale) + 1
        taps = np.arange(start, 2 - start, dtype=np.float64)[None, :]
        weight = np.clip(1 - np.abs((taps - ratio) * scale), 0, 1)
    else:
        start = math.floor(-2 / scale) + 1
        taps = np.arange(start, 2 - start, dtype=np.float64)[None, :]
        weight = _cubic((taps - ratio) * scale, op.cubic_coeff_a)
    if op.antialias:
        weight = weight / weight.sum(1, keepdims=True)
    index = base[:, None].astype(np.int64) + taps.astype(np.int64)
    if op.exclude_outside:
        weight = np.where((index < 0) | (index > last), 0.0, weight)
        total = weight.sum(1, keepdims=True)
        weight = weight / np.where(total == 0, 1.0, total)
    return AxisTable(np.clip(index, 0, last), weight.astype(np.float32), outside)


# ---- the shared op -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Resample(Op):
    """What Resize and Upsample share: from the input shape, a plan per axis; from those, tables; the
    kernels bound over them. Subclasses give `axis_plans` and the attributes the tables read."""

    # Upsample's fixed semantics; Resize makes each of these a field.
    mode = "nearest"
    nearest_mode = "round_prefer_floor"
    coordinate_transformation_mode = "asymmetric"
    cubic_coeff_a = -0.75
    exclude_outside = 0
    extrapolation_value = 0.0
    antialias = 0
    legacy_nearest = True

    def axis_plans(self, shape) -> list[AxisPlan]:
        raise NotImplementedError

    @classmethod
    def _build(cls, attrs, own, node, opset):
        """The op from ONNX attributes (checked as the base does) plus flexnn's own fields `own`."""
        op, _ = super().from_onnx(attrs, [], node, opset)
        op = replace(op, **own)
        op.check(node, opset)
        return op, (0,)

    def output_dtypes(self, dtypes):
        dtype = dtypes[0]
        allowed = GATHER_DTYPES if self.mode == "nearest" else ("float32",)
        if dtype not in allowed:
            raise DtypeRefused(f"{self.op_type} mode {self.mode!r} takes {'/'.join(allowed)}, not {dtype}")
        return [dtype]

    def infer(self, shapes, consts):
        if shapes[0] is None or len(shapes[0]) == 0:
            raise ShapeError(f"{self.op_type}: input must have rank >= 1, got {shapes[0]}")
        plans = self.axis_plans(tuple(shapes[0]))
        if any(max(a.n_in, a.n_out) > MAX_AXIS for a in plans):
            raise ShapeError(
                f"{self.op_type}: input {tuple(shapes[0])} to {tuple(a.n_out for a in plans)}: an axis is longer "
                f"than {MAX_AXIS:,}, the most flexnn's per-axis sampling tables take"
            )
        return [tuple(a.n_out for a in plans)]

    def tables(self, shape) -> list[AxisTable]:
        """One table per axis; an axis that is not resampled gets the identity."""
        out = []
        for a in self.axis_plans(shape):
            t = axis_table(self, self.coordinate_transformation_mode, a)
            out.append(AxisTable.identity(a.n_in) if t.is_identity(a.n_in) else t)
        return out

    def ort_linear_tables(self, shape) -> tuple[LinearTable, ...] | None:
        """ONNX Runtime's tables of the axes it interpolates where it runs its UpsampleBilinear
        (linear without antialias, rank 2, or rank 4 leaving N and C as they are: the last two
        axes) or UpsampleTrilinear (rank 3, or rank 5 so: the last three); None elsewhere."""
        if self.mode != "linear" or self.antialias or len(shape) not in (2, 3, 4, 5):
            return None
        plans = self.axis_plans(shape)
        k = 2 if len(shape) in (2, 4) else 3
        if any(a.n_out != a.n_in or np.float32(a.scale) != 1 for a in plans[:-k]):
            return None
        return tuple(ort_linear_table(self.coordinate_transformation_mode, a) for a in plans[-k:])

    def ort_cubic_tables(self, shape) -> tuple[CubicTable, CubicTable] | None:
        """ONNX Runtime's tables of the last two axes where it runs its ResizeBiCubic (cubic
        without antialias, rank 2, or rank 4 leaving N and C as they are); None elsewhere."""
        if self.mode != "cubic" or self.antialias or len(shape) not in (2, 4):
            return None
        plans = self.axis_plans(shape)
        if any(a.n_out != a.n_in or np.float32(a.scale) != 1 for a in plans[:-2]):
            return None
        t, coeff_a, exclude = (
            self.coordinate_transformation_mode,
            self.cubic_coeff_a,
            bool(self.exclude_outside),
        )
        return tuple(ort_cubic_table(t, a, coeff_a, exclude) for a in plans[-2:])

    def _layout(self, shape):
        """The tables, and the axes before the last two that are resampled."""
        tabs = self.tables(shape)
        lead = [i for i in range(max(len(shape) - 2, 0)) if not _plain(tabs[i], shape[i])]
        return tabs, lead

    def scratch_bytes(self, shapes, part=None):
        shape = tuple(shapes[0])
        if self._copies(shape) or self.ort_linear_tables(shape) or self.ort_cubic_tables(shape):
            return 0
        tabs, lead = self._layout(shape)
        lead_elems = 0
        if lead:
            dims = list(shape)
            sizes = []
            for i in lead:
                dims[i] = tabs[i].index.shape[0]
                sizes.append(int(np.prod(dims)))
            lead_elems = 2 * max(sizes) if len(lead) > 1 else sizes[0]
        cache = 0
        if self.mode != "nearest":
            rt = tabs[-2].taps if len(shape) >= 2 else 1
            cache = 4 * (rt * tabs[-1].index.shape[0] + rt)
        return _WIDEST * lead_elems + cache + (64 if lead and cache else 0)

    def _copies(self, shape) -> bool:
        """Whether no length changes: ONNX Runtime then copies the input, whatever the scales."""
        return tuple(self.infer([shape], [None])[0]) == tuple(shape)

    def flops(self, shapes, out_shapes):
        tabs = self.tables(tuple(shapes[0]))
        return int(np.prod(out_shapes[0])) * sum(2 * t.taps for t in tabs[-2:])

    def slice_axes(self, shapes, out_shapes):
        return ()  # no weights to cut; its scratch is a few rows: it runs whole

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"{self.op_type}.bind: not sliced, got part {part}")
        x, y = ins[0], outs[0]
        shape = tuple(x.shape)
        want = self.infer([shape], [None])[0]
        if tuple(y.shape) != want or x.dtype != y.dtype:
            raise ShapeError(
                f"{self.op_type}.bind: input {x.shape} {x.dtype}, output {y.shape} {y.dtype}; want {want}"
            )
        if want == shape:

            def run_resize_copy():
                np.copyto(y, x)

            return run_resize_copy
        extrap = np.array(self.extrapolation_value).astype(x.dtype)[()]
        ort = self.ort_linear_tables(shape)
        if ort is not None and len(ort) == 3:
            return self._bind_trilinear(x, y, ort, np.float32(extrap))
        if ort is not None:
            th, tw = ort
            (h, w), (oh, ow) = shape[-2:], want[-2:]
            u = np.uint64
            args = (
                reshape_view(x, (-1,)), reshape_view(y, (-1,)), int(np.prod(shape[:-2])), h, w, oh, ow,
                (th.lo * w).astype(u), (th.hi * w).astype(u), th.d_lo, th.d_hi,
                tw.lo.astype(u), tw.hi.astype(u), tw.d_lo, tw.d_hi,
                th.outside.astype(np.uint8), tw.outside.astype(np.uint8)[: ow if tw.outside.any() else 0],
                np.float32(extrap),
            )  # fmt: skip

            def run_resize_bilinear():
                bilinear_ort(*args)

            return run_resize_bilinear
        cubic = self.ort_cubic_tables(shape)
        if cubic is not None:
            return self._bind_bicubic(x, y, cubic, np.float32(extrap))
        return self._bind_separable(x, y, scratch, extrap)

    def _bind_bicubic(self, x, y, tabs, extrap):
        """ONNX Runtime's bicubic over the last two axes (rank 2 or 4)."""
        ty, tx = tabs
        (h, w), (oh, ow) = x.shape[-2:], y.shape[-2:]
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 only where a box extrapolates
            xw = (tx.coeff / tx.total[:, None]).astype(np.float32)
        cout = tx.outside.astype(np.uint8)
        args = (
            reshape_view(x, (-1,)), reshape_view(y, (-1,)), int(np.prod(x.shape[:-2])), h, w, oh, ow,
            (ty.index * w).astype(np.uint64), ty.coeff, ty.total, tx.index.astype(np.uint64), xw,
            ty.outside.astype(np.uint8), cout[: ow if cout.any() else 0], extrap,
        )  # fmt: skip

        def run_resize_bicubic():
            bicubic_ort(*args)

        return run_resize_bicubic

    def _bind_trilinear(self, x, y, tabs, extrap):
        """ONNX Runtime's trilinear over the last three axes (rank 3 or 5)."""
        (d, h, w), (od, oh, ow) = x.shape[-3:], y.shape[-3:]
        u = np.uint64
        tz, ty, tx = (
            ((t.lo * m).astype(u), (t.hi * m).astype(u), t.d_lo, t.d_hi)
            for t, m in zip(tabs, (h * w, w, 1), strict=True)
        )
        cout = tabs[2].outside.astype(np.uint8)
        args = (
            reshape_view(x, (-1,)), reshape_view(y, (-1,)), int(np.prod(x.shape[:-3])), d * h * w, od, oh, ow,
            tz, ty, tx, tabs[0].outside.astype(np.uint8), tabs[1].outside.astype(np.uint8),
            cout[: ow if cout.any() else 0], extrap,
        )  # fmt: skip

        def run_resize_trilinear():
            trilinear_ort(*args)

        return run_resize_trilinear

    def _bind_separable(self, x, y, scratch, extrap):
        """flexnn's own separable passes: every case ONNX Runtime's bi/trilinear does not cover."""
        shape = tuple(x.shape)
        tabs, lead = self._layout(shape)
        gather = self.mode == "nearest"
        if gather:  # a gather moves bits: one kernel per element width, not per dtype
            bits = np.dtype(f"u{x.dtype.itemsize}")
            x, y, extrap = x.view(bits), y.view(bits), np.array(extrap).view(bits)[()]
        need = self.scratch_bytes([shape])
        raw = np.zeros(0, np.uint8) if scratch is None else reshape_view(scratch, (-1,)).view(np.uint8)
        if raw.size < need:
            raise ValueError(f"{self.op_type}.bind: scratch of {raw.size} bytes, need {need}")
        steps = []
        dims = list(shape)
        src = reshape_view(x, (-1,))
        lead_bytes = 0
        if lead:
            sizes = []
            for i in lead:
                dims[i] = tabs[i].index.shape[0]
                sizes.append(int(np.prod(dims)))
            lead_bytes = _WIDEST * (2 * max(sizes) if len(lead) > 1 else sizes[0])
            half = lead_bytes // 2 if len(lead) > 1 else lead_bytes
            dims = list(shape)
            for k, i in enumerate(lead):
                t = tabs[i]
                n_out = t.index.shape[0]
                outer, inner = int(np.prod(dims[:i])), int(np.prod(dims[i + 1 :]))
                dims[i] = n_out
                n = outer * n_out * inner
                off = (k % 2) * half
                dst = raw[off : off + n * x.dtype.itemsize].view(x.dtype)
                mask = t.outside.astype(np.uint8)
                if gather:
                    args = (src, dst, outer, shape[i], n_out, inner, t.index[:, 0].copy(), mask, extrap)
                    steps.append((gather_axis, args))
                else:
                    index, weight = t.index.reshape(-1).copy(), t.weight.reshape(-1).copy()
                    args = (src, dst, outer, shape[i], n_out, inner, index, weight, t.taps, mask, extrap)
                    steps.append((interp_axis, args))
                src = dst
        # The fused pass over the last two axes (rank 1: one plane of one row).
        h_tab = tabs[-2] if len(shape) >= 2 else AxisTable.identity(1)
        w_tab = tabs[-1]
        h, w = (dims[-2], dims[-1]) if len(shape) >= 2 else (1, dims[-1])
        oh, ow = h_tab.index.shape[0], w_tab.index.shape[0]
        planes = int(np.prod(dims[:-2])) if len(shape) >= 2 else 1
        dst = reshape_view(y, (-1,))
        rout, cout = h_tab.outside.astype(np.uint8), w_tab.outside.astype(np.uint8)
        if gather:
            ridx, cidx = h_tab.index[:, 0].copy(), w_tab.index[:, 0].copy()
            rep = ow // w if ow % w == 0 and np.array_equal(cidx, np.arange(ow) // (ow // w)) else 0
            cout = cout if cout.any() else cout[:0]
            if rep == 2 and cout.size == 0 and x.dtype.itemsize == 4:
                args = (src, dst.view(np.uint64), planes, h, w, oh, ridx, rout, extrap)
                steps.append((nearest2x_bits, args))
            else:
                steps.append(
                    (gather2d, (src, dst, planes, h, w, oh, ow, ridx, rout, cidx, cout, extrap, rep))
                )
        else:
            off = -(-lead_bytes // 64) * 64
            cache = raw[off : off + 4 * (h_tab.taps * ow + h_tab.taps)].view(np.float32)
            args = (
                src, dst, planes, h, w, oh, ow,
                h_tab.index.reshape(-1).copy(), h_tab.weight.reshape(-1).copy(), h_tab.taps, rout,
                w_tab.index.reshape(-1).copy(), w_tab.weight.reshape(-1).copy(), w_tab.taps, cout,
                np.float32(extrap), cache,
            )  # fmt: skip
            steps.append((interp2d, args))
        if len(steps) == 1:
            fn, args = steps[0]

            def run_resize():
                fn(*args)

            return run_resize

        def run_resize_axes():
            for fn, args in steps:
                fn(*args)

        return run_resize_axes

    def reference(self, ins):
        x = np.asarray(ins[0])
        if self._copies(x.shape):
            return [x.copy()]
        ort = self.ort_linear_tables(x.shape)
        if ort is not None:
            return [ort_linear(x.astype(np.float32), ort, self.extrapolation_value)]
        cubic = self.ort_cubic_tables(x.shape)
        if cubic is not None:
            return [ort_bicubic(x.astype(np.float32), *cubic, self.extrapolation_value)]
        result = x if self.mode == "nearest" else x.astype(np.float64)
        for axis, t in enumerate(self.tables(tuple(x.shape))):
            taken = np.take(result, t.index, axis=axis)  # (..., n_out, taps, ...)
            if self.mode == "nearest":
                result = np.take(taken, 0, axis=axis + 1)
            else:
                shape = [1] * taken.ndim
                shape[axis], shape[axis + 1] = t.weight.shape
                result = (taken * t.weight.astype(np.float64).reshape(shape)).sum(axis=axis + 1)
            mask = t.outside.reshape([-1 if i == axis else 1 for i in range(result.ndim)])
            result = np.where(mask, np.array(self.extrapolation_value).astype(result.dtype), result)
        return [np.asarray(result).astype(x.dtype)]


def _plain(t: AxisTable, n: int) -> bool:
    """Whether table `t` leaves an axis of length n as it is."""
    return (
        t.taps == 1
        and t.index.shape[0] == n
        and not t.outside.any()
        and bool(np.array_equal(t.index[:, 0], np.arange(n)))
    )


def _const(value) -> np.ndarray | None:
    """A parameter input's value, None when absent or empty (opset 11's way of leaving one out)."""
    if value is None or np.asarray(value).size == 0:
        return None
    return np.asarray(value)


def scaled_length(n: int, scale: float) -> int:
    """floor(n * scale) computed in float32, as ONNX Runtime does (10 * 0.7f is 7 there, 6 in float64)."""
    return math.floor(float(np.float32(n) * np.float32(scale)))


def _legacy_plans(shape, scales) -> list[AxisPlan]:
    if len(scales) != len(shape):
        raise ShapeError(f"scales {list(scales)} do not match the input's rank {len(shape)} (shape {shape})")
    return [AxisPlan(int(n), scaled_length(n, s), float(s)) for n, s in zip(shape, scales, strict=True)]


# ---- Resize --------------------------------------------------------------------------------------------
@register
@dataclass(frozen=True)
class Resize(_Resample):
    """ONNX Resize; roi (tf_crop_and_resize only), scales and sizes are constants absorbed at import."""

    op_type = "Resize"
    optional_inputs = (1, 2, 3)

    antialias: int = 0
    axes: tuple[int, ...] = ()
    coordinate_transformation_mode: str = "half_pixel"
    cubic_coeff_a: float = -0.75
    exclude_outside: int = 0
    extrapolation_value: float = 0.0
    keep_aspect_ratio_policy: str = "stretch"
    mode: str = "nearest"
    nearest_mode: str = "round_prefer_floor"
    scale_values: tuple[float, ...] = internal(())
    size_values: tuple[int, ...] = internal(())
    roi_values: tuple[float, ...] = internal(())
    # Opset 10 (and Upsample): asymmetric coordinates, nearest truncates (floor) or, shrinking, ceils.
    legacy_nearest: bool = internal(False)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        def bad(why: str) -> UnsupportedOp:
            return UnsupportedOp(cls.op_type, node, opset, why)

        attrs, own = dict(attrs), {}
        if opset < 11:
            if set(attrs) - {"mode"}:
                raise bad(f"attribute(s) {sorted(set(attrs) - {'mode'})} do not exist in opset {opset}")
            scales = _const(consts[1]) if len(consts) > 1 else None
            if scales is None:
                raise bad("input 1 (scales) must be given, as a constant known at import")
            own.update(coordinate_transformation_mode="asymmetric", legacy_nearest=True)
            own["scale_values"] = tuple(float(s) for s in scales.astype(np.float32))
        else:
            roi = _const(consts[1]) if len(consts) > 1 else None
            scales = _const(consts[2]) if len(consts) > 2 else None
            sizes = _const(consts[3]) if len(consts) > 3 else None
            if (scales is None) == (sizes is None):
                raise bad(
                    "exactly one of scales and sizes must be given, as a constant known at import "
                    "(flexnn refuses one computed at run time)"
                )
            if scales is not None:
                own["scale_values"] = tuple(float(s) for s in scales.astype(np.float32))
            else:
                own["size_values"] = tuple(int(s) for s in sizes)
            if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
                if roi is None:
                    raise bad("tf_crop_and_resize needs a roi")
                own["roi_values"] = tuple(float(v) for v in roi.astype(np.float64))
            if opset >= 13 and attrs.get("coordinate_transformation_mode") == "tf_half_pixel_for_nn":
                raise bad("tf_half_pixel_for_nn exists only in opset 11")
            if opset < 18 and set(attrs) & {"antialias", "axes", "keep_aspect_ratio_policy"}:
                raise bad(f"antialias/axes/keep_aspect_ratio_policy do not exist in opset {opset}")
        return cls._build(attrs, own, node, opset)

    def check(self, node, opset):
        def bad(why: str) -> UnsupportedOp:
            return UnsupportedOp(self.op_type, node, opset, why)

        if self.mode not in MODES:
            raise bad(f"mode {self.mode!r} (flexnn takes {', '.join(MODES)})")
        if self.antialias and self.mode == "nearest":
            raise bad("antialias applies to linear and cubic only (ONNX Runtime refuses it with nearest)")
        if self.nearest_mode not in NEAREST_MODES:
            raise bad(f"nearest_mode {self.nearest_mode!r}")
        if self.coordinate_transformation_mode not in TRANSFORMS:
            raise bad(f"coordinate_transformation_mode {self.coordinate_transformation_mode!r}")
        if self.keep_aspect_ratio_policy not in ("stretch", "not_larger", "not_smaller"):
            raise bad(f"keep_aspect_ratio_policy {self.keep_aspect_ratio_policy!r}")
        if any(not (s > 0 and math.isfinite(s)) for s in self.scale_values):
            raise bad(f"scales {list(self.scale_values)} must be finite and > 0")
        if any(s <= 0 for s in self.size_values):
            raise bad(f"sizes {list(self.size_values)} must be > 0")
        if len(set(self.axes)) != len(self.axes):
            raise bad(f"axes {list(self.axes)} repeat an axis")

    def axis_plans(self, shape) -> list[AxisPlan]:
        rank = len(shape)
        if self.legacy_nearest:
            return _legacy_plans(shape, self.scale_values)
        if any(not -rank <= a < rank for a in self.axes):
            raise ShapeError(f"Resize: axes {list(self.axes)} out of range for rank {rank} (shape {shape})")
        axes = [a % rank for a in self.axes] or list(range(rank))
        given = self.scale_values or self.size_values
        if len(given) != len(axes):
            what = "scales" if self.scale_values else "sizes"
            raise ShapeError(f"Resize: {what} {list(given)} for {len(axes)} axes (input shape {shape})")
        roi = [(0.0, 1.0)] * rank
        if self.roi_values:
            if len(self.roi_values) != 2 * len(axes):
                raise ShapeError(f"Resize: roi {list(self.roi_values)} for {len(axes)} axes (input {shape})")
            for k, a in enumerate(axes):
                roi[a] = (self.roi_values[k], self.roi_values[len(axes) + k])
        scales = [1.0] * rank
        sizes = list(shape)
        if self.scale_values:
            for a, s in zip(axes, self.scale_values, strict=True):
                scales[a] = s
                sizes[a] = scaled_length(shape[a], s)
                if self.coordinate_transformation_mode in ("align_corners", "tf_crop_and_resize") and (
                    not math.isclose(shape[a] * s, sizes[a], rel_tol=1e-6)
                ):
                    raise ShapeError(
                        f"Resize: {self.coordinate_transformation_mode} with scale {s} on length {shape[a]} "
                        f"gives {shape[a] * s:g} output positions, not a whole number: ONNX's reference "
                        "and ONNX Runtime disagree there; give sizes instead of scales"
                    )
        else:
            # float32, as ONNX Runtime divides: its coordinates use exactly this scale
            ratios = {
                a: float(np.float32(n) / np.float32(shape[a]))
                for a, n in zip(axes, self.size_values, strict=True)
            }
            if self.keep_aspect_ratio_policy == "stretch":
                for a, n in zip(axes, self.size_values, strict=True):
                    scales[a], sizes[a] = ratios[a], n
            else:
                pick = min if self.keep_aspect_ratio_policy == "not_larger" else max
                s = pick(ratios.values())
                for a in axes:
                    scales[a], sizes[a] = s, int(s * shape[a] + 0.5)
        if any(n <= 0 for n in sizes):
            raise ShapeError(f"Resize: output shape {sizes} from input {shape} is empty")
        return [
            AxisPlan(int(n), int(m), float(s), r)
            for n, m, s, r in zip(shape, sizes, scales, roi, strict=True)
        ]


# ---- Upsample ------------------------------------------------------------------------------------------
@register
@dataclass(frozen=True)
class Upsample(_Resample):
    """ONNX Upsample (deprecated; opset 7: scales attribute, 9: scales input): asymmetric
    coordinates, nearest truncating as ONNX Runtime does, or N-linear."""

    op_type = "Upsample"
    mode: str = "nearest"
    scales: tuple[float, ...] = ()

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        attrs = dict(attrs)
        if "scales" not in attrs:
            value = _const(consts[1]) if len(consts) > 1 else None
            if value is None:
                raise UnsupportedOp(
                    cls.op_type, node, opset, "input 1 (scales) must be a constant known at import"
                )
            attrs["scales"] = tuple(float(s) for s in value.astype(np.float32))
        return cls._build(attrs, {}, node, opset)

    def check(self, node, opset):
        if self.mode not in ("nearest", "linear"):
            raise UnsupportedOp(self.op_type, node, opset, f"mode {self.mode!r} (nearest or linear)")
        if not self.scales or any(not (s >= 1 and math.isfinite(s)) for s in self.scales):
            raise UnsupportedOp(self.op_type, node, opset, f"scales {list(self.scales)} must be >= 1")

    def axis_plans(self, shape) -> list[AxisPlan]:
        return _legacy_plans(shape, self.scales)
