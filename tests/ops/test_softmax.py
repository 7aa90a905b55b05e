"""Softmax, LogSoftmax and Hardmax kernels against their references, references against
onnxruntime, and the vectorized exp against numpy's."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from flexnnd.errors import ShapeError
from flexnnd.ops.softmax import Hardmax, LogSoftmax, Softmax, exp_nonpos
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

OPS = [Softmax, LogSoftmax, Hardmax]


def _run(op, x):
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    return y


@pytest.mark.parametrize("cls", OPS, ids=lambda c: c.op_type)
@pytest.mark.parametrize(
    "shape", [(2, 13, 5, 7), (2, 24, 3, 1), (2, 1, 7, 3), (3, 1000), (5,), (1, 2, 3, 2, 17)]
)
def test_matches_reference_on_every_axis(cls, shape):
    x = (np.random.default_rng(3).standard_normal(shape) * 10).astype(np.float32)
    for axis in range(-len(shape), len(shape)):
        for coerce_2d in (False, True):
            op = cls(axis=axis, coerce_2d=coerce_2d)
            np.testing.assert_allclose(_run(op, x), op.reference([x])[0], rtol=1e-5, atol=1e-6)


def test_hardmax_takes_the_first_largest():
    x = np.array([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(_run(Hardmax(), x), [[0, 1, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(_run(Hardmax(axis=0), x), [[1, 1, 1, 1], [0, 0, 0, 0]])
    nan = np.array([[5.0, np.nan, 7.0, np.nan], [7.0, 1.0, 7.0, 2.0]], dtype=np.float32)
    for op in (Hardmax(), Hardmax(axis=0)):  # the rows kernel and the strided one
        np.testing.assert_array_equal(_run(op, nan), op.reference([nan])[0])
    np.testing.assert_array_equal(_run(Hardmax(), nan), [[0, 1, 0, 0], [1, 0, 0, 0]])


def test_softmax_is_numerically_stable():
    x = np.array([[1000.0, 1000.0, -1000.0], [-1e30, 0.0, 1e30]], dtype=np.float32)
    np.testing.assert_allclose(_run(Softmax(), x), [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], atol=1e-7)
    np.testing.assert_allclose(
        _run(LogSoftmax(), x)[0], [-np.log(2), -np.log(2), -2000 - np.log(2)], rtol=1e-6
    )


def test_masked_and_nan_rows():
    """-inf (an attention mask) gives exactly 0; a NaN spreads over its row only."""
    x = np.array([[0.0, -np.inf, 1.0, -np.inf], [0.0, np.nan, 1.0, 2.0]], dtype=np.float32)
    for op in (Softmax(), Softmax(axis=0, coerce_2d=False)):
        y = _run(op, x)
        with np.errstate(invalid="ignore"):
            want = op.reference([x])[0]
        np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
        np.testing.assert_allclose(y[~np.isnan(y)], want[~np.isnan(want)], rtol=1e-6, atol=0)
    assert _run(Softmax(), x)[0, 1] == 0.0


@numba.njit
def _exp_all(x, y):
    for i in range(x.size):
        y[i] = exp_nonpos(x[i])


def test_vectorized_exp_is_accurate():
    x = np.concatenate([np.linspace(-90, 0, 200_001), [-np.inf, -87.3, -1e-30, 0.0]]).astype(np.float32)
    y = np.empty_like(x)
    _exp_all(x, y)
    want = np.exp(x.astype(np.float64))
    normal = want >= np.finfo(np.float32).tiny
    np.testing.assert_allclose(y[normal], want[normal], rtol=4e-7, atol=0)
    assert np.all(y[~normal] <= np.finfo(np.float32).tiny)
    nan = np.array([np.nan], dtype=np.float32)
    _exp_all(nan, nan)
    assert np.isnan(nan[0])


@pytest.mark.parametrize("cls", OPS, ids=lambda c: c.op_type)
def test_opset_semantics_from_onnx(cls):
    op, keep = cls.from_onnx({}, [None], "n", 13)
    assert (op.axis, op.coerce_2d, keep) == (-1, False, (0,))
    op, _ = cls.from_onnx({}, [None], "n", 11)
    assert (op.axis, op.coerce_2d) == (1, True)
    op, _ = cls.from_onnx({"axis": 2}, [None], "n", 11)
    assert (op.axis, op.coerce_2d) == (2, True)
    assert cls.from_dict(op.to_dict()) == op


@pytest.mark.parametrize("cls", OPS, ids=lambda c: c.op_type)
@pytest.mark.parametrize(
    ("opset", "axis"), [(13, None), (13, 1), (13, -3), (13, 0), (11, None), (11, 2), (11, -1), (11, 0)]
)
def test_reference_matches_onnxruntime(cls, opset, axis):
    x = (np.random.default_rng(4).standard_normal((2, 3, 5, 4)) * 4).astype(np.float32)
    attrs = {} if axis is None else {"axis": axis}
    op, _ = cls.from_onnx(attrs, [None], "n", opset)
    want = ort_run(cls.op_type, [x], opset=opset, **attrs)
    np.testing.assert_allclose(op.reference([x])[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_run(op, x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", OPS, ids=lambda c: c.op_type)
def test_bad_axis(cls):
    with pytest.raises(ShapeError, match=r"axis 3.*\(2, 5, 3\)"):
        cls(axis=3).infer([(2, 5, 3)], [None])
    with pytest.raises(ShapeError, match=r"axis -4"):
        cls(axis=-4).infer([(2, 5, 3)], [None])


def test_not_sliced_and_logsoftmax_scratch():
    for cls in OPS:
        assert cls().slice_axes([(2, 3, 4)], [(2, 3, 4)]) == ()
    assert LogSoftmax().scratch_bytes([(2, 3, 4)]) == 0
    assert LogSoftmax(axis=1).scratch_bytes([(2, 3, 4)]) == 2 * 4 * 4
    x, y = np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="need 8"):
        LogSoftmax(axis=1).bind([x], [y], None)


@pytest.mark.parametrize(
    "op",
    [
        Softmax(),
        Softmax(axis=1),
        Softmax(axis=1, coerce_2d=True),
        LogSoftmax(),
        LogSoftmax(axis=1),
        Hardmax(axis=2),
    ],
)
def test_allocates_nothing_per_call(op):
    x = np.random.default_rng(7).standard_normal((2, 24, 13, 17)).astype(np.float32)
    kernel, _ = run_in_arena(op, [x])
    assert_no_numpy_allocations(kernel)


def test_model_with_all_three_matches_onnxruntime(tmp_path):
    from onnx import helper

    from tests.conftest import assert_model_matches_ort, make_model

    nodes = [
        helper.make_node("Softmax", ["x"], ["s"], axis=-1),
        helper.make_node("LogSoftmax", ["s"], ["l"], axis=1),
        helper.make_node("Hardmax", ["l"], ["y"], axis=2),
    ]
    model = make_model(nodes, [("x", [1, 12, 19, 19])], [("y", [1, 12, 19, 19])], opset=13)
    x = (np.random.default_rng(8).standard_normal((1, 12, 19, 19)) * 3).astype(np.float32)
    assert_model_matches_ort(model, {"x": x}, tmp_path)
