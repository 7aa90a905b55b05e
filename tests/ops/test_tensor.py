"""Tensor plumbing ops: alias ops' shapes and import, Concat and Transpose kernels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.tensor import (
    Concat,
    Dropout,
    Flatten,
    Identity,
    Reshape,
    Squeeze,
    Transpose,
    Unsqueeze,
)
from tests.ops.harness import arena_views, assert_no_numpy_allocations, ort_run, run_in_arena


def random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---- Reshape ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "target", "allowzero", "want"),
    [
        ((2, 3, 4), (6, -1), 0, (6, 4)),
        ((2, 3, 4), (0, -1), 0, (2, 12)),
        ((2, 3, 4), (0, 0, 2, 2), 0, (2, 3, 2, 2)),
        ((2, 3, 4), (-1,), 0, (24,)),
        ((1, 13, 1, 1), (1, -1), 0, (1, 13)),
        ((0, 3), (3, 0), 1, (3, 0)),
    ],
)
def test_reshape_shapes(src, target, allowzero, want):
    op, keep = Reshape.from_onnx({"allowzero": allowzero}, [None, np.array(target, np.int64)], "r", 14)
    assert keep == (0,)
    assert op.shape == target
    assert op.infer([src], [None]) == [want]
    assert Reshape.from_dict(op.to_dict()) == op


@pytest.mark.parametrize(
    ("src", "target", "message"),
    [
        ((2, 3, 4), (5, -1), r"\(2, 3, 4\) to \(5, -1\)"),
        ((2, 3, 4), (-1, -1), "at most one -1"),
        ((2, 3, 4), (7, 4), r"24 elements vs 28"),
        ((2, 3), (0, 3, 0), "position 2"),
        ((2, 3), (2, -2), "negative"),
    ],
)
def test_bad_reshape(src, target, message):
    with pytest.raises(ShapeError, match=message):
        Reshape(shape=target).infer([src], [None])


def test_reshape_needs_a_constant_shape():
    with pytest.raises(UnsupportedOp, match=r"Reshape.*not a constant"):
        Reshape.from_onnx({}, [None, None], "r", 14)


def test_reshape_reference_matches_onnxruntime():
    x = random((2, 3, 4))
    target = np.array([0, -1, 2], np.int64)
    op, _ = Reshape.from_onnx({}, [None, target], "r", 14)
    np.testing.assert_array_equal(op.reference([x])[0], ort_run("Reshape", [x], [target]))


# ---- Flatten, Squeeze, Unsqueeze, Identity, Dropout ------------------------------------------


@pytest.mark.parametrize(
    ("axis", "want"),
    [(0, (1, 120)), (1, (2, 60)), (2, (6, 20)), (4, (120, 1)), (-1, (24, 5)), (-4, (1, 120))],
)
def test_flatten_shapes(axis, want):
    assert Flatten(axis=axis).infer([(2, 3, 4, 5)], [None]) == [want]


def test_flatten_bad_axis():
    with pytest.raises(ShapeError, match=r"axis 5.*\(2, 3, 4, 5\)"):
        Flatten(axis=5).infer([(2, 3, 4, 5)], [None])


def test_squeeze_and_unsqueeze_across_opsets():
    # opset 11: axes is an attribute; opset 13: a constant input.
    old, keep_old = Squeeze.from_onnx({"axes": [1, -1]}, [None], "s", 11)
    new, keep_new = Squeeze.from_onnx({}, [None, np.array([1, -1], np.int64)], "s", 13)
    assert old == new and keep_old == keep_new == (0,)
    assert new.infer([(2, 1, 3, 1)], [None]) == [(2, 3)]
    everything, _ = Squeeze.from_onnx({}, [None], "s", 13)
    assert everything.infer([(1, 2, 1, 3, 1)], [None]) == [(2, 3)]
    op, _ = Unsqueeze.from_onnx({}, [None, np.array([0, -1], np.int64)], "u", 13)
    assert op.infer([(2, 3)], [None]) == [(1, 2, 3, 1)]
    op, _ = Unsqueeze.from_onnx({"axes": [1, 3]}, [None], "u", 11)
    assert op.infer([(2, 3)], [None]) == [(2, 1, 3, 1)]


def test_squeeze_and_unsqueeze_errors():
    with pytest.raises(ShapeError, match=r"\(2, 3, 1\)"):
        Squeeze(axes=(1,)).infer([(2, 3, 1)], [None])
    with pytest.raises(ShapeError, match="axis 3"):
        Squeeze(axes=(3,)).infer([(2, 3, 1)], [None])
    with pytest.raises(ShapeError, match="repeated"):
        Unsqueeze(axes=(0, -4)).infer([(2, 3)], [None])
    with pytest.raises(UnsupportedOp, match="axes is not a constant"):
        Unsqueeze.from_onnx({}, [None, None], "u", 13)
    with pytest.raises(UnsupportedOp, match="axes is missing"):
        Unsqueeze.from_onnx({}, [None], "u", 13)


def test_squeeze_unsqueeze_flatten_references_match_onnxruntime():
    x = random((2, 1, 3, 1))
    axes = np.array([1, 3], np.int64)
    np.testing.assert_array_equal(Squeeze(axes=(1, 3)).reference([x])[0], ort_run("Squeeze", [x], [axes]))
    np.testing.assert_array_equal(Unsqueeze(axes=(1, 3)).reference([x])[0], ort_run("Unsqueeze", [x], [axes]))
    np.testing.assert_array_equal(Flatten(axis=-2).reference([x])[0], ort_run("Flatten", [x], axis=-2))


def test_dropout_is_identity_at_inference():
    op, keep = Dropout.from_onnx({"seed": 3}, [None, np.array(0.3, np.float32), np.array(False)], "d", 13)
    assert keep == (0,)
    assert op.infer([(2, 3)], [None]) == [(2, 3)]
    op, _ = Dropout.from_onnx({"ratio": 0.2}, [None], "d", 10)
    x = random((2, 3))
    np.testing.assert_array_equal(op.reference([x])[0], x)


def test_dropout_training_mode_is_refused():
    with pytest.raises(UnsupportedOp, match="training_mode is true"):
        Dropout.from_onnx({}, [None, None, np.array(True)], "d", 13)
    with pytest.raises(UnsupportedOp, match="training_mode is not a constant"):
        Dropout.from_onnx({}, [None, None, None], "d", 13)


@pytest.mark.parametrize(
    "op",
    [
        Identity(),
        Dropout(),
        Flatten(axis=2),
        Reshape(shape=(0, -1)),
        Squeeze(axes=(1,)),
        Unsqueeze(axes=(0,)),
    ],
    ids=lambda op: op.op_type,
)
def test_alias_ops_have_no_kernel(op):
    assert op.alias and op.flops([(2, 1, 3, 4)], [(1,)]) == 0
    x = random((2, 1, 3, 4))
    (shape,) = op.infer([x.shape], [None])
    (buf,) = arena_views([x.shape])
    buf[...] = x
    kernel = op.bind([buf], [buf.reshape(shape)], None)  # the executor: output shares input memory
    kernel()
    np.testing.assert_array_equal(buf, x)
    assert_no_numpy_allocations(kernel)
    np.testing.assert_array_equal(op.reference([x])[0], x.reshape(shape))
    # Given memory of its own (a graph output that is also a graph input), the op copies.
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    np.testing.assert_array_equal(y, x.reshape(shape))
    assert_no_numpy_allocations(kernel)


# ---- Concat ----------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_concat_matches_reference(axis):
    sizes = [1, 3, 13, 24]
    shapes = []
    for k in sizes:
        shape = [2, 5, 7, 3]
        shape[axis] = k
        shapes.append(tuple(shape))
    xs = [random(s, seed=i) for i, s in enumerate(shapes)]
    op = Concat(axis=axis)
    kernel, (y,) = run_in_arena(op, xs)
    kernel()
    np.testing.assert_array_equal(y, op.reference(xs)[0])
    assert_no_numpy_allocations(kernel)


def test_concat_reference_matches_onnxruntime():
    xs = [random((2, k, 3), seed=k) for k in (1, 13, 24)]
    np.testing.assert_array_equal(Concat(axis=-2).reference(xs)[0], ort_run("Concat", xs, axis=-2))


def test_concat_errors():
    with pytest.raises(ShapeError, match=r"\(2, 3, 4\), \(2, 5, 5\)"):
        Concat(axis=1).infer([(2, 3, 4), (2, 5, 5)], [None, None])
    with pytest.raises(ShapeError, match=r"\(2, 3\), \(2, 3, 1\)"):
        Concat(axis=1).infer([(2, 3), (2, 3, 1)], [None, None])
    with pytest.raises(ShapeError, match=r"axis 3.*\(2, 3, 4\)"):
        Concat(axis=3).infer([(2, 3, 4), (2, 3, 4)], [None, None])


# ---- Transpose -------------------------------------------------------------------------------


def test_transpose_every_permutation_of_4d():
    x = random((2, 3, 13, 24))
    for perm in itertools.permutations(range(4)):
        op = Transpose(perm=perm)
        kernel, (y,) = run_in_arena(op, [x])
        kernel()
        np.testing.assert_array_equal(y, op.reference([x])[0])


@pytest.mark.parametrize(
    ("shape", "perm"),
    [
        ((13, 24), None),
        ((3, 1, 5), (2, 0, 1)),
        ((1,), None),
        ((2, 3, 1, 4, 5), (4, 0, 3, 2, 1)),
        ((2, 3, 4, 5, 2, 3), (5, 3, 1, 4, 2, 0)),
        ((2, 1, 3, 1, 4, 1, 5), (6, 4, 2, 0, 1, 3, 5)),  # 7-D, but 4 axes after merging size-1 ones
        ((2, 3, 2, 3, 2, 3, 2), (6, 5, 4, 3, 2, 1, 0)),  # 7 loops: the outer one enumerated at bind
    ],
)
def test_transpose_matches_reference(shape, perm):
    x = random(shape)
    op = Transpose(perm=perm)
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    np.testing.assert_array_equal(y, op.reference([x])[0])


def test_transpose_reference_matches_onnxruntime():
    x = random((2, 3, 4, 5))
    want = ort_run("Transpose", [x], perm=[0, 2, 3, 1])
    np.testing.assert_array_equal(Transpose(perm=(0, 2, 3, 1)).reference([x])[0], want)


def test_transpose_errors():
    with pytest.raises(ShapeError, match=r"\(0, 1\).*\(2, 3, 4\)"):
        Transpose(perm=(0, 1)).infer([(2, 3, 4)], [None])


def test_transpose_allocates_nothing_per_call():
    kernel, _ = run_in_arena(Transpose(perm=(0, 2, 3, 1)), [random((2, 24, 13, 17))])
    assert_no_numpy_allocations(kernel)


# ---- every element type -------------------------------------------------------------------------

DTYPES = ["float32", "int64", "int32", "int16", "int8", "uint16", "uint8", "bool"]


def typed(shape, dtype, seed=0):
    return np.random.default_rng(seed).integers(0, 100, shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 2, -1])
def test_concat_takes_every_dtype(dtype, axis):
    shapes = [(2, 3, 4), (2, 3, 4), (2, 3, 4)]
    xs = [typed(s, dtype, seed=i) for i, s in enumerate(shapes)]
    op = Concat(axis=axis)
    assert op.output_dtypes([dtype] * 3) == [dtype]
    kernel, (y,) = run_in_arena(op, xs)
    kernel()
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, np.concatenate(xs, axis=axis))
    assert_no_numpy_allocations(kernel)


def test_concat_of_int64_matches_onnxruntime():
    xs = [typed((2, k, 3), "int64", seed=k) for k in (1, 4)]
    np.testing.assert_array_equal(Concat(axis=1).reference(xs)[0], ort_run("Concat", xs, axis=1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose_takes_every_dtype(dtype):
    x = typed((2, 3, 5, 4), dtype)
    op = Transpose(perm=(0, 2, 3, 1))
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    np.testing.assert_array_equal(y, x.transpose(0, 2, 3, 1))
    assert_no_numpy_allocations(kernel)


@pytest.mark.parametrize("dtype", ["int64", "bool", "uint8"])
@pytest.mark.parametrize(
    "op",
    [Identity(), Flatten(axis=2), Reshape(shape=(0, -1)), Squeeze(axes=(1,)), Unsqueeze(axes=(0,))],
    ids=str,
)
def test_alias_ops_take_every_dtype(op, dtype):
    x = typed((2, 1, 3, 4), dtype)
    assert op.output_dtypes([dtype]) == [dtype]
    kernel, (y,) = run_in_arena(op, [x])  # memory of its own: the copy
    kernel()
    np.testing.assert_array_equal(y, x.reshape(y.shape))
    assert op.reference([x])[0].dtype == x.dtype


def test_plumbing_refuses_other_dtypes_by_name():
    with pytest.raises(DtypeRefused, match="input 0 is float64; Transpose takes float32"):
        Transpose().output_dtypes(["float64"])
    with pytest.raises(DtypeRefused, match="input 1 is int32 but input 0 is int64"):
        Concat(axis=0).output_dtypes(["int64", "int32"])
    with pytest.raises(DtypeRefused, match="uint32"):
        Reshape(shape=(-1,)).output_dtypes(["uint32"])
