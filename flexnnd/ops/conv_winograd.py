"""The Winograd F(2x2, 3x3) path of Conv: 16 batched GEMMs on transformed tiles, in bands of tile
rows and chunks of output channels, the epilogue fused into the output transform."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.ops.base import Kernel
from flexnnd.ops.buffers import check_blas, fill, reshape_view, scratch_floats
from flexnnd.ops.conv_geometry import Geometry, even_split
from flexnnd.ops.epilogue import bias_act
from flexnnd.ops.jit import kernel

# v+m per band and u per chunk of output channels stay below the byte limits, but a band has at
# least WINO_MIN_TILES tiles so that the 16 GEMMs stay efficient.
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
        chunk = even_split(channels, most)
        per_tile_row = 64 * (tiles_x + 1) * (geo.cin + chunk)  # bytes of v and m per tile row
        most = max(WINO_BAND_BYTES // per_tile_row, -(-WINO_MIN_TILES // tiles_x))
        band = (rows + 1) // 2 if whole else even_split((rows + 1) // 2, most)
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


def bind_winograd(
    g: Geometry, x, wp, bias, y, res, scratch, rows, chans, epilogue, shared=False, reuse=False
) -> Kernel:
    (r0, r1), (c0, c1), (act, alpha, beta) = rows, chans, epilogue
    plan = WinogradPlan.of(g, r1 - r0, c1 - c0, shared)
    sizes = plan.buffers
    scratch = scratch_floats(scratch, sum(sizes.values()))
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
