"""The depthwise path of Conv (group == Cin == Cout): direct numba kernels, one pass per output
channel, the epilogue fused; depthwise3x3 needs no scratch at all."""

from __future__ import annotations

import numpy as np

from flexnnd.ops.base import Kernel
from flexnnd.ops.buffers import copy, fill, scratch_floats
from flexnnd.ops.conv_geometry import Geometry
from flexnnd.ops.epilogue import NO_BIAS, bias_act
from flexnnd.ops.jit import kernel


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


def bind_depthwise3x3(g: Geometry, x, wp, bias, y, rows, chans, epilogue) -> Kernel:
    (r0, r1), (c0, c1), (act, alpha, beta) = rows, chans, epilogue

    def run_depthwise3x3():
        depthwise3x3(x, wp, bias, y, c0, c1, r0, r1, g.sh, g.pt, g.pl, act, alpha, beta)

    return run_depthwise3x3


def bind_depthwise(g: Geometry, x, wp, bias, y, scratch, rows, chans, epilogue) -> Kernel:
    (r0, r1), (c0, c1), (act, alpha, beta) = rows, chans, epilogue
    n_pad, n_wide = depthwise_scratch(r1 - r0, g.out_w, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw)
    scratch = scratch_floats(scratch, n_pad + n_wide)
    pad, wide = scratch[:n_pad], scratch[n_pad:]

    def run_depthwise():
        depthwise(
            x, wp, bias, y, pad, wide, c0, c1, r0, r1, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
            act, alpha, beta,
        )  # fmt: skip

    return run_depthwise
