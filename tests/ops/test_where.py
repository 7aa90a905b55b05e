"""Where: its kernel against its reference on broadcast shapes and element types, the reference
against onnxruntime, and masking models end to end."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd.errors import DtypeRefused, ShapeError
from flexnnd.ops.base import Part, op_class
from flexnnd.ops.where import Where, merged_broadcast
from tests.conftest import assert_model_matches_ort
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

SHAPES = [  # condition, X, Y
    ((), (), ()),
    ((7,), (7,), (1,)),
    ((3, 1), (1, 5), ()),
    ((2, 1, 4), (3, 1), (1,)),
    ((1, 2, 3, 1, 2), (2, 1, 1, 2), (3, 1, 1)),
    ((2, 13, 5, 7), (13, 1, 1), (2, 13, 5, 7)),
    ((1, 1, 1, 1, 1, 1, 24), (24,), (1, 24)),
]


def values(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return np.asarray(rng.random(shape) > 0.5)
    if dtype == "float32":
        return np.asarray(rng.standard_normal(shape), dtype=np.float32)
    return np.asarray(rng.integers(0, 100, shape), dtype=dtype)


@pytest.mark.parametrize("cond_shape,x_shape,y_shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_where_matches_reference(cond_shape, x_shape, y_shape, dtype):
    cond, x, y = values(cond_shape, "bool", 0), values(x_shape, dtype, 1), values(y_shape, dtype, 2)
    kernel, (out,) = run_in_arena(Where(), [cond, x, y])
    kernel()
    want = Where().reference([cond, x, y])[0]
    assert out.shape == want.shape and out.dtype == want.dtype
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", ["int32", "int16", "uint8", "bool"])
def test_where_takes_integer_and_bool_values(dtype):
    cond, x, y = values((4, 1, 6), "bool", 3), values((5, 6), dtype, 4), values((4, 5, 1), dtype, 5)
    assert Where().output_dtypes(["bool", dtype, dtype]) == [dtype]
    kernel, (out,) = run_in_arena(Where(), [cond, x, y])
    kernel()
    np.testing.assert_array_equal(out, np.where(cond, x, y))


def test_reference_matches_onnxruntime():
    cond, x, y = values((2, 1, 4), "bool", 6), values((3, 1), "float32", 7), values((1,), "float32", 8)
    np.testing.assert_array_equal(
        Where().reference([cond, x, y])[0], ort_run("Where", [cond, x, y], opset=16)
    )
    xi, yi = values((2, 3, 4), "int64", 9), values((4,), "int64", 10)
    np.testing.assert_array_equal(
        Where().reference([cond, xi, yi])[0], ort_run("Where", [cond, xi, yi], opset=9)
    )


def test_axes_merge_where_every_operand_agrees():
    # (N, C, H, W) masked by (N, 1, H, W): H and W merge, C stays its own loop.
    assert merged_broadcast((2, 3, 4, 5), [(2, 1, 4, 5), (2, 3, 4, 5), ()]) == (
        (2, 3, 20),
        [(2, 1, 20), (2, 3, 20), (1, 1, 1)],
    )
    assert merged_broadcast((1, 1, 7), [(7,), (1, 7), (1, 1, 1)]) == ((7,), [(7,), (7,), (1,)])


def test_kernel_allocates_nothing():
    cond, x, y = (
        values((2, 1, 40, 30), "bool", 0),
        values((2, 8, 40, 30), "float32", 1),
        values((), "float32", 2),
    )
    kernel, _ = run_in_arena(Where(), [cond, x, y])
    assert_no_numpy_allocations(kernel)


def test_registered_never_sliced_and_refusals():
    assert op_class("Where") is Where
    assert Where().slice_axes([(2,), (2,), (2,)], [(2,)]) == ()
    assert Where().cost_kind([(2,), (2,), (2,)]) == "memory"
    with pytest.raises(DtypeRefused, match="condition is float32"):
        Where().output_dtypes(["float32", "float32", "float32"])
    with pytest.raises(DtypeRefused, match="X is float32 and Y is int64"):
        Where().output_dtypes(["bool", "float32", "int64"])
    with pytest.raises(ShapeError, match="do not broadcast"):
        Where().infer([(3,), (4,), (1,)], [None] * 3)
    with pytest.raises(ShapeError, match="loops"):  # alternating broadcast on 7 axes: 7 loops
        Where().infer([(2, 1, 2, 1, 2, 1, 2), (1, 2, 1, 2, 1, 2, 1), ()], [None] * 3)
    x = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="not sliced"):
        Where().bind([np.zeros(3, bool), x, x], [x.copy()], None, Part("rows", 0, 1))


def test_attention_mask_model_matches_onnxruntime(tmp_path):
    """A bool mask fed at run time picks scores or a constant -1e9, then Softmax: masked attention."""
    nodes = [
        helper.make_node("Where", ["mask", "scores", "neg"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("Where", ["mask", "ids", "pad"], ["kept_ids"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mask",
        [
            helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 1, 6]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4, 6]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [3, 1, 6]),
        ],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4, 6]),
            helper.make_tensor_value_info("kept_ids", TensorProto.INT64, [3, 1, 6]),
        ],
        [
            numpy_helper.from_array(np.array(-1e9, np.float32), "neg"),
            numpy_helper.from_array(np.array(-1, np.int64), "pad"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    mask = np.array([[[True, True, False, True, False, True]]])
    feeds = {"mask": mask, "scores": values((1, 4, 6), "float32", 1), "ids": values((3, 1, 6), "int64", 2)}
    assert_model_matches_ort(model, feeds, tmp_path)
