"""Not/And/Or/Xor against numpy and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.errors import DtypeRefused
from flexnnd.ops.logical import And, Not, Or, Xor
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

SHAPES = [((2, 3, 4), (3, 1)), ((7,), ()), ((1, 2, 1, 3, 1), (2, 1, 5, 1, 1)), ((5, 1), (5, 1))]


@pytest.mark.parametrize("cls", [And, Or, Xor], ids=lambda c: c.op_type)
def test_binary_logical_matches_reference_and_onnxruntime(cls):
    rng = np.random.default_rng(0)
    for shape_a, shape_b in SHAPES:
        for a_shape, b_shape in ((shape_a, shape_b), (shape_b, shape_a)):
            a, b = rng.integers(0, 2, a_shape).astype(bool), rng.integers(0, 2, b_shape).astype(bool)
            kernel, (y,) = run_in_arena(cls(), [a, b])
            kernel()
            want = cls().reference([a, b])[0]
            np.testing.assert_array_equal(y, want)
            np.testing.assert_array_equal(want, ort_run(cls.op_type, [a, b]))


@pytest.mark.parametrize("shape", [(1,), (2, 13, 5, 7)])
def test_not_matches_onnxruntime(shape):
    x = np.random.default_rng(1).integers(0, 2, shape).astype(bool)
    kernel, (y,) = run_in_arena(Not(), [x])
    kernel()
    np.testing.assert_array_equal(y, ~x)
    np.testing.assert_array_equal(Not().reference([x])[0], ort_run("Not", [x]))


def test_refusals_and_slicing():
    for cls in (And, Or, Xor, Not):
        with pytest.raises(DtypeRefused, match="takes bool, not float32"):
            cls().output_dtypes(["float32"] * (1 if cls is Not else 2))
        assert cls().slice_axes([(2, 3)], [(2, 3)]) == ()


@pytest.mark.parametrize("op", [And(), Xor(), Not()], ids=lambda o: o.op_type)
def test_logical_allocates_nothing_per_call(op):
    rng = np.random.default_rng(2)
    xs = [rng.integers(0, 2, (2, 24, 29, 31)).astype(bool)]
    if op.op_type != "Not":
        xs.append(rng.integers(0, 2, (24, 1, 31)).astype(bool))
    kernel, _ = run_in_arena(op, xs)
    assert_no_numpy_allocations(kernel)
