"""A 2-D convolution's numbers, resolved once, and which algorithm they choose (see conv.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
WINO_MIN_WIDTH = 13
WINO_MIN_SCORE = 20

# depthwise3x3 (direct, no scratch) against the padded-band kernel, Clip epilogue, measured: stride 2
# 112->56 0.54 vs 0.78 ms (96 ch), 56->28 0.27 vs 0.36, but 28->14 0.15 vs 0.12; stride 1 112 wide
# 0.18 vs 0.24, 56 wide equal, narrower slower (its vector loops want 64-float runs).
DW_DIRECT_MIN_WIDTH = 28
DW_DIRECT_MIN_WIDTH_S1 = 64


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


def same_pads(size: int, k: int, s: int, d: int, upper: bool) -> tuple[int, int]:
    out = -(-size // s)
    total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def even_split(total: int, most: int) -> int:
    """The size of the parts when `total` is cut into as few parts of at most `most` as possible,
    all (nearly) equal."""
    most = max(1, min(total, most))
    parts = -(-total // most)
    return -(-total // parts)


def band_rows(rows: int, row_bytes: int, row_cols: int, limit: int, min_cols: int) -> int:
    """Output rows per band: below `limit` bytes, but at least `min_cols` GEMM columns (BLAS
    loses a third of its speed on narrow matrices)."""
    return even_split(rows, max(limit // max(row_bytes, 1), -(-min_cols // row_cols)))


def reference_conv(x: np.ndarray, w: np.ndarray, g: Geometry) -> np.ndarray:
    """Plain numpy convolution of NCHW `x` by (cout, cin/group, kh, kw) `w` in their dtype (float64
    or int64 for the references): a sum over the kernel taps of strided views, per group."""
    xp = np.pad(x, ((0, 0), (0, 0), (g.pt, g.pb), (g.pl, g.pr)))
    y = np.zeros((g.batch, g.cout, g.out_h, g.out_w), np.result_type(x, w))
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
                y[:, grp * cout_g : (grp + 1) * cout_g] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    return y
