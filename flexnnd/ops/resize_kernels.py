"""Resize's kernels (resize.py builds the tables they read): a gather or an interpolation over the
last two axes in one pass per plane, a 2x nearest on raw bits, and one axis at a time for resized
axes before those. Elements are moved as unsigned integers of their width where nothing is
computed, so one compiled version serves every element type."""

from __future__ import annotations

import numpy as np

from flexnnd.ops.jit import kernel


@kernel
def gather2d(src, dst, planes, h, w, oh, ow, ridx, rout, cidx, cout, extrap, rep):
    """Nearest over the last two axes: dst[p, y, x] = src[p, ridx[y], cidx[x]], or `extrap` where a
    row or column falls outside the crop box (rout, cout; cout empty when none is). rep > 0 says
    cidx is each column `rep` times, in order; rows that repeat a source row copy the row above."""
    for p in range(planes):
        sp, dp = np.uint64(p * h * w), np.uint64(p * oh * ow)
        y = 0
        while y < oh:
            d = dp + np.uint64(y * ow)
            if rout[y]:
                for x in range(ow):
                    dst[d + x] = extrap
                y += 1
                continue
            if y > 0 and ridx[y] == ridx[y - 1] and not rout[y - 1]:
                prev = d - np.uint64(ow)
                for x in range(ow):
                    dst[d + x] = dst[prev + x]
                y += 1
                continue
            s = sp + np.uint64(ridx[y] * w)
            if rep == 2:
                for i in range(np.uint64(w)):
                    v = src[s + i]
                    dst[d + 2 * i] = v
                    dst[d + 2 * i + 1] = v
            elif rep > 0:
                r = np.uint64(rep)
                for i in range(np.uint64(w)):
                    v = src[s + i]
                    for k in range(r):
                        dst[d + i * r + k] = v
            else:
                for x in range(ow):
                    dst[d + x] = src[s + np.uint64(cidx[x])]
            if cout.size > 0:
                for x in range(ow):
                    if cout[x]:
                        dst[d + x] = extrap
            y += 1


@kernel
def nearest2x_bits(src, dst, planes, h, w, oh, ridx, rout, extrap):
    """Nearest doubling the last axis of 4-byte elements, as bits: src uint32 (planes, h, w), dst
    uint64 (planes, oh, w), each a source element twice: contiguous 8-byte stores LLVM vectorizes
    (the float32 stores of a doubled column would go one by one)."""
    pair = (np.uint64(extrap) << np.uint64(32)) | np.uint64(extrap)
    for p in range(planes):
        sp, dp = np.uint64(p * h * w), np.uint64(p * oh * w)
        for y in range(oh):
            d = dp + np.uint64(y * w)
            if rout[y]:
                for i in range(np.uint64(w)):
                    dst[d + i] = pair
                continue
            s = sp + np.uint64(ridx[y] * w)
            for i in range(np.uint64(w)):
                b = np.uint64(src[s + i])
                dst[d + i] = (b << np.uint64(32)) | b


