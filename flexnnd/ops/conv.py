"""Conv (2-D, NCHW, float32) with a fused bias + activation epilogue.

Four paths, picked in bind() by shape, all writing straight into the output:
  pointwise  1×1, stride 1, no padding: the input already is the GEMM operand (no im2col);
  winograd   3×3, stride 1, dense, large enough: F(2×2, 3×3), 16 batched GEMMs on transformed
             tiles (2.25× fewer multiplies), in bands of tile rows and chunks of output channels;
  im2col     anything else that is not depthwise: im2col into scratch, then a BLAS matmul, per
             group and per band of output rows, so the scratch stays cache-sized; with a column
             stride (the 7x7/2 and 3x3/2 stems) im2col_strided splits input rows by phase first;
  depthwise  group == Cin == Cout: a direct numba kernel, one pass per output channel.
A band of output rows is also exactly what Part("rows", r0, r1) asks for, so the planner's input
slicing and the kernel's cache blocking are the same machinery. Part("channels", c0, c1) parts of
one conv share one im2col (or Winograd input transform) of the whole image (see _SHARED_BY).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.activation import (
    ACT_CLIP,
    ACT_CODES,
    ACT_HARDSIGMOID,
    ACT_HARDSWISH,
    ACT_LEAKY,
    ACT_NONE,
    ACT_RELU,
    ACT_SIGMOID,
    reference_activation,
)
from flexnnd.ops.base import Kernel, Op, Part, internal, register
from flexnnd.ops.jit import kernel

# The im2col band (K × band columns) stays below 1 MiB, in the 2 MiB L2 while BLAS packs it, but
# has at least MIN_BAND_COLS columns (BLAS loses a third of its speed on narrower matrices). The
# pointwise band (input + output columns) needs no scratch: it only keeps the epilogue in cache.
IM2COL_BAND_BYTES = 1 << 20
POINTWISE_BAND_BYTES = 4 << 20
MIN_BAND_COLS = 512
# With a column stride, im2col_strided (split each input row by column phase once, then contiguous
# copies) replaces the strided gather per tap when the kernel is at least STRIDED_MIN_KW wide or
# the output at least STRIDED_MIN_WIDTH wide. Measured: 7x7/2 stem 0.32 ms vs 0.57, 3x3/2 stems
# (out_w 111, 112) 0.11 vs 0.12; but 3x3/2 with Cin 64..256 at out_w 28..7 is 5-10% slower and
# 1x1/2 5x slower (the split copies every phase, the 1x1 tap reads one).
STRIDED_MIN_KW = 5
STRIDED_MIN_WIDTH = 64
# Winograd saves multiplies in proportion to Cin*Cout per pixel and pays transforms in proportion
# to Cin+Cout, with per-tile-row loop costs that narrow planes do not amortize: it is used when
# out_w >= WINO_MIN_WIDTH and Cin*Cout/(Cin+Cout) >= WINO_MIN_SCORE. Measured against im2col, ReLU
# epilogue: 28 wide 32->96 0.85x, 32->128 0.89x, 96->128 0.70x, 128->128 0.70x; but 16->64@55
# 1.09x and 16->32@28 1.22x (scores 12.8, 10.7); 7 wide 1.3x+. Whole models with their 13-14 wide
# 3x3 convs on Winograd instead of im2col: ResNet-18 0.95x, ResNet-50 0.98x, SqueezeNet 1.0x, VGG-16 1.0x.
# v+m per band and u per chunk of output channels stay below the byte limits, but a band has at
# least WINO_MIN_TILES tiles so that the 16 GEMMs stay efficient.
WINO_MIN_WIDTH = 13
WINO_MIN_SCORE = 20
WINO_BAND_BYTES = 4 << 20
WINO_WEIGHT_BYTES = 4 << 20
# Below WINO_WIDE_WIDTH (13-14 wide planes) the transformed weights of a chunk would dwarf the rest
# of the step (ResNet-18's 256@14: 4 MiB against 0.9 MiB of v), and low budgets became infeasible.
WINO_WIDE_WIDTH = 20
WINO_NARROW_WEIGHT_BYTES = 1 << 20
WINO_MIN_TILES = 256
# A band of rows (Part "rows") exists because memory is short, and the transformed weights u and
# products m of a whole-width chunk do not shrink with the band (3x3 128->192 at 28 wide, 14 of 28
# rows: 3.7 MB of scratch): a sliced step transforms its weights in chunks of at most this many
# output channels. Measured, 7-14 row bands: 64->192@56 0.56 vs 0.67 ms, 128->192@28 0.90 vs 1.20,
# 96->128@28 0.55 vs 0.63; the weight transform still runs once per chunk and band.
WINO_SLICED_CHUNK = 16

# depthwise3x3 (direct, no scratch) against the padded-band kernel, Clip epilogue, measured: stride 2
# 112->56 0.54 vs 0.78 ms (96 ch), 56->28 0.27 vs 0.36, but 28->14 0.15 vs 0.12; stride 1 112 wide
# 0.18 vs 0.24, 56 wide equal, narrower slower (its vector loops want 64-float runs).
DW_DIRECT_MIN_WIDTH = 28
DW_DIRECT_MIN_WIDTH_S1 = 64

# Stands for an absent bias: the epilogue adds 0 when it is empty (bind must not allocate one).
NO_BIAS = np.zeros(0, dtype=np.float32)


# ---- kernels --------------------------------------------------------------------------------------
# Kernels index flat arrays with unsigned offsets (np.uint64): numba then skips the wraparound
# check of a possibly negative index, which would keep LLVM from vectorizing the loop, and no
# per-row array view is created (views cost refcount updates, which dominate on 7-wide rows).
# Callers guarantee that every offset and length is >= 0.
@kernel(inline="always")
def fill(dst, start, n, value):
    """dst[start : start+n] = value (dst flat)."""
    d = np.uint64(start)
    v = np.float32(value)
    for k in range(np.uint64(max(n, 0))):
        dst[d + k] = v


@kernel(inline="always")
def fill_strided(dst, start, step, n, value):
    """dst[start + k*step] = value for k < n (dst flat)."""
    d, st = np.uint64(start), np.uint64(step)
    v = np.float32(value)
    for k in range(np.uint64(max(n, 0))):
        dst[d + k * st] = v


@kernel(inline="always")
def copy(dst, d0, src, s0, n):
    """dst[d0 : d0+n] = src[s0 : s0+n] (flat, non-overlapping)."""
    d, s = np.uint64(d0), np.uint64(s0)
    for k in range(np.uint64(max(n, 0))):
        dst[d + k] = src[s + k]


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
                y[s + k] = one / (one + np.exp(-(y[s + k] + b)))
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


@kernel
def im2col(x, n, c0, channels, col, r0, r1, out_w, kh, kw, sh, sw, dh, dw, pt, pl):
    """col[(c*kh + i)*kw + j, (oh-r0)*out_w + ow] = x[n, c0+c, oh*sh-pt+i*dh, ow*sw-pl+j*dw] (0 outside).

    Output rows [r0, r1) only. Each col row is written front to back, and the valid output
    columns of kernel column j are computed once, so no copy loop checks bounds. With stride 1
    and out_w == width, the rows of a col row are one contiguous run of the input plane: one
    copy, then the few columns that wrapped into a neighbouring input row are zeroed.
    """
    height, width = x.shape[2], x.shape[3]
    plane_size = height * width
    xf, cf = x.reshape(-1), col.reshape(-1)
    span = (r1 - r0) * out_w
    flat = sh == 1 and sw == 1 and out_w == width
    for c in range(channels):
        plane = (n * x.shape[1] + c0 + c) * plane_size
        for i in range(kh):
            for j in range(kw):
                row = ((c * kh + i) * kw + j) * span
                shift = j * dw - pl
                lo = min(max(-(shift // sw), 0), out_w)  # first ow with ow*sw + shift >= 0
                hi = min(max((width - 1 - shift) // sw + 1, lo), out_w)  # past the last valid ow
                if flat:
                    a = min(max(r0, pt - i * dh), r1)  # output rows [a, b) read real input rows
                    b = max(min(r1, height + pt - i * dh), a)
                    fill(cf, row, (a - r0) * out_w, 0.0)
                    fill(cf, row + (b - r0) * out_w, (r1 - b) * out_w, 0.0)
                    dst = row + (a - r0) * out_w
                    src = plane + (a - pt + i * dh) * width + shift
                    k0 = max(0, plane - src)  # clipped to the plane: those are wrapped columns
                    k1 = min((b - a) * out_w, plane + plane_size - src)
                    copy(cf, dst + k0, xf, src + k0, k1 - k0)
                    # Zero the wrapped columns down the rows: a strided loop per column, since
                    # two tiny fills per row would cost more in loop set-up than they store.
                    for ow in range(lo):
                        fill_strided(cf, dst + ow, out_w, b - a, 0.0)
                    for ow in range(hi, out_w):
                        fill_strided(cf, dst + ow, out_w, b - a, 0.0)
                    continue
                # Zero the whole col row first when some columns are padding: one vectorized fill
                # costs less than two tiny fills (loop set-up dominated) per output row.
                edges = lo > 0 or hi < out_w
                if edges:
                    fill(cf, row, span, 0.0)
                d0, step = np.uint64(lo), np.uint64(sw)
                for oh in range(r0, r1):
                    ih = oh * sh - pt + i * dh
                    dst = row + (oh - r0) * out_w
                    if ih < 0 or ih >= height:
                        if not edges:
                            fill(cf, dst, out_w, 0.0)
                        continue
                    d, s = np.uint64(dst) + d0, np.uint64(plane + ih * width + lo * sw + shift)
                    if sw == 1:
                        for k in range(np.uint64(hi - lo)):
                            cf[d + k] = xf[s + k]
                    elif sw == 2:  # a literal stride lets LLVM vectorize with interleaved loads
                        for k in range(np.uint64(hi - lo)):
                            cf[d + k] = xf[s + np.uint64(2) * k]
                    else:
                        for k in range(np.uint64(hi - lo)):
                            cf[d + k] = xf[s + step * k]


@kernel(inline="always")
def phased_layout(rows, out_w, kh, kw, sh, sw, dh, dw):
    """(phase row length, floats) of the `phased` buffer of `im2col_strided` for `rows` rows."""
    ph_len = out_w + (kw - 1) * dw // sw
    in_rows = (rows - 1) * sh + (kh - 1) * dh + 1
    return ph_len, in_rows * sw * ph_len


@kernel
def im2col_strided(x, n, c0, channels, col, phased, r0, r1, out_w, kh, kw, sh, sw, dh, dw, pt, pl):
    """im2col (same result) for a column stride sw > 1, without a strided gather per tap.

    Per channel, each input row that output rows [r0, r1) read is split once into `phased` by
    column phase: row r of the band, phase p holds the padded input columns q*sw + p at
    (r*sw + p)*ph_len + q (zero outside the input). Tap (i, j) of output (ro, ow) is then at
    q = ow + (j*dw)//sw of phase (j*dw) % sw of row ro*sh + i*dh: every col row is one
    contiguous copy per output row.
    """
    height, width = x.shape[2], x.shape[3]
    rows = r1 - r0
    ph_len = phased_layout(rows, out_w, kh, kw, sh, sw, dh, dw)[0]
    in_rows = (rows - 1) * sh + (kh - 1) * dh + 1
    ih0 = r0 * sh - pt
    xf, cf = x.reshape(-1), col.reshape(-1)
    span = rows * out_w
    for c in range(channels):
        plane = (n * x.shape[1] + c0 + c) * height * width
        for r in range(in_rows):
            ih = ih0 + r
            for p in range(sw):
                d = (r * sw + p) * ph_len
                if ih < 0 or ih >= height:
                    fill(phased, d, ph_len, 0.0)
                    continue
                lo = min(max(-((p - pl) // sw), 0), ph_len)  # first q on an input column
                hi = min(max((width - 1 + pl - p) // sw + 1, lo), ph_len)
                fill(phased, d, lo, 0.0)
                fill(phased, d + hi, ph_len - hi, 0.0)
                dd, s = np.uint64(d + lo), np.uint64(plane + ih * width + lo * sw + p - pl)
                if sw == 2:  # a literal stride lets LLVM vectorize with interleaved loads
                    for k in range(np.uint64(hi - lo)):
                        phased[dd + k] = xf[s + np.uint64(2) * k]
                else:
                    for k in range(np.uint64(hi - lo)):
                        phased[dd + k] = xf[s + np.uint64(sw) * k]
        for i in range(kh):
            for j in range(kw):
                src = (i * dh * sw + (j * dw) % sw) * ph_len + (j * dw) // sw
                dst = ((c * kh + i) * kw + j) * span
                for ro in range(rows):
                    copy(cf, dst + ro * out_w, phased, src + ro * sh * sw * ph_len, out_w)


@kernel(inline="always")
def depthwise_layout(rows, out_w, kh, kw, sh, sw, dh, dw):
    """How `depthwise` lays out a band of `rows` output rows in its scratch.

    Returns (pad floats, wide floats, pad row stride, tap stride, wide row stride, whole, split).
    With stride 2 the padded input is split into its even and its odd columns, so that every tap
    reads a contiguous run. `whole`: the band is one run per tap at the wide row stride (garbage
    in the columns past out_w, but vectorized even for 7-wide planes); else one run per row.
    """
    pw = (out_w - 1) * sw + (kw - 1) * dw + 1  # padded width: exactly the columns the taps read
    in_rows = (rows - 1) * sh + (kh - 1) * dh + 1
    split = sw == 2
    rs = (pw + 1) // 2 if split else pw
    st = 1 if split else sw
    whole = (sh * rs) % st == 0
    wz = sh * rs // st if whole else out_w
    whole = whole and (rows - 1) * wz + out_w <= rows * (out_w + 16)
    wz = wz if whole else out_w
    pad = 2 * in_rows * rs if split else in_rows * pw
    return pad, (rows - 1) * wz + out_w, rs, st, wz, whole, split


@kernel(inline="always")
def depthwise_taps(src, s0, acc, a0, span, stride, w, w0, kh, kw, dh, dw, rs, odd):
    """acc[a0 + p] = sum over taps (i, j) of w[w0 + i*kw + j] * src[tap(i, j) + stride*p].

    `src` is the zero-padded input band, row stride rs; with `odd` > 0 it is split into even and
    odd columns (the odd half `odd` floats on), and tap (i, j) starts at column (j*dw)//2 of the
    half of its parity. One pass per kernel row: 3-wide rows get their three taps in one pass.
    """
    a, n, step = np.uint64(a0), np.uint64(span), np.uint64(stride)
    for i in range(kh):
        r = s0 + i * dh * rs
        if kw == 3:
            t0, t1, t2 = w[w0 + i * 3], w[w0 + i * 3 + 1], w[w0 + i * 3 + 2]
            if odd > 0:
                p0 = np.uint64(r)
                p1 = np.uint64(r + (dw // 2) + (dw % 2) * odd)
                p2 = np.uint64(r + dw)
            else:
                p0, p1, p2 = np.uint64(r), np.uint64(r + dw), np.uint64(r + 2 * dw)
            if stride == 1:
                if i == 0:
                    for k in range(n):
                        acc[a + k] = t0 * src[p0 + k] + t1 * src[p1 + k] + t2 * src[p2 + k]
                else:
                    for k in range(n):
                        acc[a + k] += t0 * src[p0 + k] + t1 * src[p1 + k] + t2 * src[p2 + k]
            else:
                if i == 0:
                    fill(acc, a0, span, 0.0)
                for k in range(n):
                    acc[a + k] += t0 * src[p0 + step * k] + t1 * src[p1 + step * k] + t2 * src[p2 + step * k]
            continue
        if i == 0:
            fill(acc, a0, span, 0.0)
        for j in range(kw):
            t = w[w0 + i * kw + j]
            c = j * dw
            p = np.uint64(r + (c // 2) + (c % 2) * odd) if odd > 0 else np.uint64(r + c)
            if stride == 1:
                for k in range(n):
                    acc[a + k] += t * src[p + k]
            else:
                for k in range(n):
                    acc[a + k] += t * src[p + step * k]


@kernel
def depthwise(x, w, bias, y, pad, wide, c0, c1, r0, r1, kh, kw, sh, sw, dh, dw, pt, pl, act, alpha, beta):
    """Depthwise conv of channels [c0, c1), output rows [r0, r1), bias and activation fused.

    w is (c1-c0, kh*kw), bias (c1-c0,) or empty. Per channel, the input rows the band reads are
    copied into `pad` (its zero border is written once per call: it is the same for every
    channel), then the taps accumulate into `wide` (see depthwise_layout), the valid columns
    are copied out and the epilogue runs over the channel's band while it is still in L1.
    """
    batch, height, width = x.shape[0], x.shape[2], x.shape[3]
    channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    rows = r1 - r0
    n_pad, _, rs, st, wz, whole, split = depthwise_layout(rows, out_w, kh, kw, sh, sw, dh, dw)
    pw = (out_w - 1) * sw + (kw - 1) * dw + 1
    in_rows = (rows - 1) * sh + (kh - 1) * dh + 1
    odd = in_rows * rs if split else 0
    ih0 = r0 * sh - pt
    ih_lo, ih_hi = max(ih0, 0), min(ih0 + in_rows, height)  # input rows that exist
    col_lo, col_hi = min(pl, pw), min(pl + width, pw)  # padded columns holding input columns
    xf, yf, wf = x.reshape(-1), y.reshape(-1), w.reshape(-1)
    taps = kh * kw
    fill(pad, 0, n_pad, 0.0)
    for n in range(batch):
        for c in range(c0, c1):
            plane = (n * channels + c) * height * width
            for ih in range(ih_lo, ih_hi):
                s = plane + ih * width + col_lo - pl
                if split:  # even columns to the first half, odd ones to the second
                    r = (ih - ih0) * rs
                    lo_e, lo_o = (col_lo + 1) // 2, col_lo // 2  # first even / odd padded column // 2
                    se, so = np.uint64(s + 2 * lo_e - col_lo), np.uint64(s + 2 * lo_o + 1 - col_lo)
                    de, do = np.uint64(r + lo_e), np.uint64(odd + r + lo_o)
                    two = np.uint64(2)
                    for k in range(np.uint64(max((col_hi + 1) // 2 - lo_e, 0))):
                        pad[de + k] = xf[se + two * k]
                    for k in range(np.uint64(max(col_hi // 2 - lo_o, 0))):
                        pad[do + k] = xf[so + two * k]
                else:
                    copy(pad, (ih - ih0) * pw + col_lo, xf, s, col_hi - col_lo)
            w0 = (c - c0) * taps
            if whole:
                depthwise_taps(pad, 0, wide, 0, (rows - 1) * wz + out_w, st, wf, w0, kh, kw, dh, dw, rs, odd)
            else:
                for oh in range(rows):
                    depthwise_taps(
                        pad, oh * sh * rs, wide, oh * wz, out_w, st, wf, w0, kh, kw, dh, dw, rs, odd
                    )
            start = ((n * channels + c) * out_h + r0) * out_w
            for oh in range(rows):
                copy(yf, start + oh * out_w, wide, oh * wz, out_w)
            bias_act(yf, NO_BIAS, start, 0, 1, rows * out_w, bias, c - c0, act, alpha, beta)


@kernel
def depthwise3x3_row(yf, d, count, xf, s0, s1, s2, b, t, sw):
    """yf[d + k] = b + the 9 taps t (row-major, zero for a missing input row) at input row offsets
    s0, s1, s2 and columns sw*k + (0, 1, 2), for k < count: one vectorized pass per output row."""
    d = np.uint64(d)
    # One base offset per tap, so each load is base + k: LLVM sees consecutive (not gathered) loads.
    p0, p1, p2 = np.uint64(s0), np.uint64(s0 + 1), np.uint64(s0 + 2)
    p3, p4, p5 = np.uint64(s1), np.uint64(s1 + 1), np.uint64(s1 + 2)
    p6, p7, p8 = np.uint64(s2), np.uint64(s2 + 1), np.uint64(s2 + 2)
    t0, t1, t2, t3, t4, t5, t6, t7, t8 = t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8]
    if sw == 1:
        for k in range(np.uint64(max(count, 0))):
            yf[d + k] = (
                b + t0 * xf[p0 + k] + t1 * xf[p1 + k] + t2 * xf[p2 + k]
                + t3 * xf[p3 + k] + t4 * xf[p4 + k] + t5 * xf[p5 + k]
                + t6 * xf[p6 + k] + t7 * xf[p7 + k] + t8 * xf[p8 + k]
            )  # fmt: skip
    else:  # a literal stride 2 lets LLVM vectorize with interleaved loads
        two = np.uint64(2)
        for k in range(np.uint64(max(count, 0))):
            q = two * k
            yf[d + k] = (
                b + t0 * xf[p0 + q] + t1 * xf[p1 + q] + t2 * xf[p2 + q]
                + t3 * xf[p3 + q] + t4 * xf[p4 + q] + t5 * xf[p5 + q]
                + t6 * xf[p6 + q] + t7 * xf[p7 + q] + t8 * xf[p8 + q]
            )  # fmt: skip


@kernel
def depthwise3x3_edge(yf, d, ow, xf, r_0, r_1, r_2, b, t, s, pl, width):
    """One padded edge column of depthwise3x3, tap by tap with bounds."""
    v = b
    for j in range(3):
        iw = ow * s - pl + j
        if 0 <= iw < width:
            v += t[j] * xf[r_0 + iw] + t[3 + j] * xf[r_1 + iw] + t[6 + j] * xf[r_2 + iw]
    yf[d + ow] = v


@kernel
def depthwise3x3(x, w, bias, y, c0, c1, r0, r1, s, pt, pl, act, alpha, beta):
    """Depthwise 3x3 conv (stride s in (1, 2), no dilation) of channels [c0, c1), output rows
    [r0, r1), straight from the input: no padded copy and no scratch.

    A missing input row (padding) gets zero weights and reads a real row of the plane instead, so
    that every output row is one branch-free pass; only the padded edge columns go tap by tap.
    """
    height, width = x.shape[2], x.shape[3]
    channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    xf, yf, wf = x.reshape(-1), y.reshape(-1), w.reshape(-1)
    has_bias = bias.size > 0
    lo = min(max(-(-pl // s), 0), out_w)  # first output column whose 3 taps are all inside
    hi = min(max((width - 3 + pl) // s + 1, lo), out_w)  # past the last one
    zero = np.float32(0.0)
    # Stride 1 and same-width output: the rows whose three input rows all exist are one flat run
    # (long runs keep the 16-wide, 4x unrolled vector loop busy; 7..56-wide rows would not), and
    # only their first and last columns, which read the neighbouring rows, are redone tap by tap.
    flat = s == 1 and out_w == width and pl == 1 and width >= 2
    a = min(max(r0, pt), r1) if flat else r1
    e = max(min(r1, height - 2 + pt), a) if flat else r1
    for n in range(x.shape[0]):
        for c in range(c0, c1):
            b = bias[c - c0] if has_bias else zero
            src = (n * x.shape[1] + c) * height * width
            plane = (n * channels + c) * out_h * out_w
            k = (c - c0) * 9
            if e > a:
                t = (
                    wf[k],
                    wf[k + 1],
                    wf[k + 2],
                    wf[k + 3],
                    wf[k + 4],
                    wf[k + 5],
                    wf[k + 6],
                    wf[k + 7],
                    wf[k + 8],
                )
                s0 = src + (a - pt) * width
                depthwise3x3_row(
                    yf,
                    plane + a * width + 1,
                    (e - a) * width - 2,
                    xf,
                    s0,
                    s0 + width,
                    s0 + 2 * width,
                    b,
                    t,
                    1,
                )
            for oh in range(r0, r1):
                ih = oh * s - pt
                ok0, ok1, ok2 = 0 <= ih < height, 0 <= ih + 1 < height, 0 <= ih + 2 < height
                t = (
                    wf[k] if ok0 else zero, wf[k + 1] if ok0 else zero, wf[k + 2] if ok0 else zero,
                    wf[k + 3] if ok1 else zero, wf[k + 4] if ok1 else zero, wf[k + 5] if ok1 else zero,
                    wf[k + 6] if ok2 else zero, wf[k + 7] if ok2 else zero, wf[k + 8] if ok2 else zero,
                )  # fmt: skip
                r_0 = src + min(max(ih, 0), height - 1) * width
                r_1 = src + min(max(ih + 1, 0), height - 1) * width
                r_2 = src + min(max(ih + 2, 0), height - 1) * width
                d = plane + oh * out_w
                if a <= oh < e:  # in the flat run: only its two edge columns
                    depthwise3x3_edge(yf, d, 0, xf, r_0, r_1, r_2, b, t, s, pl, width)
                    depthwise3x3_edge(yf, d, out_w - 1, xf, r_0, r_1, r_2, b, t, s, pl, width)
                    continue
                off = lo * s - pl
                depthwise3x3_row(yf, d + lo, hi - lo, xf, r_0 + off, r_1 + off, r_2 + off, b, t, s)
                for ow in range(lo):
                    depthwise3x3_edge(yf, d, ow, xf, r_0, r_1, r_2, b, t, s, pl, width)
                for ow in range(hi, out_w):
                    depthwise3x3_edge(yf, d, ow, xf, r_0, r_1, r_2, b, t, s, pl, width)
            bias_act(yf, bias[:0], plane + r0 * out_w, 0, 1, (r1 - r0) * out_w, bias[:0], 0, act, alpha, beta)


def depthwise_scratch(
    rows: int, out_w: int, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int
) -> tuple[int, int]:
    """Floats of the `pad` and `wide` buffers of `depthwise` for a band of `rows` output rows."""
    n_pad, n_wide = depthwise_layout(rows, out_w, kh, kw, sh, sw, dh, dw)[:2]
    return int(n_pad), int(n_wide)


# ---- Winograd F(2x2, 3x3) ---------------------------------------------------------------------------
# Y = A^T [(G g G^T) ⊙ (B^T d B)] A per 2x2 output tile: the GEMMs do 16 multiplies per tile and
# channel pair where im2col does 36, at the price of transforming input, weights and output.
# Rows of B^T and A^T as (index, sign) pairs; G dense. Numba freezes these globals as constants.
WINO_BT = np.array([[0, 1, 2, -1], [1, 1, 2, 1], [2, 1, 1, -1], [1, 1, 3, -1]], dtype=np.int64)
WINO_AT = np.array([[0, 1, 1, 1, 2, 1], [1, 1, 2, -1, 3, -1]], dtype=np.int64)
WINO_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float32)


@kernel
def winograd_weights(w, k0, k1, cin, u, tmp):
    """u[e, k-k0, ci] = (G g G^T)[e] for the rows k in [k0, k1) of w ((C, cin*9), flat).

    tmp holds 21*cin floats: the 9 taps of a row split by tap (contiguous over ci), then G g.
    """
    cc = k1 - k0
    n = np.uint64(cin)
    for k in range(k0, k1):
        row = np.uint64(k * cin * 9)
        for ci in range(n):
            s = row + np.uint64(9) * ci
            for p in range(9):
                tmp[np.uint64(p) * n + ci] = w[s + np.uint64(p)]
        for a in range(4):
            ga0, ga1, ga2 = WINO_G[a, 0], WINO_G[a, 1], WINO_G[a, 2]
            for q in range(3):
                t = np.uint64((9 + a * 3 + q) * cin)
                p0, p1, p2 = np.uint64(q * cin), np.uint64((3 + q) * cin), np.uint64((6 + q) * cin)
                for ci in range(n):
                    tmp[t + ci] = ga0 * tmp[p0 + ci] + ga1 * tmp[p1 + ci] + ga2 * tmp[p2 + ci]
        for a in range(4):
            s0 = np.uint64((9 + a * 3) * cin)
            for b in range(4):
                gb0, gb1, gb2 = WINO_G[b, 0], WINO_G[b, 1], WINO_G[b, 2]
                d = np.uint64(((a * 4 + b) * cc + k - k0) * cin)
                for ci in range(n):
                    u[d + ci] = gb0 * tmp[s0 + ci] + gb1 * tmp[s0 + n + ci] + gb2 * tmp[s0 + n + n + ci]


@kernel
def winograd_input(x, n, pad, v, r0, tiles_y, tiles_x, pt, pl):
    """v[e, ci, ty*(tiles_x+1) + tx] = (B^T d B)[e] of the 4x4 input tile under output (r0+2ty, 2tx).

    Per channel the input rows of the band are copied into `pad` split by row and column parity
    into four planes (zero border included). Element (a, b) of tile (ty, tx) is then at
    ty*half + tx + (a//2)*half + b//2 of plane (a%2, b%2): one contiguous run over all tiles of
    the band per transform entry, long enough to vectorize, at the price of one garbage tile
    column (tx == tiles_x) per tile row that the GEMM carries and winograd_output skips.
    """
    cin, height, width = x.shape[1], x.shape[2], x.shape[3]
    half = tiles_x + 1  # plane width; also the v/m row stride per tile row
    psize = (tiles_y + 1) * half + 1  # +1: the last garbage column reads one past the last row
    in_rows = 2 * tiles_y + 2
    ih0 = r0 - pt
    ih_lo, ih_hi = max(ih0, 0), min(ih0 + in_rows, height)
    col_lo, col_hi = min(pl, 2 * half), min(pl + width, 2 * half)
    run = tiles_y * half
    xf = x.reshape(-1)
    fill(pad, 0, 4 * psize, 0.0)  # the border is the same for every channel: zeroed once
    for ci in range(cin):
        plane = (n * cin + ci) * height * width
        for ih in range(ih_lo, ih_hi):
            rr = ih - ih0
            r, s = (rr % 2) * 2 * psize + (rr // 2) * half, plane + ih * width - pl
            for col in range(col_lo, col_hi):
                pad[np.uint64(r + (col % 2) * psize + col // 2)] = xf[np.uint64(s + col)]
        for alpha in range(4):
            a1, s1, a2, s2 = WINO_BT[alpha, 0], WINO_BT[alpha, 1], WINO_BT[alpha, 2], WINO_BT[alpha, 3]
            for beta in range(4):
                b1, r1, b2, r2 = WINO_BT[beta, 0], WINO_BT[beta, 1], WINO_BT[beta, 2], WINO_BT[beta, 3]
                c11, c12 = np.float32(s1 * r1), np.float32(s1 * r2)
                c21, c22 = np.float32(s2 * r1), np.float32(s2 * r2)
                p11 = np.uint64((a1 % 2) * 2 * psize + (b1 % 2) * psize + (a1 // 2) * half + b1 // 2)
                p12 = np.uint64((a1 % 2) * 2 * psize + (b2 % 2) * psize + (a1 // 2) * half + b2 // 2)
                p21 = np.uint64((a2 % 2) * 2 * psize + (b1 % 2) * psize + (a2 // 2) * half + b1 // 2)
                p22 = np.uint64((a2 % 2) * 2 * psize + (b2 % 2) * psize + (a2 // 2) * half + b2 // 2)
                d = np.uint64(((alpha * 4 + beta) * cin + ci) * run)
                for f in range(np.uint64(run)):
                    v[d + f] = (
                        c11 * pad[p11 + f] + c12 * pad[p12 + f] + c21 * pad[p21 + f] + c22 * pad[p22 + f]
                    )


@kernel
def winograd_output(m, y, res, obuf, n, cc, c_abs, r0, r1, tiles_y, tiles_x, bias, boff, act, alpha, beta):
    """y[n, c_abs + k, r0 + 2ty + i, 2tx + j] = act((A^T M_k A)[i, j] + bias[boff + k]), k < cc.

    m is (16, cc, tiles_y*(tiles_x+1)) flat (see winograd_input). Per channel the four outputs
    (i, j) of every tile are first computed as four contiguous runs into `obuf` (4*tiles_y*(tiles_x+1)
    floats, vectorized), then interleaved into the output rows. Output rows at or past r1 and
    columns past the output are skipped.
    """
    channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    half = tiles_x + 1
    tiles = tiles_y * half
    yf = y.reshape(-1)
    two = np.uint64(2)
    for k in range(cc):
        plane = (n * channels + c_abs + k) * out_h * out_w
        for i in range(2):
            x1, e1, x2, e2, x3, e3 = (WINO_AT[i, 0], WINO_AT[i, 1], WINO_AT[i, 2], WINO_AT[i, 3],
                                      WINO_AT[i, 4], WINO_AT[i, 5])  # fmt: skip
            for j in range(2):
                z1, f1, z2, f2, z3, f3 = (WINO_AT[j, 0], WINO_AT[j, 1], WINO_AT[j, 2], WINO_AT[j, 3],
                                          WINO_AT[j, 4], WINO_AT[j, 5])  # fmt: skip
                off = k * tiles
                q11 = np.uint64((x1 * 4 + z1) * cc * tiles + off)
                q12 = np.uint64((x1 * 4 + z2) * cc * tiles + off)
                q13 = np.uint64((x1 * 4 + z3) * cc * tiles + off)
                q21 = np.uint64((x2 * 4 + z1) * cc * tiles + off)
                q22 = np.uint64((x2 * 4 + z2) * cc * tiles + off)
                q23 = np.uint64((x2 * 4 + z3) * cc * tiles + off)
                q31 = np.uint64((x3 * 4 + z1) * cc * tiles + off)
                q32 = np.uint64((x3 * 4 + z2) * cc * tiles + off)
                q33 = np.uint64((x3 * 4 + z3) * cc * tiles + off)
                g1, g2, g3 = np.float32(e1 * f1), np.float32(e1 * f2), np.float32(e1 * f3)
                h1, h2, h3 = np.float32(e2 * f1), np.float32(e2 * f2), np.float32(e2 * f3)
                l1, l2, l3 = np.float32(e3 * f1), np.float32(e3 * f2), np.float32(e3 * f3)
                o = np.uint64((i * 2 + j) * tiles)
                for f in range(np.uint64(tiles)):
                    obuf[o + f] = (
                        g1 * m[q11 + f] + g2 * m[q12 + f] + g3 * m[q13 + f]
                        + h1 * m[q21 + f] + h2 * m[q22 + f] + h3 * m[q23 + f]
                        + l1 * m[q31 + f] + l2 * m[q32 + f] + l3 * m[q33 + f]
                    )  # fmt: skip
        for ty in range(tiles_y):
            for i in range(2):
                oh = r0 + 2 * ty + i
                if oh >= r1:
                    continue
                for j in range(2):
                    src = np.uint64((i * 2 + j) * tiles + ty * half)
                    dst = np.uint64(plane + oh * out_w + j)
                    for tx in range(np.uint64((out_w - j + 1) // 2)):
                        yf[dst + two * tx] = obuf[src + tx]
        bias_act(yf, res, plane + r0 * out_w, 0, 1, (r1 - r0) * out_w, bias, boff + k, act, alpha, beta)


# ---- geometry -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """Every number of one 2-D convolution (explicit pads resolved from auto_pad)."""

    batch: int
    cin: int
    height: int
    width: int
    cout: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    pb: int
    pr: int
    out_h: int
    out_w: int
    group: int

    @property
    def k(self) -> int:
        """Rows of one group's im2col matrix (= columns of the prepared weight)."""
        return self.cin // self.group * self.kh * self.kw

    @property
    def depthwise(self) -> bool:
        return self.group > 1 and self.group == self.cin == self.cout

    @property
    def pointwise(self) -> bool:
        return self.kh == self.kw == self.sh == self.sw == 1 and not (
            self.pt or self.pl or self.pb or self.pr
        )

    @property
    def depthwise_direct(self) -> bool:
        """Depthwise 3x3 at stride 1 or 2 on planes wide enough for depthwise3x3's row passes."""
        return (
            self.depthwise
            and self.kh == self.kw == 3
            and self.dh == self.dw == 1
            and self.sh == self.sw in (1, 2)
            and self.out_w >= (DW_DIRECT_MIN_WIDTH if self.sw == 2 else DW_DIRECT_MIN_WIDTH_S1)
        )

    @property
    def strided(self) -> bool:
        """The im2col path uses im2col_strided (see STRIDED_MIN_KW)."""
        wide = self.kw >= STRIDED_MIN_KW or (self.kw > 1 and self.out_w >= STRIDED_MIN_WIDTH)
        return self.sw > 1 and wide

    @property
    def winograd(self) -> bool:
        """3x3, stride 1, dense, and big enough for the transforms to pay off (see WINO_MIN_SCORE)."""
        return (
            self.kh == self.kw == 3
            and self.sh == self.sw == self.dh == self.dw == self.group == 1
            and min(self.out_h, self.out_w) >= WINO_MIN_WIDTH
            and self.cin * self.cout / (self.cin + self.cout) >= WINO_MIN_SCORE
        )


def _same_pads(size: int, k: int, s: int, d: int, upper: bool) -> tuple[int, int]:
    out = -(-size // s)
    total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def _even_split(total: int, most: int) -> int:
    """The size of the parts when `total` is cut into as few parts of at most `most` as possible,
    all (nearly) equal."""
    most = max(1, min(total, most))
    parts = -(-total // most)
    return -(-total // parts)


def _band_rows(rows: int, row_bytes: int, row_cols: int, limit: int, min_cols: int) -> int:
    """Output rows per band: below `limit` bytes, but at least `min_cols` GEMM columns (BLAS
    loses a third of its speed on narrow matrices)."""
    return _even_split(rows, max(limit // max(row_bytes, 1), -(-min_cols // row_cols)))


@dataclass(frozen=True)
class WinogradPlan:
    """How the Winograd path cuts one execution: bands of tile rows, chunks of output channels."""

    tiles_x: int
    band: int  # tile rows (two output rows each) per band
    chunk: int  # output channels per weight chunk
    cin: int

    @classmethod
    def of(cls, geo: Geometry, rows: int, channels: int, whole: bool = False) -> WinogradPlan:
        """`whole`: one band of all `rows` (channel parts sharing one input transform)."""
        tiles_x = (geo.out_w + 1) // 2
        limit = WINO_WEIGHT_BYTES if geo.out_w >= WINO_WIDE_WIDTH else WINO_NARROW_WEIGHT_BYTES
        most = limit // (64 * geo.cin)
        if rows < geo.out_h:
            most = min(most, WINO_SLICED_CHUNK)
        chunk = _even_split(channels, most)
        per_tile_row = 64 * (tiles_x + 1) * (geo.cin + chunk)  # bytes of v and m per tile row
        most = max(WINO_BAND_BYTES // per_tile_row, -(-WINO_MIN_TILES // tiles_x))
        band = (rows + 1) // 2 if whole else _even_split((rows + 1) // 2, most)
        return cls(tiles_x, band, chunk, geo.cin)

    @property
    def buffers(self) -> dict[str, int]:
        """Floats of each scratch buffer, in scratch order."""
        tiles = self.band * (self.tiles_x + 1)  # a garbage tile column per tile row
        # v first: channel parts with different chunks still find a shared v at the same offset.
        return {
            "v": 16 * self.cin * tiles,
            "tmp": 21 * self.cin,
            "pad": 4 * ((self.band + 1) * (self.tiles_x + 1) + 1),
            "u": 16 * self.chunk * self.cin,
            "m": 16 * self.chunk * tiles,
            "o": 4 * tiles,
        }


# ---- the op ---------------------------------------------------------------------------------------
@register
@dataclass(frozen=True)
class Conv(Op):
    """ONNX Conv, 2-D NCHW; W (and B) constant, W prepared as (Cout, Cin/group*kh*kw)."""

    op_type = "Conv"
    const_inputs = (1, 2)
    optional_inputs = (2,)
    slicing = ("rows", "channels")

    auto_pad: str = "NOTSET"
    dilations: tuple[int, ...] = ()
    group: int = 1
    kernel_shape: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    activation: str = internal("")
    activation_alpha: float = internal(0.0)
    activation_beta: float = internal(0.0)
    # A fused residual Add: a fourth input, added before the activation (not for depthwise).
    residual: bool = internal(False)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        if len(consts) < 2 or consts[1] is None:
            raise UnsupportedOp(cls.op_type, node, opset, "weight W must be a constant")
        w = consts[1]
        if w.ndim != 4:
            raise UnsupportedOp(
                cls.op_type, node, opset, f"{w.ndim - 2}-D convolution (weight shape {w.shape})"
            )
        attrs = dict(attrs)
        # bind() sees only the prepared (Cout, K) weight: keep the kernel size in the op.
        attrs.setdefault("kernel_shape", tuple(int(d) for d in w.shape[2:]))
        return super().from_onnx(attrs, consts, node, opset)

    def check(self, node: str, opset: int) -> None:
        def bad(why: str) -> UnsupportedOp:
            return UnsupportedOp(self.op_type, node, opset, why)

        for name, value, rank in (
            ("kernel_shape", self.kernel_shape, 2),
            ("strides", self.strides, 2),
            ("dilations", self.dilations, 2),
            ("pads", self.pads, 4),
        ):
            if value and len(value) != rank:
                raise bad(f"{len(value) * 2 // rank}-D convolution ({name}={list(value)})")
        if self.auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
            raise bad(f"auto_pad={self.auto_pad!r}")
        if any(v < 1 for v in (*self.kernel_shape, *self.strides, *self.dilations)) or self.group < 1:
            raise bad(f"kernel_shape/strides/dilations/group must be >= 1, got {self.to_dict()}")
        if any(p < 0 for p in self.pads):
            raise bad(f"negative pads {list(self.pads)}")
        if self.activation not in ACT_CODES:
            raise bad(f"fused activation {self.activation!r}")

    # ---- shapes ---------------------------------------------------------------------------------
    def geometry(self, x_shape, cout: int, kernel: tuple[int, int] | None = None) -> Geometry:
        if len(x_shape) != 4:
            raise UnsupportedOp(
                self.op_type, "?", None, f"{len(x_shape) - 2}-D convolution (input {x_shape})"
            )
        kernel = kernel or self.kernel_shape
        if len(kernel) != 2:
            raise ShapeError(f"Conv: kernel_shape unknown or not 2-D: {kernel}")
        batch, cin, height, width = (int(d) for d in x_shape)
        kh, kw = kernel
        sh, sw = self.strides or (1, 1)
        dh, dw = self.dilations or (1, 1)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            upper = self.auto_pad == "SAME_UPPER"
            pt, pb = _same_pads(height, kh, sh, dh, upper)
            pl, pr = _same_pads(width, kw, sw, dw, upper)
        elif self.auto_pad == "VALID":
            pt = pl = pb = pr = 0
        else:
            pt, pl, pb, pr = self.pads or (0, 0, 0, 0)
        out_h = (height + pt + pb - (kh - 1) * dh - 1) // sh + 1
        out_w = (width + pl + pr - (kw - 1) * dw - 1) // sw + 1
        if out_h < 1 or out_w < 1:
            raise ShapeError(
                f"Conv: empty output {out_h}x{out_w} for input {x_shape}, kernel {kernel}, "
                f"pads {(pt, pl, pb, pr)}, strides {(sh, sw)}, dilations {(dh, dw)}"
            )
        if cin % self.group or cout % self.group:
            raise ShapeError(
                f"Conv: group {self.group} does not divide Cin {cin} and Cout {cout} (input {x_shape})"
            )
        return Geometry(
            batch, cin, height, width, cout, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, out_h, out_w, self.group
        )

    def _geometry_of(self, shapes) -> Geometry:
        x, w = shapes[0], shapes[1]
        if x is None or len(x) != 4:
            rank = None if x is None else len(x)
            raise UnsupportedOp(self.op_type, "?", None, f"input of rank {rank} (only 2-D NCHW convolution)")
        if w is None or len(w) != 4:
            raise ShapeError(f"Conv: weight must have rank 4, got shape {w} (input {x})")
        if self.kernel_shape and tuple(self.kernel_shape) != tuple(w[2:]):
            raise ShapeError(f"Conv: kernel_shape {list(self.kernel_shape)} does not match weight {w}")
        geo = self.geometry(x, int(w[0]), (int(w[2]), int(w[3])))
        if w[1] * self.group != geo.cin:
            raise ShapeError(
                f"Conv: input {x} has {geo.cin} channels but weight {w} with group {self.group} "
                f"expects {w[1] * self.group}"
            )
        bias = shapes[2] if len(shapes) > 2 else None
        if bias is not None and tuple(bias) != (geo.cout,):
            raise ShapeError(f"Conv: bias shape {bias} does not match weight {w} (want ({geo.cout},))")
        return geo

    def infer(self, shapes, consts):
        geo = self._geometry_of(shapes)
        if len(shapes) > 2 and shapes[2] is not None and len(consts) > 2 and consts[2] is None:
            raise UnsupportedOp(self.op_type, "?", None, "bias B must be a constant")
        return [(geo.batch, geo.cout, geo.out_h, geo.out_w)]

    def prepare(self, consts):
        out = list(consts)
        w = consts[1]
        out[1] = np.ascontiguousarray(np.asarray(w, dtype=np.float32).reshape(w.shape[0], -1))
        if len(consts) > 2 and consts[2] is not None:
            out[2] = np.ascontiguousarray(consts[2], dtype=np.float32).reshape(-1)
        return out

    def _part_range(self, geo: Geometry, part: Part | None) -> tuple[int, int, int, int]:
        """(r0, r1, c0, c1): the output rows and channels that `part` computes."""
        r0, r1, c0, c1 = 0, geo.out_h, 0, geo.cout
        if part is None:
            return r0, r1, c0, c1
        if part.axis == "rows":
            r0, r1 = part.start, part.stop
            limit = geo.out_h
        elif part.axis == "channels":
            c0, c1 = part.start, part.stop
            limit = geo.cout
            per_group = geo.cout // geo.group
            if geo.group > 1 and not geo.depthwise and (c0 % per_group or c1 % per_group):
                raise ValueError(
                    f"Conv: channel part [{c0}, {c1}) does not align to groups of {per_group} channels"
                )
        else:
            raise ValueError(f"Conv: cannot slice along {part.axis!r}")
        if not 0 <= part.start < part.stop <= limit:
            raise ValueError(f"Conv: part {part} outside [0, {limit})")
        return r0, r1, c0, c1

    def _band(self, geo: Geometry, rows: int) -> int:
        """Output rows per im2col / pointwise band."""
        if geo.pointwise:
            per_group_out = geo.cout // geo.group
            row_bytes = (geo.cin // geo.group + per_group_out) * geo.width * 4
            return _band_rows(rows, row_bytes, geo.width, POINTWISE_BAND_BYTES, MIN_BAND_COLS)
        return _band_rows(rows, geo.k * geo.out_w * 4, geo.out_w, IM2COL_BAND_BYTES, MIN_BAND_COLS)

    def _shared(self, geo: Geometry, part: Part | None) -> bool:
        """Whether `part` is a channel part sharing the conv's im2col (or Winograd input transform)
        with the others: batch 1, not grouped, and the whole image one band (see _SHARED_BY)."""
        if part is None or part.axis != "channels" or geo.batch != 1 or geo.group != 1:
            return False
        if geo.winograd:
            return 2 * WinogradPlan.of(geo, geo.out_h, geo.cout).band >= geo.out_h
        return not geo.pointwise and self._band(geo, geo.out_h) == geo.out_h

    def scratch_bytes(self, shapes, part=None):
        geo = self._geometry_of(shapes)
        r0, r1, c0, c1 = self._part_range(geo, part)
        if geo.depthwise_direct:
            return 0
        if geo.depthwise:
            g = geo
            return 4 * sum(depthwise_scratch(r1 - r0, g.out_w, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw))
        if geo.winograd:
            return 4 * sum(WinogradPlan.of(geo, r1 - r0, c1 - c0, self._shared(geo, part)).buffers.values())
        if geo.pointwise:
            return 0
        return 4 * _im2col_floats(geo, self._band(geo, r1 - r0))

    def flops(self, shapes, out_shapes):
        geo = self._geometry_of(shapes)
        return 2 * geo.batch * geo.cout * geo.out_h * geo.out_w * geo.k

    # ---- execution ------------------------------------------------------------------------------
    def bind(self, ins, outs, scratch, part=None):
        x, wp, y = ins[0], ins[1], outs[0]
        bias = ins[2] if len(ins) > 2 and ins[2] is not None else NO_BIAS
        geo = self.geometry(x.shape, y.shape[1])
        r0, r1, c0, c1 = self._part_range(geo, part)
        rows, chans = (r0, r1), (c0, c1)
        want_y = (geo.batch, geo.cout, geo.out_h, geo.out_w)
        want_w = (chans[1] - chans[0], geo.k)
        if tuple(y.shape) != want_y or tuple(wp.shape) != want_w or bias.size not in (0, want_w[0]):
            raise ShapeError(
                f"Conv.bind: input {x.shape}, weight {wp.shape}, bias {bias.shape}, output {y.shape}; "
                f"want weight {want_w}, output {want_y} for part {part}"
            )
        for name, a in (("input", x), ("weight", wp), ("bias", bias), ("output", y)):
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                raise ValueError(f"Conv.bind: {name} must be C-contiguous float32, got {a.dtype} {a.strides}")
        epilogue = (ACT_CODES[self.activation], float(self.activation_alpha), float(self.activation_beta))
        res = NO_BIAS
        if self.residual:
            res = reshape_view(ins[3], (-1,))
            if ins[3].shape != y.shape or geo.depthwise:
                raise ShapeError(
                    f"Conv.bind: residual {ins[3].shape} for output {y.shape} (depthwise {geo.depthwise})"
                )
        if geo.depthwise_direct:
            return _bind_depthwise3x3(geo, x, wp, bias, y, rows, chans, epilogue)
        if geo.depthwise:
            return _bind_depthwise(geo, x, wp, bias, y, scratch, rows, chans, epilogue)
        shared = self._shared(geo, part)
        reuse = shared and _reuses(geo, part, x, scratch)
        if geo.winograd:
            return _bind_winograd(geo, x, wp, bias, y, res, scratch, rows, chans, epilogue, shared, reuse)
        band = self._band(geo, rows[1] - rows[0])
        return _bind_gemm(geo, band, x, wp, bias, y, res, scratch, rows, chans, epilogue, reuse)

    def reference(self, ins):
        x = np.asarray(ins[0], dtype=np.float64)
        w = np.asarray(ins[1], dtype=np.float64)
        bias = ins[2] if len(ins) > 2 and ins[2] is not None else np.zeros(w.shape[0])
        g = self._geometry_of([x.shape, w.shape, None])
        xp = np.pad(x, ((0, 0), (0, 0), (g.pt, g.pb), (g.pl, g.pr)))
        y = np.zeros((g.batch, g.cout, g.out_h, g.out_w))
        cin_g, cout_g = g.cin // g.group, g.cout // g.group
        for grp in range(g.group):
            xs = xp[:, grp * cin_g : (grp + 1) * cin_g]
            ws = w[grp * cout_g : (grp + 1) * cout_g]
            for i in range(g.kh):
                for j in range(g.kw):
                    patch = xs[
                        :,
                        :,
                        i * g.dh : i * g.dh + (g.out_h - 1) * g.sh + 1 : g.sh,
                        j * g.dw : j * g.dw + (g.out_w - 1) * g.sw + 1 : g.sw,
                    ]
                    y[:, grp * cout_g : (grp + 1) * cout_g] += np.einsum(
                        "nchw,oc->nohw", patch, ws[:, :, i, j]
                    )
        y += np.asarray(bias, dtype=np.float64).reshape(1, -1, 1, 1)
        if self.residual:
            y += np.asarray(ins[3], dtype=np.float64)
        return [reference_activation(y, self.activation, self.activation_alpha, self.activation_beta)]


def _bind_depthwise3x3(g: Geometry, x, wp, bias, y, rows, chans, epilogue) -> Kernel:
    (r0, r1), (c0, c1), (act, alpha, beta) = rows, chans, epilogue

    def run_depthwise3x3():
        depthwise3x3(x, wp, bias, y, c0, c1, r0, r1, g.sh, g.pt, g.pl, act, alpha, beta)

    return run_depthwise3x3


def _bind_depthwise(g: Geometry, x, wp, bias, y, scratch, rows, chans, epilogue) -> Kernel:
    (r0, r1), (c0, c1), (act, alpha, beta) = rows, chans, epilogue
    n_pad, n_wide = depthwise_scratch(r1 - r0, g.out_w, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw)
    scratch = _scratch_floats(scratch, n_pad + n_wide)
    pad, wide = scratch[:n_pad], scratch[n_pad:]

    def run_depthwise():
        depthwise(
            x, wp, bias, y, pad, wide, c0, c1, r0, r1, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
            act, alpha, beta,
        )  # fmt: skip

    return run_depthwise


# Channel parts of one conv share its im2col (or Winograd input transform V) of the whole image:
# the part at channel 0 computes it into the scratch, the later parts only read it. This is safe
# because the planner gives all parts of a node one scratch region and runs them in order from
# channel 0 with no other step between them (an inference that stops halfway restarts at part 0).
# bind() checks what it can: a later part must be bound to the same scratch and input as the last
# channel-0 binding of that scratch. Keyed by scratch address; the last part drops the entry.
_SHARED_BY: dict[int, tuple[int, Geometry]] = {}


def _reuses(g: Geometry, part: Part, x: np.ndarray, scratch: np.ndarray | None) -> bool:
    """Whether shared channel part `part` reuses what part 0 computed (else it computes it)."""
    key, mine = 0 if scratch is None else scratch.ctypes.data, (x.ctypes.data, g)
    if part.start == 0:
        if part.stop < g.cout:
            _SHARED_BY[key] = mine
        return False
    if _SHARED_BY.get(key) != mine:
        raise ValueError(
            f"Conv.bind: channel part [{part.start}, {part.stop}) of {g.cout} reuses the im2col that "
            f"the part at channel 0 writes into its scratch, but no such part was bound to this "
            f"scratch (at {key:#x}) and input: bind a conv's parts in order, to one scratch"
        )
    if part.stop == g.cout:
        del _SHARED_BY[key]
    return True


def _bind_winograd(
    g: Geometry, x, wp, bias, y, res, scratch, rows, chans, epilogue, shared=False, reuse=False
) -> Kernel:
    (r0, r1), (c0, c1), (act, alpha, beta) = rows, chans, epilogue
    plan = WinogradPlan.of(g, r1 - r0, c1 - c0, shared)
    sizes = plan.buffers
    scratch = _scratch_floats(scratch, sum(sizes.values()))
    buf, start = {}, 0
    for name, size in sizes.items():
        buf[name] = scratch[start : start + size]
        start += size
    tmp, pad, u, v, m, obuf = buf["tmp"], buf["pad"], buf["u"], buf["v"], buf["m"], buf["o"]
    w_flat, cin, tx = reshape_view(wp, (-1,)), g.cin, plan.tiles_x
    chunks = []
    for k0 in range(0, c1 - c0, plan.chunk):
        kc = min(plan.chunk, c1 - c0 - k0)
        chunks.append((k0, k0 + kc, u[: 16 * kc * cin].reshape(16, kc, cin)))
    bands = []  # (first output row, end row, tile rows, v, [(chunk start, end, u, m)])
    for b0 in range(r0, r1, 2 * plan.band):
        b1 = min(b0 + 2 * plan.band, r1)
        ty = (b1 - b0 + 1) // 2
        run = ty * (tx + 1)  # tile rows of the band, each with its garbage column
        v3 = v[: 16 * cin * run].reshape(16, cin, run)
        per_chunk = [
            (k0, k1, u3, m[: 16 * (k1 - k0) * run].reshape(16, k1 - k0, run)) for k0, k1, u3 in chunks
        ]
        for _, _, u3, m3 in per_chunk:
            check_blas(u3[0], v3[0], m3[0])
        bands.append((b0, b1, ty, v3, per_chunk))
    # The weight transform runs once per call when one chunk holds every output channel.
    once = len(chunks) == 1

    if shared and len(bands) * g.batch != 1:
        raise ValueError(
            f"Conv.bind: shared Winograd input needs one band, got {len(bands)} for batch {g.batch}"
        )

    def run_winograd():
        if once:
            winograd_weights(w_flat, 0, c1 - c0, cin, u, tmp)
        for n in range(g.batch):
            for b0, b1, ty, v3, per_chunk in bands:
                if not reuse:
                    winograd_input(x, n, pad, v, b0, ty, tx, g.pt, g.pl)
                for k0, k1, u3, m3 in per_chunk:
                    if not once:
                        winograd_weights(w_flat, k0, k1, cin, u, tmp)
                    np.matmul(u3, v3, out=m3)
                    winograd_output(
                        m, y, res, obuf, n, k1 - k0, c0 + k0, b0, b1, ty, tx, bias, k0, act, alpha, beta
                    )

    return run_winograd


def _bind_gemm(
    g: Geometry, band: int, x, wp, bias, y, res, scratch, rows, chans, epilogue, reuse=False
) -> Kernel:
    """The pointwise and im2col paths: one task per (batch, group, band of output rows); with
    `reuse`, the one task's im2col is already in the scratch (see _SHARED_BY)."""
    (r0, r1), (c0, c1), (act, alpha, beta) = rows, chans, epilogue
    flat = reshape_view(y, (-1,))
    plane = g.out_h * g.out_w
    cout_g, cin_g = g.cout // g.group, g.cin // g.group
    phased = NO_BIAS
    if not g.pointwise:
        scratch = _scratch_floats(scratch, _im2col_floats(g, band))
        phased = scratch[g.k * band * g.out_w :]
    tasks = []
    for n in range(g.batch):
        for grp in range(c0 // cout_g, -(-c1 // cout_g)):
            lo_c, hi_c = max(grp * cout_g, c0), min((grp + 1) * cout_g, c1)
            w_g = wp[lo_c - c0 : hi_c - c0]
            y_g = reshape_view(y[n, lo_c:hi_c], (hi_c - lo_c, plane))
            for b0 in range(r0, r1, band):
                b1 = min(b0 + band, r1)
                cols = slice(b0 * g.out_w, b1 * g.out_w)
                if g.pointwise:  # output row r reads input row r: the band is a view of the input
                    x_g = reshape_view(x[n, grp * cin_g : (grp + 1) * cin_g], (cin_g, g.height * g.width))
                    col = x_g[:, cols]
                else:
                    col = scratch[: g.k * (b1 - b0) * g.out_w].reshape(g.k, (b1 - b0) * g.out_w)
                out = y_g[:, cols]
                check_blas(w_g, col, out)
                off = (n * g.cout + lo_c) * plane + b0 * g.out_w
                tasks.append((n, grp * cin_g, b0, b1, w_g, col, out, off, hi_c - lo_c, lo_c - c0))

    if g.pointwise:

        def run_pointwise():
            for _, _, _, _, w_g, col, out, off, n_rows, boff in tasks:
                np.matmul(w_g, col, out=out)
                bias_act(flat, res, off, plane, n_rows, out.shape[1], bias, boff, act, alpha, beta)

        return run_pointwise

    if reuse and len(tasks) != 1:
        raise ValueError(f"Conv.bind: a part reusing the im2col needs one task, got {len(tasks)}")

    def run_gemm_only():
        for _, _, _, _, w_g, col, out, off, n_rows, boff in tasks:
            np.matmul(w_g, col, out=out)
            bias_act(flat, res, off, plane, n_rows, out.shape[1], bias, boff, act, alpha, beta)

    if reuse:
        return run_gemm_only

    def run_im2col():
        for n, ci, b0, b1, w_g, col, out, off, n_rows, boff in tasks:
            im2col(x, n, ci, cin_g, col, b0, b1, g.out_w, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl)
            np.matmul(w_g, col, out=out)
            bias_act(flat, res, off, plane, n_rows, out.shape[1], bias, boff, act, alpha, beta)

    def run_im2col_strided():
        for n, ci, b0, b1, w_g, col, out, off, n_rows, boff in tasks:
            im2col_strided(
                x, n, ci, cin_g, col, phased, b0, b1, g.out_w, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
            )  # fmt: skip
            np.matmul(w_g, col, out=out)
            bias_act(flat, res, off, plane, n_rows, out.shape[1], bias, boff, act, alpha, beta)

    return run_im2col_strided if g.strided else run_im2col


def _im2col_floats(g: Geometry, band: int) -> int:
    """Scratch floats of the im2col path: the col band, and with a column stride the phase-split
    input rows of one channel (see im2col_strided)."""
    phased = int(phased_layout(band, g.out_w, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw)[1]) if g.strided else 0
    return g.k * band * g.out_w + phased


def _scratch_floats(scratch: np.ndarray | None, need: int) -> np.ndarray:
    """The first `need` floats of the scratch view, flat (empty when nothing is needed)."""
    have = 0 if scratch is None else scratch.size
    if have < need:
        raise ValueError(f"Conv.bind: scratch of {have * 4} bytes, need {need * 4}")
    return NO_BIAS if scratch is None else reshape_view(scratch, (-1,))[:need]


def reshape_view(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """a.reshape(shape), refusing to copy: a copy would silently detach the result from the arena."""
    v = a.reshape(shape)
    if v.size and not np.shares_memory(v, a):
        raise ValueError(f"cannot view an array of shape {a.shape}, strides {a.strides} as {shape}")
    return v


def check_blas(*arrays: np.ndarray) -> None:
    """np.matmul falls back to a slow non-BLAS loop unless every operand has a unit inner stride."""
    for a in arrays:
        if a.shape[0] > 1 and a.shape[1] > 1 and a.strides[1] != a.itemsize and a.strides[0] != a.itemsize:
            raise ValueError(f"operand {a.shape} with strides {a.strides} is not BLAS-friendly")
