"""Flat buffers and views of the arena: the copy kernels and the checks that every view a kernel is
bound to stays a view (never a copy) and suits BLAS."""

from __future__ import annotations

import numpy as np

from flexnnd.ops.epilogue import NO_BIAS
from flexnnd.ops.jit import kernel


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


def scratch_floats(scratch: np.ndarray | None, need: int) -> np.ndarray:
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
