"""1-D and 3-D pooling, and global pools of any rank: kernels against their references, the references
against onnxruntime, and a 1-D model end to end (the 2-D kernels are tested in test_pool.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.pool import AveragePool, GlobalAveragePool, GlobalLpPool, GlobalMaxPool, LpPool, MaxPool
from tests.conftest import assert_model_matches_ort, make_model
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

POOLS = [(MaxPool, {}), (AveragePool, {"count_include_pad": 0}), (AveragePool, {"count_include_pad": 1})]


def random_geometries(rank, count, seed):
    """Attributes over kernel 1..4, stride 1..3, dilation 1..2, asymmetric pads, ceil_mode, on
    sizes 1..9 (size-1 axes included)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        k = tuple(int(v) for v in rng.integers(1, 5, size=rank))
        attrs = {
            "kernel_shape": k,
            "strides": tuple(int(v) for v in rng.integers(1, 4, size=rank)),
            "dilations": tuple(int(v) for v in rng.choice([1, 1, 2], size=rank)),
            "pads": tuple(int(rng.integers(0, k[i % rank])) for i in range(2 * rank)),
            "ceil_mode": int(rng.integers(0, 2)),
        }
        out.append((attrs, tuple(int(v) for v in rng.integers(1, 10, size=rank))))
    return out


def check_against_reference(op, x):
    kernel, (y,) = run_in_arena(op, [x])
    y[...] = np.nan  # every output cell must be written
    kernel()
    np.testing.assert_allclose(y, op.reference([x])[0], rtol=1e-5, atol=1e-6)


# ---- kernels vs references ------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize(("cls", "extra"), POOLS)
def test_pool_matches_reference(rank, cls, extra):
    rng = np.random.default_rng(rank)
    tested = 0
    for i, (attrs, size) in enumerate(random_geometries(rank, 50, seed=10 * rank)):
        op = cls(**attrs, **extra)
        shape = (1 + i % 2, (1, 3, 13)[i % 3], *size)
        try:
            op.infer([shape], [None])
        except ShapeError:
            continue  # window larger than the padded input
        check_against_reference(op, rng.standard_normal(shape).astype(np.float32))
        tested += 1
    assert tested > 20


@pytest.mark.parametrize(("cls", "extra"), POOLS)
@pytest.mark.parametrize("auto_pad", ["VALID", "SAME_UPPER", "SAME_LOWER"])
def test_3d_auto_pad_matches_reference(cls, extra, auto_pad):
    rng = np.random.default_rng(7)
    for k, s, size in [((3, 3, 3), (2, 2, 2), (5, 7, 9)), ((2, 1, 3), (2, 1, 3), (4, 1, 8))]:
        op = cls(kernel_shape=k, strides=s, auto_pad=auto_pad, **extra)
        check_against_reference(op, rng.standard_normal((2, 3, *size)).astype(np.float32))


@pytest.mark.parametrize("cls", [GlobalAveragePool, GlobalMaxPool])
@pytest.mark.parametrize("shape", [(2, 5, 1), (1, 3, 4, 1, 5), (2, 2, 3, 2, 2, 3)])
def test_global_pool_any_rank(cls, shape):
    op = cls()
    assert op.infer([shape], [None]) == [shape[:2] + (1,) * (len(shape) - 2)]
    check_against_reference(op, np.random.default_rng(1).standard_normal(shape).astype(np.float32))


def test_3d_average_divisors():
    """A 3-D window's divisor is its valid cells, or its cells inside the explicit pads."""
    x = np.ones((1, 1, 3, 3, 3), dtype=np.float32)
    attrs = {"kernel_shape": (2, 2, 2), "strides": (2, 2, 2), "pads": (1, 0, 0, 0, 0, 1)}
    kernel, (y,) = run_in_arena(AveragePool(**attrs), [x])
    kernel()
    assert (y == 1).all()
    kernel, (y,) = run_in_arena(AveragePool(count_include_pad=1, **attrs), [x])
    kernel()
    # Depth window 0 holds one pad of two cells, column window 1 one of two: 1/2, 1/2, 1/4.
    np.testing.assert_allclose(y[0, 0, :, 0], [[0.5, 0.25], [1.0, 0.5]])


