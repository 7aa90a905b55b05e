"""Softmax kernels against their reference, the reference against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.errors import ShapeError
from flexnnd.ops.softmax import Softmax
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena


@pytest.mark.parametrize("shape", [(2, 13, 5, 7), (2, 24, 3, 1), (2, 1, 7, 3), (3, 1000)])
def test_softmax_matches_reference_on_every_axis(shape):
    x = (np.random.default_rng(3).standard_normal(shape) * 10).astype(np.float32)
    for axis in range(-len(shape), len(shape)):
        for coerce_2d in (False, True):
            op = Softmax(axis=axis, coerce_2d=coerce_2d)
            kernel, (y,) = run_in_arena(op, [x])
            kernel()
            np.testing.assert_allclose(y, op.reference([x])[0], rtol=1e-5, atol=1e-7)


def test_softmax_is_numerically_stable():
    x = np.array([[1000.0, 1000.0, -1000.0], [-1e30, 0.0, 1e30]], dtype=np.float32)
    kernel, (y,) = run_in_arena(Softmax(), [x])
    kernel()
    np.testing.assert_allclose(y, [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], atol=1e-7)


def test_softmax_opset_semantics_from_onnx():
    op, keep = Softmax.from_onnx({}, [None], "sm", 13)
    assert (op.axis, op.coerce_2d, keep) == (-1, False, (0,))
    op, _ = Softmax.from_onnx({}, [None], "sm", 11)
    assert (op.axis, op.coerce_2d) == (1, True)
    op, _ = Softmax.from_onnx({"axis": 2}, [None], "sm", 11)
    assert (op.axis, op.coerce_2d) == (2, True)
    assert Softmax.from_dict(op.to_dict()) == op


@pytest.mark.parametrize(
    ("opset", "axis"), [(13, None), (13, 1), (13, -3), (13, 0), (11, None), (11, 2), (11, -1)]
)
def test_softmax_reference_matches_onnxruntime(opset, axis):
    x = (np.random.default_rng(4).standard_normal((2, 3, 5, 4)) * 4).astype(np.float32)
    attrs = {} if axis is None else {"axis": axis}
    op, _ = Softmax.from_onnx(attrs, [None], "sm", opset)
    want = ort_run("Softmax", [x], opset=opset, **attrs)
    np.testing.assert_allclose(op.reference([x])[0], want, rtol=1e-5, atol=1e-7)


def test_softmax_bad_axis():
    with pytest.raises(ShapeError, match=r"axis 3.*\(2, 5, 3\)"):
        Softmax(axis=3).infer([(2, 5, 3)], [None])
    with pytest.raises(ShapeError, match=r"axis -4"):
        Softmax(axis=-4).infer([(2, 5, 3)], [None])


@pytest.mark.parametrize("op", [Softmax(), Softmax(axis=1), Softmax(axis=1, coerce_2d=True)])
def test_softmax_allocates_nothing_per_call(op):
    x = np.random.default_rng(7).standard_normal((2, 24, 13, 17)).astype(np.float32)
    kernel, _ = run_in_arena(op, [x])
    assert_no_numpy_allocations(kernel)
