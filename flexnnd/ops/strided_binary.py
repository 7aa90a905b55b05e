"""The strided kernels of the broadcasting ops on any numeric type (elementwise.py): integer
arithmetic, Min/Max/Mean folded over their inputs, comparisons and the logical ops, each one loop
nest over collapsed strides whose result kind picks the kernel; numpy's ufuncs would allocate a
buffer on every broadcasting call. Integer Div truncates and Mod floors as ONNX Runtime does, and a
zero divisor fails the request (InputValueError) instead of killing the process with SIGFPE."""

from __future__ import annotations

import numpy as np

from flexnnd.errors import InputValueError, ShapeError
from flexnnd.graph.ir import Shape
from flexnnd.ops.base import Kernel, broadcast_shapes
from flexnnd.ops.jit import kernel
from flexnnd.ops.tensor import reshaped

MAX_RANK = 6  # axes a broadcast may keep after adjacent ones merge


def _padded(shape: Shape, rank: int) -> Shape:
    return (1,) * (rank - len(shape)) + tuple(shape)


# Codes of the strided kernels (the arithmetic ones on any numeric type, the rest give bool).
I_ADD, I_SUB, I_MUL, I_MIN, I_MAX, TRUNC_DIV, FLOOR_MOD, TRUNC_MOD = range(8)
EQ, LT, LE, GT, GE, AND, OR, XOR = range(8)


@kernel(inline="always")
def _plain(code, u, v):
    """u op v for the codes that cannot fail (I_ADD to I_MAX), on integers or floats: a NaN wins
    Min and Max (as in ONNX Runtime)."""
    if code == I_ADD:
        return u + v
    if code == I_SUB:
        return u - v
    if code == I_MUL:
        return u * v
    if code == I_MIN:
        return v if v < u or v != v else u
    return v if v > u or v != v else u


@kernel(inline="always")
def _dividing(code, u, v):
    """(u div/mod v, whether v was a zero divisor) on int64 (every integer type fits; the store
    wraps the result to the output's type). Division by 0 gives 0; v == -1 is done apart because
    INT_MIN / -1 traps in hardware."""
    if v == 0:
        return u - u, True
    if v == -1:
        return (-u if code == TRUNC_DIV else u - u), False
    q = u // v  # floor division
    m = u - q * v  # its remainder, with v's sign (one hardware division for both)
    inexact_negative = m != 0 and (u < 0) != (v < 0)
    if code == TRUNC_DIV:
        return (q + 1 if inexact_negative else q), False
    if code == FLOOR_MOD:
        return m, False
    return (m - v if inexact_negative else m), False


@kernel(inline="always")
def _float_mod(code, u, v):
    """The remainder of floats: C's fmod (TRUNC_MOD) or with v's sign (FLOOR_MOD); NaN for v = 0."""
    r = np.fmod(u, v)
    if code == FLOOR_MOD and r != 0 and (r < 0) != (v < 0):
        r += v
    return r


@kernel(inline="always")
def _compare(code, u, v):
    if code == EQ:
        return u == v
    if code == LT:
        return u < v
    if code == LE:
        return u <= v
    if code == GT:
        return u > v
    if code == GE:
        return u >= v
    if code == AND:
        return u and v
    if code == OR:
        return u or v
    return u != v  # XOR of bools


