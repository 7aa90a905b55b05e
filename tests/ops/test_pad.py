"""Pad: constant/reflect/edge/wrap, pads as attribute (<= 10) or constant input (11+), axes (18+),
negative pads cropping, any dtype."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.pad import Pad
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena
from tests.ops.test_slice import DTYPES, data

MODES = ["constant", "reflect", "edge", "wrap"]
CASES = [
    ((5,), (2, 3)),
    ((3, 4), (1, 2, 2, 1)),
    ((1, 3, 13, 24), (0, 0, 1, 2, 0, 0, 3, 1)),  # a conv's spatial padding
    ((2, 3, 4, 5), (0, 1, 1, -1, 1, 0, -2, 3)),  # crops and pads at once
    ((2, 2, 3, 2, 4), (1, 0, 2, 0, 0, 0, 1, 0, 1, 3)),
    ((3, 2), (7, 0, 5, 0)),  # wrap repeats; reflect refuses (as ONNX Runtime)
]


def run_and_check(op, x):
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    want = op.reference([x])[0]
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, want)
    assert_no_numpy_allocations(kernel)
    return want


@pytest.mark.parametrize(
    ("mode", "shape", "pads"),
    # A reflection wider than its axis is refused, as ONNX Runtime does (test_pad_refusals).
    [(m, s, p) for s, p in CASES for m in MODES if m != "reflect" or max(p) < min(s)],
)
def test_pad_matches_reference_and_onnxruntime(mode, shape, pads):
    x = data(shape, "float32")
    consts = [np.array(pads, np.int64), np.array(1.5, np.float32)]
    op, keep = Pad.from_onnx({"mode": mode}, [None, *consts], "p", 13)
    assert keep == (0,)
    want = run_and_check(op, x)
    np.testing.assert_array_equal(
        want, ort_run("Pad", [x], consts if mode == "constant" else consts[:1], opset=19, mode=mode)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_pad_takes_every_dtype(dtype, mode):
    run_and_check(Pad(mode=mode, pads=(1, 2, 2, 1), value=1), data((3, 4), dtype))


def test_pad_axes_and_the_opset_2_attributes():
    x = data((2, 3, 4), "int64")
    pads, value, axes = np.array([1, 2, 0, 3], np.int64), np.array(7, np.int64), np.array([-1, 0], np.int64)
    op, _ = Pad.from_onnx({}, [None, pads, value, axes], "p", 18)
    want = run_and_check(op, x)
    np.testing.assert_array_equal(want, ort_run("Pad", [x], [pads, value, axes], opset=18))
    old, _ = Pad.from_onnx({"mode": "constant", "pads": [0, 1, 2, 0, 3, 1], "value": 2.0}, [None], "p", 10)
    y = data((2, 3, 4))
    np.testing.assert_array_equal(
        run_and_check(old, y),
        ort_run("Pad", [y], opset=10, mode="constant", pads=[0, 1, 2, 0, 3, 1], value=2.0),
    )


def test_pad_refusals():
    with pytest.raises(UnsupportedOp, match=r"pads \(input 1\) is not a constant"):
        Pad.from_onnx({}, [None, None], "p", 13)
    with pytest.raises(UnsupportedOp, match="mode 'mirror'"):
        Pad.from_onnx({"mode": "mirror"}, [None, np.zeros(2, np.int64)], "p", 13)
    with pytest.raises(ShapeError, match="reflect pads of 3 on axis 0 of \\(3,\\) exceed the 2"):
        Pad(mode="reflect", pads=(3, 0)).infer([(3,)], [None])
    with pytest.raises(ShapeError, match="crop axis 1 of \\(2, 3\\) to nothing"):
        Pad(pads=(0, -2, 0, -1)).infer([(2, 3)], [None])
    with pytest.raises(ShapeError, match="do not fit shape"):
        Pad(pads=(1, 1)).infer([(2, 3)], [None])
    with pytest.raises(DtypeRefused, match="float64"):
        Pad(pads=(1, 1)).output_dtypes(["float64"])
    assert Pad(pads=(1, 1)).slice_axes([(3,)], [(5,)]) == ()
