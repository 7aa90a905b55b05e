"""Slice at run time: every opset's form, ONNX's clamping, negative steps, any dtype."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.slice import Slice
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

INT64_MAX, INT64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min
DTYPES = ["float32", "int64", "int32", "int16", "int8", "uint16", "uint8", "bool"]


def data(shape, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return rng.standard_normal(shape).astype(np.float32)
    return rng.integers(0, 100, shape).astype(dtype)


def ints(*values):
    return np.array(values, dtype=np.int64)


CASES = [
    # shape, starts, ends, axes, steps
    ((7,), (2,), (5,), None, None),
    ((7,), (-3,), (INT64_MAX,), None, None),
    ((7,), (-1,), (INT64_MIN,), None, (-1,)),  # the whole axis reversed
    ((7,), (100,), (-100,), None, (-2,)),  # clamped both ends
    ((3, 13, 24), (1, 2), (-1, 1000), (-2, 2), (1, 3)),
    ((3, 13, 24), (0, 20, 0), (3, 0, 1), (0, 2, 1), (2, -3, 1)),
    ((2, 1, 3, 5, 4), (1, -2), (INT64_MAX, -5), (3, -1), (1, -1)),
    ((1, 6, 5, 4), (2,), (6,), (1,), None),  # a YOLO head's channel band
]


@pytest.mark.parametrize(("shape", "starts", "ends", "axes", "steps"), CASES)
@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
def test_slice_matches_reference_and_onnxruntime(shape, starts, ends, axes, steps, dtype):
    consts = [ints(*starts), ints(*ends)]
    if axes is not None or steps is not None:
        consts.append(ints(*(axes if axes is not None else range(len(starts)))))
    if steps is not None:
        consts.append(ints(*steps))
    op, keep = Slice.from_onnx({}, [None, *consts], "s", 13)
    assert keep == (0,)
    x = data(shape, dtype)
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    want = op.reference([x])[0]
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(want, ort_run("Slice", [x], consts, opset=13))
    assert_no_numpy_allocations(kernel)


@pytest.mark.parametrize("dtype", DTYPES)
def test_slice_takes_every_dtype(dtype):
    op = Slice(starts=(1, -1), ends=(3, 0), axes=(0, 1), steps=(1, -1))
    x = data((4, 5), dtype, seed=3)
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    np.testing.assert_array_equal(y, x[1:3, :0:-1])


def test_opset_9_attributes_match_opset_13_inputs():
    old, _ = Slice.from_onnx({"starts": [1, 0], "ends": [3, -1], "axes": [1, 2]}, [None], "s", 9)
    new, _ = Slice.from_onnx({}, [None, ints(1, 0), ints(3, -1), ints(1, 2)], "s", 13)
    x = data((2, 4, 5))
    np.testing.assert_array_equal(old.reference([x])[0], new.reference([x])[0])
    np.testing.assert_array_equal(
        old.reference([x])[0], ort_run("Slice", [x], opset=9, starts=[1, 0], ends=[3, -1], axes=[1, 2])
    )
    assert Slice.from_dict(new.to_dict()) == new


def test_slice_refusals():
    with pytest.raises(UnsupportedOp, match=r"Slice.*ends \(input 2\) is not a constant"):
        Slice.from_onnx({}, [None, ints(0), None], "s", 13)
    with pytest.raises(UnsupportedOp, match=r"steps \(0,\) contain 0"):
        Slice.from_onnx({}, [None, ints(0), ints(1), ints(0), ints(0)], "s", 13)
    with pytest.raises(UnsupportedOp, match="differ in length"):
        Slice.from_onnx({}, [None, ints(0, 1), ints(1)], "s", 13)
    with pytest.raises(ShapeError, match=r"axis 3 is out of range.*\(2, 3\)"):
        Slice(starts=(0,), ends=(1,), axes=(3,)).infer([(2, 3)], [None])
    with pytest.raises(ShapeError, match="repeated"):
        Slice(starts=(0, 0), ends=(1, 1), axes=(1, -1)).infer([(2, 3)], [None])
    with pytest.raises(DtypeRefused, match="float64"):
        Slice(starts=(0,), ends=(1,)).output_dtypes(["float64"])


def test_slice_runs_whole():
    op = Slice(starts=(0,), ends=(1,))
    assert op.slice_axes([(4, 5)], [(1, 5)]) == ()
    assert op.cost_kind([(4, 5)]) == "memory"