@kernel
def strided_integer(a, sa, b, sb, y, shape, code):
    """y = a op b on integers: y flat in C order of the 6-D `shape`, a and b flat, read at element
    strides sa, sb (0 along a broadcast axis; the inner one 0 or 1). Returns how many divisors
    were 0."""
    zeros = 0
    k = np.uint64(0)
    n = np.uint64(shape[5])
    # The inner axis reads each operand in order or repeats one element: a loop per case, with
    # unsigned offsets and the op's branch invariant, so that each one vectorizes.
    if code < TRUNC_DIV:
        for i0 in range(shape[0]):
            for i1 in range(shape[1]):
                for i2 in range(shape[2]):
                    for i3 in range(shape[3]):
                        for i4 in range(shape[4]):
                            oa = np.uint64(i0 * sa[0] + i1 * sa[1] + i2 * sa[2] + i3 * sa[3] + i4 * sa[4])
                            ob = np.uint64(i0 * sb[0] + i1 * sb[1] + i2 * sb[2] + i3 * sb[3] + i4 * sb[4])
                            if sa[5] == 1 and sb[5] == 1:
                                for i in range(n):
                                    y[k + i] = _plain(code, a[oa + i], b[ob + i])
                            elif sa[5] == 1:
                                v = b[ob]
                                for i in range(n):
                                    y[k + i] = _plain(code, a[oa + i], v)
                            elif sb[5] == 1:
                                u = a[oa]
                                for i in range(n):
                                    y[k + i] = _plain(code, u, b[ob + i])
                            else:
                                u, v = a[oa], b[ob]
                                for i in range(n):
                                    y[k + i] = _plain(code, u, v)
                            k += n
        return zeros
    for i0 in range(shape[0]):
        for i1 in range(shape[1]):
            for i2 in range(shape[2]):
                for i3 in range(shape[3]):
                    for i4 in range(shape[4]):
                        oa = np.uint64(i0 * sa[0] + i1 * sa[1] + i2 * sa[2] + i3 * sa[3] + i4 * sa[4])
                        ob = np.uint64(i0 * sb[0] + i1 * sb[1] + i2 * sb[2] + i3 * sb[3] + i4 * sb[4])
                        if sa[5] == 1 and sb[5] == 1:
                            for i in range(n):
                                r, zero = _dividing(code, np.int64(a[oa + i]), np.int64(b[ob + i]))
                                y[k + i] = r
                                zeros += zero
                        elif sa[5] == 1:
                            v = b[ob]
                            for i in range(n):
                                r, zero = _dividing(code, np.int64(a[oa + i]), np.int64(v))
                                y[k + i] = r
                                zeros += zero
                        elif sb[5] == 1:
                            u = a[oa]
                            for i in range(n):
                                r, zero = _dividing(code, np.int64(u), np.int64(b[ob + i]))
                                y[k + i] = r
                                zeros += zero
                        else:
                            u, v = a[oa], b[ob]
                            for i in range(n):
                                r, zero = _dividing(code, np.int64(u), np.int64(v))
                                y[k + i] = r
                                zeros += zero
                        k += n
    return zeros


@kernel
def strided_compare(a, sa, b, sb, y, shape, code):
    """y = a cmp b into a bool y, laid out as in strided_integer."""
    k = np.uint64(0)
    n = np.uint64(shape[5])
    # The inner axis reads each operand in order or repeats one element: a loop per case, with
    # unsigned offsets and the op's branch invariant, so that each one vectorizes.
    for i0 in range(shape[0]):
        for i1 in range(shape[1]):
            for i2 in range(shape[2]):
                for i3 in range(shape[3]):
                    for i4 in range(shape[4]):
                        oa = np.uint64(i0 * sa[0] + i1 * sa[1] + i2 * sa[2] + i3 * sa[3] + i4 * sa[4])
                        ob = np.uint64(i0 * sb[0] + i1 * sb[1] + i2 * sb[2] + i3 * sb[3] + i4 * sb[4])
                        if sa[5] == 1 and sb[5] == 1:
                            for i in range(n):
                                y[k + i] = _compare(code, a[oa + i], b[ob + i])
                        elif sa[5] == 1:
                            v = b[ob]
                            for i in range(n):
                                y[k + i] = _compare(code, a[oa + i], v)
                        elif sb[5] == 1:
                            u = a[oa]
                            for i in range(n):
                                y[k + i] = _compare(code, u, b[ob + i])
                        else:
                            u, v = a[oa], b[ob]
                            for i in range(n):
                                y[k + i] = _compare(code, u, v)
                        k += n


@kernel
def strided_float(a, sa, b, sb, y, shape, code):
    """y = a op b on floats (I_ADD, I_MIN, I_MAX, FLOOR_MOD, TRUNC_MOD), laid out as in
    strided_integer; returns 0 (no zero divisor fails a float op)."""
    k = np.uint64(0)
    n = np.uint64(shape[5])
    # The inner axis reads each operand in order or repeats one element: a loop per case, with
    # unsigned offsets and the op's branch invariant, so that each one vectorizes.
    if code < TRUNC_DIV:
        for i0 in range(shape[0]):
            for i1 in range(shape[1]):
                for i2 in range(shape[2]):
                    for i3 in range(shape[3]):
                        for i4 in range(shape[4]):
                            oa = np.uint64(i0 * sa[0] + i1 * sa[1] + i2 * sa[2] + i3 * sa[3] + i4 * sa[4])
                            ob = np.uint64(i0 * sb[0] + i1 * sb[1] + i2 * sb[2] + i3 * sb[3] + i4 * sb[4])
                            if sa[5] == 1 and sb[5] == 1:
                                for i in range(n):
                                    y[k + i] = _plain(code, a[oa + i], b[ob + i])
                            elif sa[5] == 1:
                                v = b[ob]
                                for i in range(n):
                                    y[k + i] = _plain(code, a[oa + i], v)
                            elif sb[5] == 1:
                                u = a[oa]
                                for i in range(n):
                                    y[k + i] = _plain(code, u, b[ob + i])
                            else:
                                u, v = a[oa], b[ob]
                                for i in range(n):
                                    y[k + i] = _plain(code, u, v)
                            k += n
        return 0
    for i0 in range(shape[0]):
        for i1 in range(shape[1]):
            for i2 in range(shape[2]):
                for i3 in range(shape[3]):
                    for i4 in range(shape[4]):
                        oa = np.uint64(i0 * sa[0] + i1 * sa[1] + i2 * sa[2] + i3 * sa[3] + i4 * sa[4])
                        ob = np.uint64(i0 * sb[0] + i1 * sb[1] + i2 * sb[2] + i3 * sb[3] + i4 * sb[4])
                        if sa[5] == 1 and sb[5] == 1:
                            for i in range(n):
                                y[k + i] = _float_mod(code, a[oa + i], b[ob + i])
                        elif sa[5] == 1:
                            v = b[ob]
                            for i in range(n):
                                y[k + i] = _float_mod(code, a[oa + i], v)
                        elif sb[5] == 1:
                            u = a[oa]
                            for i in range(n):
                                y[k + i] = _float_mod(code, u, b[ob + i])
                        else:
                            u, v = a[oa], b[ob]
                            for i in range(n):
                                y[k + i] = _float_mod(code, u, v)
                        k += n
    return 0