@kernel
def interp2d(src, dst, planes, h, w, oh, ow, ridx, rw, rt, rout, cidx, cw, ct, cout, extrap, cache):
    """Linear/cubic over the last two axes (float32). Output row y blends source rows ridx[y, :rt]
    with weights rw[y, :rt]; each source row is first interpolated along W (cidx/cw, ct taps) into
    slot `row % rt` of `cache` (rt rows of ow, then rt tags: the source row each slot holds)."""
    tags = np.uint64(rt * ow)
    for p in range(planes):
        sp, dp = np.uint64(p * h * w), np.uint64(p * oh * ow)
        for t in range(rt):
            cache[tags + t] = -1.0
        for y in range(oh):
            d = dp + np.uint64(y * ow)
            if rout[y]:
                for x in range(ow):
                    dst[d + x] = extrap
                continue
            for t in range(rt):
                r = ridx[y * rt + t]
                slot = r % rt
                if cache[tags + slot] == r or rw[y * rt + t] == 0.0:
                    continue
                s, c = sp + np.uint64(r * w), np.uint64(slot * ow)
                if ct == 2:
                    for x in range(ow):
                        k = np.uint64(2 * x)
                        cache[c + x] = (
                            cw[k] * src[s + np.uint64(cidx[k])] + cw[k + 1] * src[s + np.uint64(cidx[k + 1])]
                        )
                else:
                    for x in range(ow):
                        acc = np.float32(0.0)
                        for j in range(ct):
                            k = np.uint64(x * ct + j)
                            acc += cw[k] * src[s + np.uint64(cidx[k])]
                        cache[c + x] = acc
                cache[tags + slot] = r
            if rt == 2:
                a, b = rw[2 * y], rw[2 * y + 1]
                ca = np.uint64((ridx[2 * y] % 2) * ow)
                cb = np.uint64((ridx[2 * y + 1] % 2) * ow)
                if b == 0.0:
                    cb = ca
                if a == 0.0:
                    ca = cb
                for x in range(ow):
                    dst[d + x] = a * cache[ca + x] + b * cache[cb + x]
            else:
                for x in range(ow):
                    dst[d + x] = 0.0
                for t in range(rt):
                    wt = rw[y * rt + t]
                    if wt == 0.0:
                        continue
                    c = np.uint64((ridx[y * rt + t] % rt) * ow)
                    for x in range(ow):
                        dst[d + x] += wt * cache[c + x]
            for x in range(ow):
                if cout[x]:
                    dst[d + x] = extrap


@kernel
def gather_axis(src, dst, outer, n_in, n_out, inner, idx, out_mask, extrap):
    """Nearest along one axis of a (outer, n_in, inner) tensor, to (outer, n_out, inner); any dtype."""
    for o in range(outer):
        so, do = np.uint64(o * n_in * inner), np.uint64(o * n_out * inner)
        for j in range(n_out):
            d = do + np.uint64(j * inner)
            if out_mask[j]:
                for i in range(inner):
                    dst[d + i] = extrap
                continue
            s = so + np.uint64(idx[j] * inner)
            for i in range(inner):
                dst[d + i] = src[s + i]


@kernel
def interp_axis(src, dst, outer, n_in, n_out, inner, idx, wgt, taps, out_mask, extrap):
    """Linear/cubic along one axis of a (outer, n_in, inner) float32 tensor: a weighted sum of `taps`
    input slices per output slice."""
    for o in range(outer):
        so, do = np.uint64(o * n_in * inner), np.uint64(o * n_out * inner)
        for j in range(n_out):
            d = do + np.uint64(j * inner)
            if out_mask[j]:
                for i in range(inner):
                    dst[d + i] = extrap
                continue
            for i in range(inner):
                dst[d + i] = 0.0
            for t in range(taps):
                wt = wgt[j * taps + t]
                s = so + np.uint64(idx[j * taps + t] * inner)
                for i in range(inner):
                    dst[d + i] += wt * src[s + i]


# No fastmath: ONNX Runtime's bilinear rounds each product and sums left to right (no FMA, no
# reassociation), and matching it bit for bit needs the same operations in the same order.
@kernel(fastmath=False)
def bilinear_ort(src, dst, planes, h, w, oh, ow, y1, y2, dy1, dy2, x1, x2, dx1, dx2, rout, cout, extrap):
    """ONNX Runtime's bilinear over the last two axes (float32): dst[p, y, x] =
    dx2*dy2*X[y1, x1] + dx1*dy2*X[y1, x2] + dx2*dy1*X[y2, x1] + dx1*dy1*X[y2, x2], each product
    rounded, left to right; y1/y2 are row offsets (row * w), x1/x2 columns, all uint64. Rows or
    columns outside a tf_crop_and_resize box (rout, cout; cout empty when none is) get `extrap`."""
    for p in range(planes):
        sp, dp = np.uint64(p * h * w), np.uint64(p * oh * ow)
        for y in range(oh):
            d = dp + np.uint64(y * ow)
            if rout[y]:
                for x in range(ow):
                    dst[d + x] = extrap
                continue
            r1, r2 = sp + y1[y], sp + y2[y]
            a, b = dy2[y], dy1[y]
            for x in range(ow):
                i, j = x1[x], x2[x]
                dst[d + x] = (
                    dx2[x] * a * src[r1 + i]
                    + dx1[x] * a * src[r1 + j]
                    + dx2[x] * b * src[r2 + i]
                    + dx1[x] * b * src[r2 + j]
                )
            if cout.size > 0:
                for x in range(ow):
                    if cout[x]:
                        dst[d + x] = extrap


