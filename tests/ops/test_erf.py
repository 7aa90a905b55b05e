"""Erf: its kernel against its reference on awkward shapes, its reference against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.errors import ShapeError
from flexnnd.ops.base import Part, op_class
from flexnnd.ops.erf import Erf
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

SHAPES = [(), (1,), (7,), (3, 1), (2, 13, 5, 7), (1, 24, 3, 3, 2)]


def values(shape, seed=0):
    """Normal values spread to +-8 (erf saturates near +-4), with its special points included."""
    x = (np.random.default_rng(seed).standard_normal(shape) * 3).astype(np.float32)
    flat = x.reshape(-1)
    flat[: min(flat.size, 4)] = np.array([0.0, -0.0, 8.0, -1e-6], np.float32)[: min(flat.size, 4)]
    return x


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_erf_matches_reference(shape):
    x = values(shape)
    kernel, (y,) = run_in_arena(Erf(), [x])
    kernel()
    np.testing.assert_allclose(y, Erf().reference([x])[0], rtol=1e-6, atol=1e-7)


def test_reference_matches_onnxruntime():
    x = values((2, 3, 5, 4), seed=1)
    np.testing.assert_allclose(Erf().reference([x])[0], ort_run("Erf", [x], opset=13), rtol=1e-6, atol=1e-7)


def test_kernel_allocates_nothing():
    kernel, _ = run_in_arena(Erf(), [values((2, 13, 5, 7))])
    assert_no_numpy_allocations(kernel)


def test_registered_never_sliced_priced_by_bytes():
    assert op_class("Erf") is Erf
    assert Erf.onnx_attribute_names() == frozenset()
    assert Erf().slice_axes([(2, 3)], [(2, 3)]) == ()
    assert Erf().cost_kind([(2, 3)]) == "memory"
    assert Erf().infer([(2, 3)], [None]) == [(2, 3)]


def test_refuses_parts_and_mismatched_outputs():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="not sliced"):
        Erf().bind([x], [x.copy()], None, Part("rows", 0, 1))
    with pytest.raises(ShapeError, match="output"):
        Erf().bind([x], [np.zeros((3, 2), np.float32)], None)
