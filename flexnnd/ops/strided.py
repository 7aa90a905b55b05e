"""One copy kernel for every op that only moves data (Slice, Split, Concat, Transpose, Tile, Expand,
Pad, DepthToSpace, ...), for every element type.

An op describes its work at bind time as numpy views: "this strided view of the input goes to that
view of the output". `Copy` turns such a pair into element offsets and strides into the two flat
buffers, merges the dimensions that stay contiguous, and runs `strided_copy`. Data movement does not
care what the bits mean, so every tensor is seen as the unsigned integer of its width: the kernel has
at most four numba specializations (1, 2, 4 and 8 bytes), whatever the dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import DtypeRefused
from flexnnd.ops.jit import kernel

# Element types the data movement ops take (numpy names), as the arena holds them.
MOVABLE_DTYPES = ("float32", "int64", "int32", "int16", "int8", "uint16", "uint8", "bool")

_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
MAX_LOOPS = 6


def same_dtype(op_type: str, dtypes: Sequence[str | None], data: Sequence[int] = (0,)) -> str:
    """The one element type of the data inputs at `data` (those present), which must be movable."""
    present = [(pos, dtypes[pos]) for pos in data if pos < len(dtypes) and dtypes[pos] is not None]
    first = present[0][1]
    for pos, dtype in present:
        if dtype not in MOVABLE_DTYPES:
            raise DtypeRefused(f"input {pos} is {dtype}; {op_type} takes {', '.join(MOVABLE_DTYPES)}")
        if dtype != first:
            raise DtypeRefused(
                f"input {pos} is {dtype} but input {present[0][0]} is {first}; {op_type} needs one type"
            )
    return first


def bits(a: np.ndarray) -> np.ndarray:
    """`a` seen as the unsigned integers of its element width (a view: data movement keeps the bits)."""
    return a.view(_BITS[a.itemsize])


def flat_bits(a: np.ndarray) -> np.ndarray:
    """A C-contiguous arena view as one flat array of unsigned integers, never a copy."""
    if not a.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous buffer, got strides {a.strides} for shape {a.shape}")
    return bits(a.reshape(-1))


@kernel
def strided_copy(src, dst, bases, shape, src_strides, dst_strides):
    """For every block b and index i of the 6-D `shape`: dst[bases[b, 1] + i·dst_strides] =
    src[bases[b, 0] + i·src_strides]. src and dst are flat; strides count elements (src's may be
    negative, or 0 to repeat an element); the innermost dimension is the longest run."""
    n0, n1, n2, n3, n4, n5 = shape[0], shape[1], shape[2], shape[3], shape[4], shape[5]
    a0, a1, a2, a3, a4, a5 = (
        src_strides[0],
        src_strides[1],
        src_strides[2],
        src_strides[3],
        src_strides[4],
        src_strides[5],
    )
    b0, b1, b2, b3, b4, b5 = (
        dst_strides[0],
        dst_strides[1],
        dst_strides[2],
        dst_strides[3],
        dst_strides[4],
        dst_strides[5],
    )
    run = np.uint64(n5)
    for blk in range(bases.shape[0]):
        for i0 in range(n0):
            for i1 in range(n1):
                for i2 in range(n2):
                    for i3 in range(n3):
                        for i4 in range(n4):
                            s = bases[blk, 0] + i0 * a0 + i1 * a1 + i2 * a2 + i3 * a3 + i4 * a4
                            d = bases[blk, 1] + i0 * b0 + i1 * b1 + i2 * b2 + i3 * b3 + i4 * b4
                            su, du = np.uint64(s), np.uint64(d)
                            if a5 == 1 and b5 == 1:  # contiguous runs: LLVM vectorizes this loop
                                for k in range(run):
                                    dst[du + k] = src[su + k]
                            elif a5 == 0 and b5 == 1:  # one element repeated (Expand, a pad value)
                                v = src[su]
                                for k in range(run):
                                    dst[du + k] = v
                            else:  # unsigned arithmetic wraps a negative stride to the right index
                                sa, sb = np.uint64(a5), np.uint64(b5)
                                for k in range(run):
                                    dst[du + k * sb] = src[su + k * sa]


def _element_offset(view: np.ndarray, flat: np.ndarray) -> int:
    start = view.__array_interface__["data"][0] - flat.__array_interface__["data"][0]
    if start % flat.itemsize:
        raise ValueError(f"view starts {start} bytes into its buffer, not on an element")
    return start // flat.itemsize


def _extent(offset: int, shape: Sequence[int], strides: Sequence[int]) -> tuple[int, int]:
    """The lowest and highest element index a strided view touches."""
    low = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s < 0)
    high = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True) if s > 0)
    return low, high


@dataclass(frozen=True)
class Copy:
    """dst_view = src_view, where each view lies in a flat unsigned buffer (`src`, `dst`): the
    offsets, merged strides and blocks `strided_copy` takes, computed once at bind time."""

    src: np.ndarray
    dst: np.ndarray
    bases: np.ndarray  # (blocks, 2) int64: element offset in src, in dst
    shape: np.ndarray  # (6,) int64
    src_strides: np.ndarray
    dst_strides: np.ndarray

    @classmethod
    def between(cls, src_view: np.ndarray, src: np.ndarray, dst_view: np.ndarray, dst: np.ndarray) -> Copy:
        """`src_view` (a view of flat `src`, any strides) into `dst_view` (a view of flat `dst`),
        two views of one shape; src_view may broadcast (stride 0)."""
        if src_view.shape != dst_view.shape or src.itemsize != dst.itemsize:
            raise ValueError(f"copy of {src_view.shape} {src.dtype} into {dst_view.shape} {dst.dtype}")
        size = src.itemsize
        dims = [
            (n, s // size, d // size)
            for n, s, d in zip(src_view.shape, src_view.strides, dst_view.strides, strict=True)
            if n != 1
        ]
        merged: list[list[int]] = []
        for n, s, d in dims:
            if merged and merged[-1][1] == s * n and merged[-1][2] == d * n:
                merged[-1] = [merged[-1][0] * n, s, d]  # the outer dimension continues this one
            else:
                merged.append([n, s, d])
        src0, dst0 = _element_offset(src_view, src), _element_offset(dst_view, dst)
        for view, flat, offset, k in ((src_view, src, src0, 1), (dst_view, dst, dst0, 2)):
            low, high = _extent(offset, [m[0] for m in merged], [m[k] for m in merged])
            if src_view.size and (low < 0 or high >= flat.size):
                raise ValueError(
                    f"view {view.shape} {view.strides} reaches [{low}, {high}] of {flat.size} elements"
                )
        outer, inner = merged[: max(len(merged) - MAX_LOOPS, 0)], merged[max(len(merged) - MAX_LOOPS, 0) :]
        inner = [[1, 0, 0]] * (MAX_LOOPS - len(inner)) + inner
        # Dimensions beyond six are enumerated here, once: one block per index of them.
        bases = np.array([[src0, dst0]], dtype=np.int64)
        for n, s, d in outer:
            steps = np.arange(n, dtype=np.int64)[:, None] * np.array([s, d], dtype=np.int64)
            bases = (bases[:, None, :] + steps[None, :, :]).reshape(-1, 2)
        return cls(
            src,
            dst,
            bases,
            np.array([m[0] for m in inner], dtype=np.int64),
            np.array([m[1] for m in inner], dtype=np.int64),
            np.array([m[2] for m in inner], dtype=np.int64),
        )

    def __call__(self) -> None:
        strided_copy(self.src, self.dst, self.bases, self.shape, self.src_strides, self.dst_strides)


def run_all(copies: Sequence[Copy]):
    """One callable running `copies` in order."""
    copies = tuple(copies)
    if len(copies) == 1:
        return copies[0]

    def run_copies() -> None:
        for c in copies:
            strided_copy(c.src, c.dst, c.bases, c.shape, c.src_strides, c.dst_strides)

    return run_copies