@kernel(fastmath=False)
def trilinear_ort(src, dst, planes, plane_in, od, oh, ow, tz, ty, tx, zout, rout, cout, extrap):
    """ONNX Runtime's trilinear over the last three axes (float32), as bilinear_ort with a third
    factor: the eight terms dx*dy*dz*X in its order, each product rounded. tz, ty, tx are each
    (lo offsets, hi offsets, d_lo, d_hi) with offsets in elements (uint64); zout/rout/cout mark
    positions outside a tf_crop_and_resize box (cout empty when none is)."""
    z1, z2, dz1, dz2 = tz
    y1, y2, dy1, dy2 = ty
    x1, x2, dx1, dx2 = tx
    for p in range(planes):
        sp, dp = np.uint64(p * plane_in), np.uint64(p * od * oh * ow)
        for z in range(od):
            for y in range(oh):
                d = dp + np.uint64((z * oh + y) * ow)
                if zout[z] or rout[y]:
                    for x in range(ow):
                        dst[d + x] = extrap
                    continue
                r11, r21 = sp + z1[z] + y1[y], sp + z1[z] + y2[y]
                r12, r22 = sp + z2[z] + y1[y], sp + z2[z] + y2[y]
                c2, c1 = dz2[z], dz1[z]
                for x in range(ow):
                    i, j = x1[x], x2[x]
                    dst[d + x] = (
                        dx2[x] * dy2[y] * c2 * src[r11 + i]
                        + dx1[x] * dy2[y] * c2 * src[r11 + j]
                        + dx2[x] * dy1[y] * c2 * src[r21 + i]
                        + dx1[x] * dy1[y] * c2 * src[r21 + j]
                        + dx2[x] * dy2[y] * c1 * src[r12 + i]
                        + dx1[x] * dy2[y] * c1 * src[r12 + j]
                        + dx2[x] * dy1[y] * c1 * src[r22 + i]
                        + dx1[x] * dy1[y] * c1 * src[r22 + j]
                    )
                if cout.size > 0:
                    for x in range(ow):
                        if cout[x]:
                            dst[d + x] = extrap


@kernel(fastmath=False)
def bicubic_ort(src, dst, planes, h, w, oh, ow, yoff, yc, ysum, xidx, xw, rout, cout, extrap):
    """ONNX Runtime's bicubic over the last two axes (float32): per output, four source rows
    (offsets yoff[y, :], uint64) each interpolated along W as sum_j xw[x, j] * row[xidx[x, j]]
    (xw: coefficient / its row's total), then blended as sum_i (row_i * yc[y, i]) / ysum[y], each
    sum from 0 left to right, every operation rounded to float32 as ORT's loops do."""
    for p in range(planes):
        sp, dp = np.uint64(p * h * w), np.uint64(p * oh * ow)
        for y in range(oh):
            d = dp + np.uint64(y * ow)
            if rout[y]:
                for x in range(ow):
                    dst[d + x] = extrap
                continue
            total = ysum[y]
            for x in range(ow):
                acc = np.float32(0.0)
                for i in range(4):
                    r = sp + yoff[y, i]
                    row = np.float32(0.0)
                    for j in range(4):
                        row = row + xw[x, j] * src[r + xidx[x, j]]
                    acc = acc + row * yc[y, i] / total
                dst[d + x] = acc
            if cout.size > 0:
                for x in range(ow):
                    if cout[x]:
                        dst[d + x] = extrap
