"""Pooling kernels against their numpy references, and the references against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops import pool
from flexnnd.ops.pool import AveragePool, GlobalAveragePool, GlobalMaxPool, MaxPool
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena


def random_geometries(count, seed):
    """Pool attributes over kernel 1..7, stride 1..3, dilation 1..2, asymmetric pads, ceil_mode."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        k = tuple(int(v) for v in rng.integers(1, 8, size=2))
        attrs = {
            "kernel_shape": k,
            "strides": tuple(int(v) for v in rng.integers(1, 4, size=2)),
            "dilations": tuple(int(v) for v in rng.choice([1, 1, 2], size=2)),
            "pads": tuple(int(rng.integers(0, k[i % 2])) for i in range(4)),
            "ceil_mode": int(rng.integers(0, 2)),
        }
        size = tuple(int(v) for v in rng.integers(1, 16, size=2) * 2 + 1)  # odd sizes
        out.append((attrs, size))
    return out


def check_against_reference(op, x):
    kernel, (y,) = run_in_arena(op, [x])
    y[...] = np.nan  # every output cell must be written
    kernel()
    np.testing.assert_allclose(y, op.reference([x])[0], rtol=1e-5, atol=1e-6)


# ---- kernels vs references ------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3, 13, 24])
def test_max_pool_matches_reference(channels):
    rng = np.random.default_rng(channels)
    tested = 0
    for attrs, size in random_geometries(60, seed=channels):
        op = MaxPool(**attrs)
        try:
            op.infer([(2, channels, *size)], [None])
        except ShapeError:
            continue  # window larger than the padded input
        check_against_reference(op, rng.standard_normal((2, channels, *size)).astype(np.float32))
        tested += 1
    assert tested > 30


@pytest.mark.parametrize("channels", [1, 3, 13, 24])
@pytest.mark.parametrize("include_pad", [0, 1])
def test_average_pool_matches_reference(channels, include_pad):
    rng = np.random.default_rng(channels)
    tested = 0
    for attrs, size in random_geometries(60, seed=100 + channels):
        op = AveragePool(count_include_pad=include_pad, **attrs)
        try:
            op.infer([(2, channels, *size)], [None])
        except ShapeError:
            continue
        check_against_reference(op, rng.standard_normal((2, channels, *size)).astype(np.float32))
        tested += 1
    assert tested > 30


@pytest.mark.parametrize("cls", [MaxPool, AveragePool])
@pytest.mark.parametrize("auto_pad", ["VALID", "SAME_UPPER", "SAME_LOWER"])
def test_auto_pad_matches_reference(cls, auto_pad):
    rng = np.random.default_rng(7)
    for k, s, size in [(3, 2, (7, 9)), (2, 2, (5, 5)), (5, 1, (9, 6)), (3, 3, (11, 13))]:
        op = cls(kernel_shape=(k, k), strides=(s, s), auto_pad=auto_pad)
        check_against_reference(op, rng.standard_normal((2, 3, *size)).astype(np.float32))


@pytest.mark.parametrize("cls", [MaxPool, AveragePool])
def test_one_dimensional_pool(cls):
    x = np.random.default_rng(3).standard_normal((2, 13, 17)).astype(np.float32)
    op = cls(kernel_shape=(3,), strides=(2,), pads=(1, 2), ceil_mode=1)
    assert op.infer([x.shape], [None]) == [(2, 13, 9)]
    check_against_reference(op, x)


@pytest.mark.parametrize("cls", [GlobalAveragePool, GlobalMaxPool])
@pytest.mark.parametrize("shape", [(2, 1, 7, 7), (2, 3, 5, 9), (2, 13, 1, 1), (2, 24, 3), (1, 3, 2, 3, 4)])
def test_global_pool_matches_reference(cls, shape):
    op = cls()
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    assert op.infer([shape], [None]) == [shape[:2] + (1,) * (len(shape) - 2)]
    check_against_reference(op, x)


def test_padded_cells_never_win_a_max():
    x = -np.ones((1, 1, 3, 3), dtype=np.float32)
    kernel, (y,) = run_in_arena(MaxPool(kernel_shape=(3, 3), pads=(2, 2, 2, 2)), [x])
    kernel()
    assert (y == -1).all()


def test_average_divisors():
    """Edge windows divide by their valid cells, or by the cells inside the explicit pads."""
    x = np.ones((1, 1, 5, 5), dtype=np.float32)
    attrs = {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 0, 0), "ceil_mode": 1}
    kernel, (y,) = run_in_arena(AveragePool(count_include_pad=0, **attrs), [x])
    kernel()
    assert (y == 1).all()
    kernel, (y,) = run_in_arena(AveragePool(count_include_pad=1, **attrs), [x])
    kernel()
    # The last row/column of windows reaches past the (zero) end pads: those cells do not count.
    np.testing.assert_allclose(y[0, 0], [[4 / 9, 4 / 6, 4 / 6], [4 / 6, 1, 1], [4 / 6, 1, 1]], rtol=1e-6)