# ---- references vs onnxruntime ----------------------------------------------------------------

ORT_3D = [
    (
        {"kernel_shape": [2, 3, 3], "strides": [2, 2, 1], "pads": [1, 0, 1, 0, 1, 2], "ceil_mode": 1},
        (5, 7, 6),
    ),
    ({"kernel_shape": [3, 3, 3], "pads": [1, 1, 1, 1, 1, 1]}, (4, 6, 6)),
    ({"kernel_shape": [1, 2, 2], "strides": [1, 2, 2], "dilations": [1, 2, 1]}, (1, 9, 8)),
    ({"kernel_shape": [3, 2, 2], "strides": [2, 2, 2], "auto_pad": "SAME_UPPER"}, (7, 5, 6)),
    ({"kernel_shape": [2, 1, 2], "strides": [2, 2, 2], "dilations": [2, 1, 1], "ceil_mode": 1}, (6, 1, 5)),
]
ORT_1D = [
    ({"kernel_shape": [4], "strides": [3], "pads": [1, 2], "ceil_mode": 1}, 15),
    ({"kernel_shape": [3], "strides": [2], "dilations": [2], "pads": [0, 2], "ceil_mode": 1}, 10),
    ({"kernel_shape": [2], "strides": [2], "auto_pad": "SAME_LOWER"}, 7),
    ({"kernel_shape": [1], "strides": [1]}, 1),
]


@pytest.mark.parametrize(("attrs", "size"), ORT_3D + [(a, (s,)) for a, s in ORT_1D])
@pytest.mark.parametrize(("cls", "extra"), POOLS)
def test_reference_matches_onnxruntime(cls, extra, attrs, size):
    x = np.random.default_rng(5).standard_normal((2, 3, *size)).astype(np.float32)
    if attrs.get("dilations") and cls is AveragePool:
        want = ort_run(cls.op_type, [x], opset=19, **attrs, **extra)  # dilations since opset 19
    else:
        want = ort_run(cls.op_type, [x], **attrs, **extra)
    got = cls(**attrs, **extra).reference([x])[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [GlobalAveragePool, GlobalMaxPool])
@pytest.mark.parametrize("shape", [(2, 13, 7), (1, 3, 2, 5, 4)])
def test_global_reference_matches_onnxruntime(cls, shape):
    x = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(cls().reference([x])[0], ort_run(cls.op_type, [x]), rtol=1e-5, atol=1e-6)


# ---- allocation, slicing, refusals ------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        MaxPool(kernel_shape=(3, 3, 3), strides=(2, 2, 2), pads=(1, 1, 1, 1, 1, 1), ceil_mode=1),
        MaxPool(kernel_shape=(2, 3, 3), strides=(1, 1, 1), pads=(0, 1, 1, 1, 1, 1)),  # 3x3 "same" planes
        AveragePool(kernel_shape=(2, 3, 3), strides=(2, 1, 1), pads=(1, 1, 1, 0, 1, 1), count_include_pad=1),
        MaxPool(kernel_shape=(3,), strides=(2,), pads=(1, 1)),
        AveragePool(kernel_shape=(4,), strides=(1,), pads=(2, 1)),
        GlobalAveragePool(),
        GlobalMaxPool(),
    ],
    ids=lambda op: f"{op.op_type}{len(getattr(op, 'kernel_shape', ())) or 'global'}",
)
def test_no_numpy_allocation_per_call(op):
    rank = len(getattr(op, "kernel_shape", ())) or 3
    x = np.random.default_rng(2).standard_normal((2, 5, *(9, 11, 10)[:rank])).astype(np.float32)
    kernel, _ = run_in_arena(op, [x])
    assert_no_numpy_allocations(kernel)


def test_pools_are_never_sliced():
    shape = (1, 4, 6, 8, 8)
    for op in (MaxPool(kernel_shape=(2, 2, 2)), AveragePool(kernel_shape=(2, 2, 2)), GlobalAveragePool()):
        assert op.slice_axes([shape], op.infer([shape], [None])) == ()