def element_strides(x_shape: Shape, out_shape: Shape) -> list[int]:
    """Element strides of a C-contiguous x read at out's index (0 along broadcast axes)."""
    padded_x = _padded(x_shape, len(out_shape))
    strides, step = [], 1
    for dx, do in zip(reversed(padded_x), reversed(out_shape), strict=True):
        strides.append(step if dx == do and dx != 1 else 0)
        step *= dx
    return strides[::-1]


def collapsed(out: Shape, sa: list[int], sb: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shape, sa, sb) with adjacent axes merged where both operands allow it (each is read in
    order across the pair, or repeated across it), padded to MAX_RANK: fewer, longer inner loops.
    A same-shape pair becomes one axis; (1,12,197,197) against (197,) becomes (2364, 197)."""
    dims, strides_a, strides_b = [], [], []
    for d, s_a, s_b in zip(out, sa, sb, strict=True):
        if d == 1:
            continue
        if dims and all(
            (prev == s * d) or (prev == 0 and s == 0)
            for prev, s in ((strides_a[-1], s_a), (strides_b[-1], s_b))
        ):
            dims[-1] *= d
            strides_a[-1], strides_b[-1] = s_a, s_b
            continue
        dims.append(d)
        strides_a.append(s_a)
        strides_b.append(s_b)
    if len(dims) > MAX_RANK:
        raise ShapeError(f"broadcasting to {out}: more than {MAX_RANK} axes after merging")
    pad = MAX_RANK - len(dims)
    return (
        np.array([1] * pad + dims, dtype=np.int64),
        np.array([0] * pad + strides_a, dtype=np.int64),
        np.array([0] * pad + strides_b, dtype=np.int64),
    )


def bind_strided(op_type: str, run_kernel, code: int, a: np.ndarray, b: np.ndarray, y: np.ndarray) -> Kernel:
    """A callable running `run_kernel` (a strided_* kernel) for y = a op b, broadcast; a kernel
    that reports zero divisors fails the request with InputValueError."""
    out = broadcast_shapes(op_type, a.shape, b.shape, y.shape)
    if out != y.shape:
        raise ShapeError(f"{op_type}: inputs {a.shape} and {b.shape} broadcast to {out}, output is {y.shape}")
    if a.dtype != b.dtype:
        raise ShapeError(f"{op_type}.bind: inputs of types {a.dtype} and {b.dtype}")
    flat_a, flat_b, flat_y = reshaped(a, (-1,)), reshaped(b, (-1,)), reshaped(y, (-1,))
    shape, sa, sb = collapsed(out, element_strides(a.shape, out), element_strides(b.shape, out))

    def run() -> None:
        zeros = run_kernel(flat_a, sa, flat_b, sb, flat_y, shape, code)
        if zeros:
            raise InputValueError(
                "", op_type, f"integer division by zero ({zeros} of {y.size} divisors are 0)"
            )

    return run


def reference_integer_divide(op_type: str, mode: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    if np.any(b == 0):
        raise InputValueError("", op_type, f"integer division by zero ({int(np.sum(b == 0))} divisors are 0)")
    wide_a, wide_b = a.astype(np.int64), b.astype(np.int64)
    q = np.abs(wide_a) // np.abs(wide_b) * np.sign(wide_a) * np.sign(wide_b)  # truncated quotient
    if mode == TRUNC_DIV:
        out = q
    elif mode == TRUNC_MOD:
        out = wide_a - q * wide_b
    else:
        out = np.mod(wide_a, wide_b)
    return np.broadcast_to(out, np.broadcast_shapes(a.shape, b.shape)).astype(np.result_type(a, b))