# ---- references vs onnxruntime ----------------------------------------------------------------

ORT_CASES = [
    # ceil_mode: the last window starts in the right padding and is dropped (onnxruntime's rule).
    ({"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 1, 1], "ceil_mode": 1}, (4, 4)),
    ({"kernel_shape": [1, 1], "strides": [2, 2], "ceil_mode": 1}, (4, 5)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, (6, 6)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 2], "ceil_mode": 1}, (8, 7)),
    ({"kernel_shape": [3, 2], "strides": [3, 2], "pads": [2, 1, 0, 1], "ceil_mode": 1}, (11, 6)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 0}, (7, 7)),
    (
        {
            "kernel_shape": [3, 3],
            "strides": [2, 1],
            "dilations": [2, 2],
            "pads": [1, 2, 2, 1],
            "ceil_mode": 1,
        },
        (9, 8),
    ),
    ({"kernel_shape": [7, 7], "strides": [3, 3], "pads": [3, 3, 3, 3], "ceil_mode": 1}, (11, 13)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, (7, 8)),
    ({"kernel_shape": [4, 4], "strides": [3, 3], "auto_pad": "SAME_LOWER", "ceil_mode": 1}, (7, 8)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID", "ceil_mode": 1}, (8, 9)),
]


@pytest.mark.parametrize(("attrs", "size"), ORT_CASES)
@pytest.mark.parametrize(
    ("cls", "extra"),
    [(MaxPool, {}), (AveragePool, {"count_include_pad": 0}), (AveragePool, {"count_include_pad": 1})],
)
def test_reference_matches_onnxruntime(cls, extra, attrs, size):
    x = np.random.default_rng(5).standard_normal((2, 3, *size)).astype(np.float32)
    want = ort_run(cls.op_type, [x], **attrs, **extra)
    got = cls(**attrs, **extra).reference([x])[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [MaxPool, AveragePool])
def test_one_dimensional_reference_matches_onnxruntime(cls):
    x = np.random.default_rng(6).standard_normal((2, 3, 15)).astype(np.float32)
    attrs = {"kernel_shape": [4], "strides": [3], "pads": [1, 2], "ceil_mode": 1}
    np.testing.assert_allclose(cls(**attrs).reference([x])[0], ort_run(cls.op_type, [x], **attrs), rtol=1e-5)


@pytest.mark.parametrize("cls", [GlobalAveragePool, GlobalMaxPool])
def test_global_reference_matches_onnxruntime(cls):
    x = np.random.default_rng(8).standard_normal((2, 13, 7, 5)).astype(np.float32)
    np.testing.assert_allclose(cls().reference([x])[0], ort_run(cls.op_type, [x]), rtol=1e-5, atol=1e-6)


# ---- import checks and shape errors ---------------------------------------------------------


def test_from_onnx_reads_attributes():
    op, keep = MaxPool.from_onnx(
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "storage_order": 0}, [None], "n", 13
    )
    assert op == MaxPool(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
    assert keep == (0,)


@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [2, 2, 2, 2]},  # 4-D pooling
        {"kernel_shape": [3, 3], "pads": [3, 0, 0, 0]},  # pad as large as the kernel
        {"kernel_shape": [3, 3], "dilations": [2, 2], "auto_pad": "SAME_UPPER"},
        {"kernel_shape": [3, 3], "auto_pad": "SAME"},
        {"kernel_shape": [3, 3], "strides": [2]},
    ],
)
def test_unsupported_attributes(attrs):
    with pytest.raises(UnsupportedOp, match="MaxPool"):
        MaxPool.from_onnx(attrs, [None], "pool1", 13)


def test_window_larger_than_input_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"\(1, 3, 4, 4\)"):
        MaxPool(kernel_shape=(5, 5)).infer([(1, 3, 4, 4)], [None])
    with pytest.raises(ShapeError, match=r"rank 4.*\(1, 3, 4\)"):
        MaxPool(kernel_shape=(2, 2)).infer([(1, 3, 4)], [None])


# ---- no allocation per call -----------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        MaxPool(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=1),
        AveragePool(kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), count_include_pad=1),
        AveragePool(kernel_shape=(2, 3), strides=(3, 2), dilations=(2, 1), pads=(1, 0, 0, 1)),
        GlobalAveragePool(),
        GlobalMaxPool(),
    ],
    ids=lambda op: op.op_type,
)
def test_no_numpy_allocation_per_call(op):
    x = np.random.default_rng(2).standard_normal((2, 24, 21, 19)).astype(np.float32)
    kernel, _ = run_in_arena(op, [x])
    assert_no_numpy_allocations(kernel)