def test_refusals_name_the_op_and_shapes():
    with pytest.raises(UnsupportedOp, match=r"MaxPool.*4-D|only 1-D, 2-D and 3-D"):
        MaxPool.from_onnx({"kernel_shape": [2, 2, 2, 2]}, [None], "pool4d", 13)
    with pytest.raises(UnsupportedOp, match=r"AveragePool.*does not match"):
        AveragePool.from_onnx({"kernel_shape": [2, 2, 2], "strides": [1, 1]}, [None], "p", 13)
    with pytest.raises(ShapeError, match=r"rank 5.*\(1, 3, 4, 4\)"):
        MaxPool(kernel_shape=(2, 2, 2)).infer([(1, 3, 4, 4)], [None])
    with pytest.raises(ShapeError, match=r"GlobalMaxPool.*\(1, 3\)"):
        GlobalMaxPool().infer([(1, 3)], [None])


# ---- a 1-D model end to end ----------------------------------------------------------------


def test_conv1d_pool1d_model_matches_onnxruntime(tmp_path):
    """Conv1d -> MaxPool1d -> AveragePool1d, as a voice-activity front end."""
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((16, 3, 5)) * 0.2).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[2, 2], strides=[1]),
        helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[3], strides=[2], pads=[1, 0], ceil_mode=1),
        helper.make_node("AveragePool", ["m"], ["y"], kernel_shape=[4], strides=[3], pads=[0, 2]),
    ]

    model = make_model(nodes, [("x", [1, 3, 101])], [("y", None)], [("w", w), ("b", b)], opset=17)
    assert_model_matches_ort(model, {"x": rng.standard_normal((1, 3, 101)).astype(np.float32)}, tmp_path)


# ---- LpPool and GlobalLpPool ----------------------------------------------------------------

LP_CASES = [
    ({"kernel_shape": [3], "strides": [2], "pads": [1, 2], "p": 3}, (15,)),
    ({"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 2, 1], "p": 2}, (7, 6)),
    ({"kernel_shape": [2, 2], "dilations": [2, 1], "p": 1}, (5, 2)),
    ({"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER", "p": 4}, (5, 7)),
    ({"kernel_shape": [2, 2, 2], "strides": [1, 2, 2], "pads": [1, 0, 1, 0, 1, 1], "p": 2}, (3, 5, 4)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1, "p": 2}, (7, 7)),
]


@pytest.mark.parametrize(("attrs", "size"), LP_CASES)
def test_lp_pool_kernel_reference_and_onnxruntime(attrs, size):
    x = np.random.default_rng(9).standard_normal((2, 3, *size)).astype(np.float32)
    op = LpPool(**attrs)
    check_against_reference(op, x)
    want = ort_run("LpPool", [x], opset=18, **attrs)
    np.testing.assert_allclose(op.reference([x])[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 5, 7), (1, 3, 2, 5, 4)])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_global_lp_pool_kernel_reference_and_onnxruntime(shape, p):
    x = np.random.default_rng(10).standard_normal(shape).astype(np.float32)
    check_against_reference(GlobalLpPool(p=p), x)
    want = ort_run("GlobalLpPool", [x], p=p)
    np.testing.assert_allclose(GlobalLpPool(p=p).reference([x])[0], want, rtol=1e-5, atol=1e-6)


def test_lp_pool_allocates_nothing_and_refuses_clearly():
    x = np.random.default_rng(2).standard_normal((2, 5, 9, 11)).astype(np.float32)
    kernel, _ = run_in_arena(LpPool(kernel_shape=(3, 3), pads=(1, 1, 1, 1), p=3), [x])
    assert_no_numpy_allocations(kernel)
    kernel, _ = run_in_arena(GlobalLpPool(), [x])
    assert_no_numpy_allocations(kernel)
    with pytest.raises(UnsupportedOp, match=r"LpPool.*p=0"):
        LpPool.from_onnx({"kernel_shape": [2], "p": 0}, [None], "lp", 18)
    # A ceil_mode window past the pads would count cells beyond them: refused, naming the input.
    with pytest.raises(UnsupportedOp, match=r"past the pads.*\(1, 1, 5\)"):
        LpPool(kernel_shape=(2,), strides=(2,), ceil_mode=1).infer([(1, 1, 5)], [None])
