"""Tile, Expand, DepthToSpace/SpaceToDepth, Trilu, CumSum, and the strided copy under them all."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.movement import CumSum, DepthToSpace, Expand, SpaceToDepth, Tile, Trilu
from flexnnd.ops.strided import Copy, flat_bits
from tests.ops.harness import arena_views, assert_no_numpy_allocations, ort_run, run_in_arena
from tests.ops.test_slice import DTYPES, data


def run_and_check(op, x):
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    want = op.reference([x])[0]
    assert y.dtype == x.dtype and want.dtype == x.dtype
    if x.dtype == np.float32:
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(y, want)
    assert_no_numpy_allocations(kernel)
    return want


def test_copy_enumerates_more_than_six_loops_in_blocks():
    x = data((2, 3, 2, 3, 2, 3, 2, 3), "int16")
    (src, dst) = arena_views([x.shape, x.shape[::-1]], ["int16", "int16"])
    src[...] = x
    a, b = flat_bits(src), flat_bits(dst)
    copy = Copy.between(a.reshape(x.shape).transpose(), a, b.reshape(dst.shape), b)
    assert copy.bases.shape == (6, 2)  # 8 loops: the outer two (2 x 3) enumerated at bind
    copy()
    np.testing.assert_array_equal(dst, x.transpose())


def test_copy_refuses_a_view_outside_its_buffer():
    a = np.zeros(8, np.uint32)
    outside = np.lib.stride_tricks.as_strided(a, (3,), (16,))
    with pytest.raises(ValueError, match=r"reaches \[0, 8\] of 8"):
        Copy.between(outside, a, a[:3], a)


# ---- Tile, Expand ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "repeats"),
    [((5,), (3,)), ((2, 3), (1, 4)), ((1, 3, 1, 2), (2, 1, 3, 2)), ((2, 1, 3, 2, 2), (2, 2, 1, 2, 3))],
)
@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
def test_tile_matches_onnxruntime(shape, repeats, dtype):
    x = data(shape, dtype)
    op, keep = Tile.from_onnx({}, [None, np.array(repeats, np.int64)], "t", 13)
    assert keep == (0,)
    want = run_and_check(op, x)
    np.testing.assert_array_equal(want, ort_run("Tile", [x], [np.array(repeats, np.int64)], opset=13))


@pytest.mark.parametrize(
    ("shape", "target"),
    [
        ((3, 1), (2, 1, 6)),
        ((1, 4), (3, 1)),
        ((2, 1, 3), (1,)),
        ((1,), (2, 3, 1, 5)),
        ((4, 1, 1, 2), (4, 3, 5, 2)),
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "int32", "uint8"])
def test_expand_broadcasts_both_ways_like_onnxruntime(shape, target, dtype):
    x = data(shape, dtype)
    op, keep = Expand.from_onnx({}, [None, np.array(target, np.int64)], "e", 13)
    assert keep == (0,)
    want = run_and_check(op, x)
    np.testing.assert_array_equal(want, ort_run("Expand", [x], [np.array(target, np.int64)], opset=13))


def test_tile_and_expand_refusals():
    with pytest.raises(UnsupportedOp, match=r"repeats \(input 1\) is not a constant"):
        Tile.from_onnx({}, [None, None], "t", 13)
    with pytest.raises(ShapeError, match=r"repeats \(2,\) do not fit shape \(2, 3\)"):
        Tile(repeats=(2,)).infer([(2, 3)], [None])
    with pytest.raises(UnsupportedOp, match=r"shape \(input 1\) is not a constant"):
        Expand.from_onnx({}, [None, None], "e", 13)
    with pytest.raises(ShapeError, match="do not broadcast"):
        Expand(shape=(4, 3)).infer([(2, 3)], [None])


# ---- DepthToSpace, SpaceToDepth -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize(("shape", "blocksize"), [((1, 8, 3, 5), 2), ((2, 27, 2, 1), 3), ((1, 4, 1, 1), 2)])
def test_depth_to_space_matches_onnxruntime(mode, shape, blocksize):
    x = data(shape)
    op, _ = DepthToSpace.from_onnx({"blocksize": blocksize, "mode": mode}, [None], "d", 13)
    want = run_and_check(op, x)
    np.testing.assert_array_equal(
        want, ort_run("DepthToSpace", [x], opset=13, blocksize=blocksize, mode=mode)
    )
    # SpaceToDepth in the same mode undoes it (ONNX Runtime runs only DCR SpaceToDepth).
    back = SpaceToDepth(blocksize=blocksize, mode=mode)
    np.testing.assert_array_equal(run_and_check(back, want), x)


@pytest.mark.parametrize(("shape", "blocksize"), [((1, 3, 4, 6), 2), ((2, 1, 3, 3), 3)])
@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_space_to_depth_matches_onnxruntime(shape, blocksize, dtype):
    x = data(shape, dtype)
    want = run_and_check(SpaceToDepth(blocksize=blocksize), x)
    # ONNX Runtime's SpaceToDepth takes floats only: the int64 result is compared on float32 input.
    got = ort_run("SpaceToDepth", [x.astype(np.float32)], opset=13, blocksize=blocksize)
    np.testing.assert_array_equal(want, got.astype(x.dtype))


def test_blocks_refusals():
    with pytest.raises(ShapeError, match=r"7 channels.*multiple of 2"):
        DepthToSpace(blocksize=2).infer([(1, 7, 2, 2)], [None])
    with pytest.raises(ShapeError, match=r"3x4.*multiple of 2"):
        SpaceToDepth(blocksize=2).infer([(1, 1, 3, 4)], [None])
    with pytest.raises(ShapeError, match="rank 4"):
        SpaceToDepth(blocksize=2).infer([(1, 4, 4)], [None])
    with pytest.raises(UnsupportedOp, match="mode 'XYZ'"):
        DepthToSpace.from_onnx({"blocksize": 2, "mode": "XYZ"}, [None], "d", 13)


# ---- Trilu ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [-7, -1, 0, 2, 9])
@pytest.mark.parametrize("shape", [(4, 5), (2, 6, 3), (2, 1, 3, 1, 4)])
def test_trilu_matches_onnxruntime(upper, k, shape):
    x = data(shape, "int64")
    op, keep = Trilu.from_onnx({"upper": upper}, [None, np.array(k, np.int64)], "t", 14)
    assert keep == (0,) and op.k == k
    want = run_and_check(op, x)
    np.testing.assert_array_equal(want, ort_run("Trilu", [x], [np.array(k, np.int64)], opset=14, upper=upper))


@pytest.mark.parametrize("dtype", DTYPES)
def test_trilu_takes_every_dtype(dtype):
    op, _ = Trilu.from_onnx({"upper": 0}, [None], "t", 14)
    run_and_check(op, data((3, 5), dtype))


def test_trilu_refusals():
    with pytest.raises(ShapeError, match=r"rank 2 or more.*\(5,\)"):
        Trilu().infer([(5,)], [None])
    with pytest.raises(UnsupportedOp, match=r"k \(input 1\) is not a constant"):
        Trilu.from_onnx({}, [None, None], "t", 14)


# ---- CumSum -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize(("shape", "axis"), [((7,), 0), ((3, 13, 5), 1), ((2, 3, 4), -1), ((4, 1, 3), 0)])
@pytest.mark.parametrize("dtype", ["float32", "int32", "int64"])
def test_cumsum_matches_onnxruntime(exclusive, reverse, shape, axis, dtype):
    x = data(shape, dtype)
    axis_const = np.array(axis, np.int32)
    op, keep = CumSum.from_onnx({"exclusive": exclusive, "reverse": reverse}, [None, axis_const], "c", 14)
    assert keep == (0,)
    want = run_and_check(op, x)
    got = ort_run("CumSum", [x], [axis_const], opset=14, exclusive=exclusive, reverse=reverse)
    np.testing.assert_allclose(want, got, rtol=1e-5, atol=1e-5)


def test_cumsum_refusals():
    with pytest.raises(UnsupportedOp, match=r"axis \(input 1\) is not a constant"):
        CumSum.from_onnx({}, [None, None], "c", 14)
    with pytest.raises(DtypeRefused, match="int8; CumSum takes float32, int32, int64"):
        CumSum().output_dtypes(["int8"])
    with pytest.raises(ShapeError, match="axis 2 is out of range"):
        CumSum(axis=2).infer([(3, 4)], [None])


@pytest.mark.parametrize(
    "op",
    [
        Tile(repeats=(2,)),
        Expand(shape=(2,)),
        DepthToSpace(blocksize=2),
        SpaceToDepth(blocksize=2),
        Trilu(),
        CumSum(),
    ],
    ids=lambda op: op.op_type,
)
def test_movement_ops_run_whole(op):
    assert op.slice_axes([(4, 4, 4, 4)], [(4, 4, 4, 4)]) == ()
    assert op.cost_kind([(4, 4, 4, 4)]) == "memory"
    assert Tile.from_dict(Tile(repeats=(2, 3)).to_dict()) == Tile(repeats=(2, 3))
