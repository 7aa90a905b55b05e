"""TopK: the kernel against its reference (ties included) on awkward shapes and each dtype, the
reference against onnxruntime, both forms of k, refusals, and a whole model with both outputs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import flexnnd
from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import Part, op_class
from flexnnd.ops.topk import TopK
from tests.conftest import assert_model_matches_ort, save
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

CASES = [
    ((7,), 0),
    ((1,), 0),
    ((3, 1), 1),
    ((5, 13), -1),
    ((5, 13), 0),
    ((2, 13, 5, 7), 1),
    ((3, 1, 4, 1, 5), -3),
]


def values(shape, dtype, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    if ties:
        return rng.integers(-3, 4, shape).astype(dtype)
    return (rng.standard_normal(shape) * 100).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "int32", "int64"])
@pytest.mark.parametrize(("shape", "axis"), CASES, ids=str)
def test_kernel_matches_reference(dtype, shape, axis):
    n = shape[axis]
    for ties in (True, False):
        x = values(shape, dtype, ties=ties)
        for k in sorted({1, (n + 1) // 2, n}):
            for largest in (0, 1):
                op = TopK(axis=axis, k=k, largest=largest)
                kernel, (vals, idx) = run_in_arena(op, [x])
                kernel()
                want_vals, want_idx = op.reference([x])
                assert vals.dtype == x.dtype and idx.dtype == np.int64
                np.testing.assert_array_equal(vals, want_vals)
                np.testing.assert_array_equal(idx, want_idx)


def test_reference_matches_onnxruntime_ties_by_lower_index():
    for x in (values((3, 6, 4), "float32", seed=1), values((3, 6, 4), "int64", seed=2)):
        for axis, k, largest in [(-1, 2, 1), (1, 6, 0), (0, 3, 1), (1, 1, 0)]:
            op = TopK(axis=axis, k=k, largest=largest)
            want = ort_run(
                "TopK", [x], consts=[np.array([k])], opset=11, outputs=2, axis=axis, largest=largest
            )
            for got, expected in zip(op.reference([x]), want, strict=True):
                np.testing.assert_array_equal(got, expected)


def test_unsorted_request_gets_the_same_set():
    """With sorted=0 ONNX leaves the order free; flexnn sorts anyway, ORT's set is the same."""
    x = values((4, 9), "float32", seed=3, ties=False)
    op = TopK(axis=1, k=4, sorted=0)
    kernel, (vals, idx) = run_in_arena(op, [x])
    kernel()
    want_vals, want_idx = ort_run("TopK", [x], consts=[np.array([4])], opset=11, outputs=2, axis=1, sorted=0)
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.sort(want_idx, axis=1))
    np.testing.assert_array_equal(np.sort(vals, axis=1), np.sort(want_vals, axis=1))


def test_k_from_attribute_or_constant_input():
    op, kept = TopK.from_onnx({"k": 3, "axis": 0}, [None], "n", 1)
    assert (op.k, op.axis, kept) == (3, 0, (0,))
    op, kept = TopK.from_onnx({"largest": 0}, [None, np.array([5], np.int64)], "n", 11)
    assert (op.k, op.largest, kept) == (5, 0, (0,))
    with pytest.raises(UnsupportedOp, match=r"k \(input 1\) is not a constant"):
        TopK.from_onnx({}, [None, None], "n", 11)
    with pytest.raises(UnsupportedOp, match=r"k \(input 1\) has 2 values"):
        TopK.from_onnx({}, [None, np.array([1, 2])], "n", 11)
    with pytest.raises(UnsupportedOp, match="k is 0; flexnn needs k >= 1"):
        TopK.from_onnx({}, [None], "n", 1)  # opset 1 without its k attribute
    with pytest.raises(UnsupportedOp, match="largest 3"):
        TopK.from_onnx({"largest": 3}, [None, np.array([1])], "n", 11)


def test_refusals_name_what_is_wrong():
    with pytest.raises(ShapeError, match=r"k 6 is not in \[0, 5\] \(axis 1 of shape \(2, 5\)\)"):
        TopK(axis=1, k=6).infer([(2, 5)], [None])
    with pytest.raises(ShapeError, match=r"axis 2 is out of range for shape \(2, 5\)"):
        TopK(axis=2, k=1).infer([(2, 5)], [None])
    with pytest.raises(DtypeRefused, match="input 0 is uint64; TopK runs on float32, int32, int64"):
        TopK(k=1).output_dtypes(["uint64"])
    assert TopK(k=1).output_dtypes(["int32"]) == ["int32", "int64"]
    x = np.zeros((2, 5), np.float32)
    vals, idx = np.zeros((2, 2), np.float32), np.zeros((2, 2), np.int64)
    with pytest.raises(ValueError, match="not sliced"):
        TopK(k=2).bind([x], [vals, idx], None, Part("rows", 0, 1))
    with pytest.raises(ShapeError, match="the Indices output is needed"):
        TopK(k=2).bind([x], [vals], None)
    with pytest.raises(ShapeError, match=r"expected \(2, 2\) float32 and \(2, 2\) int64"):
        TopK(k=2).bind([x], [vals, idx.astype(np.int32)], None)


def test_kernel_allocates_nothing_never_sliced_priced_by_bytes():
    op = TopK(axis=1, k=5)
    kernel, _ = run_in_arena(op, [values((2, 13, 5, 7), "float32")])
    assert_no_numpy_allocations(kernel)
    assert op_class("TopK") is TopK
    assert op.slice_axes([(2, 13)], op.infer([(2, 13)], [None])) == ()
    assert op.cost_kind([(2, 13)]) == "memory"
    assert op.scratch_bytes([(2, 13)]) == 0


def _model(opset, k_as_input):
    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    inits = []
    if k_as_input:
        nodes.append(helper.make_node("TopK", ["r", "k"], ["v", "i"], axis=1, largest=1))
        inits.append(helper.make_tensor("k", TensorProto.INT64, [1], [3]))
    else:
        nodes.append(helper.make_node("TopK", ["r"], ["v", "i"], axis=1, k=3))
    nodes.append(helper.make_node("ReduceSum", ["v"], ["s"], axes=[1], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 3])],
        [
            helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("i", TensorProto.INT64, None),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(("opset", "k_as_input"), [(9, False), (12, True)])
def test_model_with_both_outputs_matches_onnxruntime(tmp_path, opset, k_as_input):
    x = values((2, 8, 3), "float32", seed=4)  # Relu makes ties at 0
    assert_model_matches_ort(_model(opset, k_as_input), {"x": x}, tmp_path)


def test_runtime_k_is_refused_naming_the_input(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"])],
        "t",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    with pytest.raises(UnsupportedOp, match=r"TopK.*k \(input 1\) is not a constant"):
        flexnnd.Session(save(model, tmp_path / "m.onnx"), cache_dir=tmp_path / "cache")