@pytest.mark.parametrize(
    ("shape", "kernel", "strides", "pads", "ceil"),
    [
        ((1, 13, 14, 14), (3, 3), (1, 1), (1, 1, 1, 1), 1),  # GoogLeNet's branch pools: flat columns
        ((2, 3, 7, 9), (5, 5), (1, 1), (2, 2, 2, 2), 0),
        ((1, 24, 5, 5), (2, 2), (1, 1), (0, 0, 1, 1), 0),
        ((1, 1, 3, 3), (3, 3), (1, 1), (2, 0, 0, 2), 0),
        ((1, 3, 4, 17), (1, 3), (1, 1), (0, 1, 0, 1), 0),
        ((1, 13, 111, 111), (3, 3), (2, 2), (0, 0, 0, 0), 1),  # SqueezeNet's: strided columns, ceil
        ((1, 3, 112, 112), (3, 3), (2, 2), (1, 1, 1, 1), 0),  # ResNet's
        ((1, 24, 14, 14), (2, 2), (2, 2), (0, 0, 0, 0), 1),
        ((2, 3, 17, 13), (4, 3), (3, 2), (1, 0, 2, 1), 1),
    ],
)
def test_separable_maxpool(shape, kernel, strides, pads, ceil):
    op = MaxPool(kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=ceil)
    assert op.scratch_bytes([shape]) > 0
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    fn, (y,) = run_in_arena(op, [x])
    fn()
    np.testing.assert_array_equal(y, op.reference([x])[0])
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "ceil_mode": ceil}
    np.testing.assert_array_equal(y, ort_run("MaxPool", [x], **attrs))
    assert_no_numpy_allocations(fn)


@pytest.mark.parametrize("channels", [1, 3, 13, 24])
@pytest.mark.parametrize(
    ("batch", "size"),
    [
        (2, (1, 1)),
        (2, (1, 5)),
        (2, (5, 1)),
        (2, (2, 2)),
        (1, (7, 7)),
        (1, (14, 14)),
        (2, (9, 13)),
        (1, (50, 47)),
    ],
)
@pytest.mark.parametrize("ceil", [0, 1])
def test_maxpool_3x3_same(channels, batch, size, ceil):
    """GoogLeNet's stride-1 pools: chunks of whole planes (one, several, a partial last one, or a
    plane larger than a chunk), with every plane's border cells masked."""
    shape = (batch, channels, *size)
    op = MaxPool(kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), ceil_mode=ceil)
    assert op._same3(shape)
    tmp_floats, code_floats = op._same3_scratch(shape)
    assert op.scratch_bytes([shape]) == (tmp_floats + code_floats) * 4
    # At most one plane, or one chunk of small planes, beside the masks.
    assert tmp_floats - 2 <= max(size[0] * size[1], pool.SAME3_CHUNK)
    x = np.random.default_rng(channels).standard_normal(shape).astype(np.float32)
    fn, (y,) = run_in_arena(op, [x])
    y[...] = np.nan
    fn()
    np.testing.assert_array_equal(y, op.reference([x])[0])
    attrs = {"kernel_shape": (3, 3), "strides": (1, 1), "pads": (1, 1, 1, 1), "ceil_mode": ceil}
    np.testing.assert_array_equal(y, ort_run("MaxPool", [x], **attrs))
    assert_no_numpy_allocations(fn)


@pytest.mark.parametrize("channels", [1, 3, 13, 24])
@pytest.mark.parametrize(
    ("size", "kernel", "strides", "pads", "ceil"),
    [
        ((14, 14), (2, 2), (2, 2), (0, 0, 0, 0), 1),  # GoogLeNet's last pool
        ((27, 27), (3, 3), (2, 2), (0, 0, 0, 0), 1),  # SqueezeNet's
        ((28, 28), (3, 3), (2, 2), (0, 0, 0, 0), 1),  # GoogLeNet's: the ceil window has 2 columns
        ((33, 35), (3, 3), (2, 2), (1, 1, 1, 1), 0),  # ResNet's, odd
        ((9, 70), (3, 2), (1, 3), (0, 1, 2, 1), 1),  # a row wider than one span, stride 3
        ((13, 5), (2, 3), (3, 1), (1, 0, 0, 2), 1),
        ((4, 4), (3, 3), (1, 1), (1, 0, 0, 1), 0),  # stride 1 but not "same": the row kernel
    ],
)
def test_maxpool_rows_kernel(channels, size, kernel, strides, pads, ceil):
    """Whole 32-float spans spill into the next row except near the tensor's end."""
    shape = (1, channels, *size)
    op = MaxPool(kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=ceil)
    assert op._separable(shape) and not op._same3(shape)
    x = np.random.default_rng(channels).standard_normal(shape).astype(np.float32)
    fn, (y,) = run_in_arena(op, [x])
    y[...] = np.nan
    fn()
    np.testing.assert_array_equal(y, op.reference([x])[0])
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "ceil_mode": ceil}
    np.testing.assert_array_equal(y, ort_run("MaxPool", [x], **attrs))
    assert_no_numpy_allocations(fn)
