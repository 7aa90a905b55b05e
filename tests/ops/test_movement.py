"""Tile, Expand, DepthToSpace/SpaceToDepth, Trilu, CumSum, and the strided copy under them all."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.movement import CumSum, DepthToSpace, Expand, SpaceToDepth, Tile, Trilu
from flexnnd.ops.strided import Copy, flat_bits
from tests.conftest import assert_model_matches_ort, make_model
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
    ("op_type", "inputs", "attrs", "why"),
    [
        ("Slice", ["x", "starts", "ends", "k"], {}, r"input 3 \('k'\) must be a constant"),
        ("Split", ["x", "k"], {"axis": 0}, r"input 1 \('k'\) must be a constant"),
        ("Pad", ["x", "pads", "", "k"], {}, r"input 3 \('k'\) must be a constant"),
        ("Trilu", ["x", "k"], {}, r"input 1 \('k'\) must be a constant"),
    ],
)
def test_an_optional_parameter_computed_at_run_time_is_refused_at_import(op_type, inputs, attrs, why):
    """An optional parameter input reads as absent in from_onnx; the importer refuses it by name."""
    from flexnnd.graph.onnx_import import import_onnx

    graph = helper.make_graph(
        [helper.make_node(op_type, inputs, ["y"], **attrs)],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),  # a graph input: known at run time
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array([0], np.int64), "starts"),
            numpy_helper.from_array(np.array([1], np.int64), "ends"),
            numpy_helper.from_array(np.array([0, 0], np.int64), "pads"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    with pytest.raises(UnsupportedOp, match=rf"{op_type}.*{why}"):
        import_onnx(model)


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


# ---- small models, end to end against ONNX Runtime ------------------------------------------------


def conv(name, x, y, cin, cout, k=1, group=1, seed=0):
    """A Conv node and its weights (fixed seed), padding to keep the size."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin * k * k / group)).astype(np.float32)
    b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    node = helper.make_node(
        "Conv",
        [x, f"{name}_w", f"{name}_b"],
        [y],
        kernel_shape=[k, k],
        pads=[k // 2] * 4,
        group=group,
        name=name,
    )
    return node, [(f"{name}_w", w), (f"{name}_b", b)]


@pytest.mark.parametrize("opset", [13, 18])
def test_shufflenet_v2_block_matches_onnxruntime(opset, tmp_path):
    """Conv -> Split on channels -> (identity | 1x1, depthwise 3x3, 1x1) -> Concat -> channel shuffle."""
    c, h = 24, 14
    nodes, inits = [], []
    for node, w in (
        conv("stem", "x", "t0", c, c, seed=1),
        conv("pw1", "b0", "b1", c // 2, c // 2, seed=2),
        conv("dw", "b1r", "b2", c // 2, c // 2, k=3, group=c // 2, seed=3),
        conv("pw2", "b2", "b3", c // 2, c // 2, seed=4),
    ):
        nodes.append(node)
        inits += w
    if opset >= 18:
        split = helper.make_node("Split", ["t"], ["a", "b0"], axis=1, num_outputs=2)
    else:
        split = helper.make_node("Split", ["t", "halves"], ["a", "b0"], axis=1)
        inits.append(("halves", np.array([c // 2, c // 2], np.int64)))
    inits += [
        ("groups", np.array([1, 2, c // 2, h, h], np.int64)),
        ("flat", np.array([1, c, h, h], np.int64)),
    ]
    nodes += [
        helper.make_node("Relu", ["t0"], ["t"]),
        split,
        helper.make_node("Relu", ["b1"], ["b1r"]),
        helper.make_node("Relu", ["b3"], ["b3r"]),
        helper.make_node("Concat", ["a", "b3r"], ["cat"], axis=1),
        helper.make_node("Reshape", ["cat", "groups"], ["g"]),
        helper.make_node("Transpose", ["g"], ["gt"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["gt", "flat"], ["y"]),
    ]
    # Order matters only to the reader: the importer sorts the nodes.
    model = make_model(nodes, [("x", [1, c, h, h])], [("y", [1, c, h, h])], inits, opset=opset)
    x = np.random.default_rng(0).standard_normal((1, c, h, h)).astype(np.float32)
    assert_model_matches_ort(model, {"x": x}, tmp_path)


def test_yolo_style_head_matches_onnxruntime(tmp_path):
    """Conv -> per-anchor rows -> Slice/Split into xy, wh, scores -> Sigmoid/Mul -> Concat on the last axis."""
    anchors, fields, h = 3, 7, 8
    stem, weights = conv("head", "x", "p", 16, anchors * fields, seed=5)
    inits = [
        *weights,
        ("rows", np.array([1, anchors, fields, h * h], np.int64)),
        ("out", np.array([1, anchors * h * h, fields], np.int64)),
        ("xy_start", np.array([0], np.int64)),
        ("xy_end", np.array([2], np.int64)),
        ("last", np.array([-1], np.int64)),
        ("rest", np.array([2, 3], np.int64)),
        ("to_end", np.array([np.iinfo(np.int64).max], np.int64)),
        ("two", np.array(2.0, np.float32)),
    ]
    nodes = [
        stem,
        helper.make_node("Reshape", ["p", "rows"], ["r"]),
        helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 1, 3, 2]),  # [1, 3, 64, 7]
        helper.make_node("Slice", ["rt", "xy_start", "xy_end", "last"], ["xy_raw"]),
        helper.make_node("Slice", ["rt", "xy_end", "to_end", "last"], ["tail"]),
        helper.make_node("Split", ["tail", "rest"], ["wh_raw", "cls_raw"], axis=-1),
        helper.make_node("Sigmoid", ["xy_raw"], ["xy_s"]),
        helper.make_node("Mul", ["xy_s", "two"], ["xy"]),
        helper.make_node("Sigmoid", ["wh_raw"], ["wh_s"]),
        helper.make_node("Mul", ["wh_s", "wh_s"], ["wh"]),
        helper.make_node("Sigmoid", ["cls_raw"], ["cls"]),
        helper.make_node("Concat", ["xy", "wh", "cls"], ["cat"], axis=-1),
        helper.make_node("Reshape", ["cat", "out"], ["y"]),
    ]
    model = make_model(nodes, [("x", [1, 16, h, h])], [("y", [1, anchors * h * h, fields])], inits, opset=13)
    x = np.random.default_rng(1).standard_normal((1, 16, h, h)).astype(np.float32)
    assert_model_matches_ort(model, {"x": x}, tmp_path)


def test_integer_tensors_move_end_to_end(tmp_path):
    """int64 token ids through Slice, Pad, Tile, Concat, Trilu and CumSum, and a bool mask through
    Expand and Transpose: non-float tensors as inputs, intermediates and outputs."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 9])
    mask = helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 9])
    outs = [
        helper.make_tensor_value_info("y", TensorProto.INT64, None),
        helper.make_tensor_value_info("m", TensorProto.BOOL, None),
    ]
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(np.array([0, 2, 0, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array(5, np.int64), "pad_value"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "reps"),
        numpy_helper.from_array(np.array(1, np.int64), "axis"),
        numpy_helper.from_array(np.array([3, 1, 9], np.int64), "wide"),
    ]
    nodes = [
        helper.make_node("Slice", ["ids", "one", "minus_one", "one"], ["inner"]),  # [2, 7]
        helper.make_node("Pad", ["inner", "pads", "pad_value"], ["padded"]),  # [2, 10]
        helper.make_node("Tile", ["inner", "reps"], ["tiled"]),  # [2, 14]
        helper.make_node("Concat", ["padded", "tiled"], ["cat"], axis=1),  # [2, 24]
        helper.make_node("Trilu", ["cat", "one"], ["upper"]),
        helper.make_node("CumSum", ["upper", "axis"], ["y"], reverse=1),
        helper.make_node("Expand", ["mask", "wide"], ["wide_mask"]),  # [3, 1, 9]
        helper.make_node("Transpose", ["wide_mask"], ["m"], perm=[2, 1, 0]),
    ]
    graph = helper.make_graph(nodes, "ints", [ids, mask], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    rng = np.random.default_rng(2)
    feeds = {
        "ids": rng.integers(0, 1000, (2, 9)).astype(np.int64),
        "mask": rng.integers(0, 2, (1, 9)).astype(bool),
    }
    assert_model_matches_ort(model, feeds, tmp_path)
