"""Split: sizes as attribute (opset <= 12) or constant input (13+), num_outputs (18+), any dtype."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.split import Split
from tests.ops.harness import arena_views, assert_no_numpy_allocations, ort_run, run_in_arena
from tests.ops.test_slice import DTYPES, data


def check_split(op, x, n):
    kernel, outs = run_in_arena(op, [x])
    kernel()
    want = op.reference([x])
    assert len(outs) == len(want) == n
    for got, ref in zip(outs, want, strict=True):
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, ref)
    assert_no_numpy_allocations(kernel)
    return want


@pytest.mark.parametrize(
    ("shape", "axis", "sizes"),
    [
        ((7,), 0, (3, 4)),
        ((1, 24, 5, 3), 1, (12, 12)),  # ShuffleNet's channel split
        ((2, 13, 5), -1, (1, 3, 1)),
        ((2, 3, 1, 4, 5), 3, (2, 1, 1)),
        ((3, 13), 0, (3,)),
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
def test_split_sizes_as_input_match_onnxruntime(shape, axis, sizes, dtype):
    split = np.array(sizes, np.int64)
    op, keep = Split.from_onnx({"axis": axis}, [None, split], "s", 13)
    assert keep == (0,) and op.split == sizes
    x = data(shape, dtype)
    want = check_split(op, x, len(sizes))
    got = ort_run("Split", [x], [split], opset=13, outputs=len(sizes), axis=axis)
    for a, b in zip(want, got if len(sizes) > 1 else [got], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("d", "n", "want"), [(7, 3, (3, 3, 1)), (6, 3, (2, 2, 2)), (5, 2, (3, 2)), (4, 1, (4,))]
)
def test_num_outputs_makes_an_uneven_last_chunk(d, n, want):
    op, _ = Split.from_onnx({"axis": 1, "num_outputs": n}, [None], "s", 18)
    assert [s[1] for s in op.infer([(2, d)], [None])] == list(want)
    x = data((2, d), "int32")
    refs = check_split(op, x, n)
    if n > 1:
        for a, b in zip(refs, ort_run("Split", [x], opset=18, outputs=n, axis=1, num_outputs=n), strict=True):
            np.testing.assert_array_equal(a, b)


def test_split_attribute_before_opset_13():
    op, _ = Split.from_onnx({"axis": 0, "split": [1, 2]}, [None], "s", 11)
    assert op.split == (1, 2)
    x = data((3, 4))
    for a, b in zip(
        check_split(op, x, 2), ort_run("Split", [x], opset=11, outputs=2, split=[1, 2]), strict=True
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_takes_every_dtype(dtype):
    check_split(Split(axis=-1, split=(2, 3)), data((3, 5), dtype), 2)


def test_only_the_outputs_named_are_computed():
    op = Split(axis=0, split=(1, 2, 3))
    x = data((6, 2))
    out_shapes = op.infer([x.shape], [None])[:2]
    src, first, second = arena_views([x.shape, *out_shapes])
    src[...] = x
    op.bind([src], [first, second], None)()
    np.testing.assert_array_equal(second, x[1:3])


def test_split_refusals():
    equal, _ = Split.from_onnx({"axis": 0}, [None], "s", 13)  # sizes from the node's outputs
    with pytest.raises(ShapeError, match="does not split equally among 0 outputs"):
        equal.infer([(6,)], [None])
    assert equal.for_outputs(3).infer([(6,)], [None]) == [(2,), (2,), (2,)]
    with pytest.raises(UnsupportedOp, match="negative"):
        Split.from_onnx({}, [None, np.array([3, -1], np.int64)], "s", 13)
    with pytest.raises(ShapeError, match=r"sizes \(2, 2\) do not add up to 5"):
        Split(split=(2, 2)).infer([(5, 3)], [None])
    with pytest.raises(ShapeError, match="cannot make 4 parts"):
        Split(num_outputs=4).infer([(3,)], [None])
    with pytest.raises(DtypeRefused, match="float64"):
        Split(split=(1,)).output_dtypes(["float64"])
    assert Split(split=(1,)).slice_axes([(1,)], [(1,)]) == ()
