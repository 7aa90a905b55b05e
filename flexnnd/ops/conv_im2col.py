"""The im2col and pointwise paths of Conv: im2col into scratch (or, for a 1x1 stride-1 conv, the
input itself) then one BLAS matmul per group and band of output rows, then the epilogue."""

from __future__ import annotations

import numpy as np

from flexnnd.ops.base import Kernel
from flexnnd.ops.buffers import check_blas, copy, fill, fill_strided, reshape_view, scratch_floats
from flexnnd.ops.conv_geometry import Geometry
from flexnnd.ops.epilogue import NO_BIAS, bias_act
from flexnnd.ops.jit import kernel

# The im2col band (K × band columns) stays below 1 MiB, in the 2 MiB L2 while BLAS packs it, but
# has at least MIN_BAND_COLS columns (BLAS loses a third of its speed on narrower matrices). The
# pointwise band (input + output columns) needs no scratch: it only keeps the epilogue in cache.
IM2COL_BAND_BYTES = 1 << 20
POINTWISE_BAND_BYTES = 4 << 20
MIN_BAND_COLS = 512


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


def bind_gemm(
    g: Geometry, band: int, x, wp, bias, y, res, scratch, rows, chans, epilogue, reuse=False
) -> Kernel:
    """The pointwise and im2col paths: one task per (batch, group, band of output rows); with
    `reuse`, the one task's im2col is already in the scratch (see Conv.shares_operand)."""
    (r0, r1), (c0, c1), (act, alpha, beta) = rows, chans, epilogue
    flat = reshape_view(y, (-1,))
    plane = g.out_h * g.out_w
    cout_g, cin_g = g.cout // g.group, g.cin // g.group
    phased = NO_BIAS
    if not g.pointwise:
        scratch = scratch_floats(scratch, im2col_floats(g, band))
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


def im2col_floats(g: Geometry, band: int) -> int:
    """Scratch floats of the im2col path: the col band, and with a column stride the phase-split
    input rows of one channel (see im2col_strided)."""
    phased = int(phased_layout(band, g.out_w, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw)[1]) if g.strided else 0
    return g.k * band * g.out_w + phased
