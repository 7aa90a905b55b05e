"""NonZero and Range: computed at import from constants exactly as ONNX Runtime computes them, used
in models end to end, and refused with the reason when an input is computed at run time."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import flexnnd
from flexnnd.graph import fold
from tests.conftest import assert_model_matches_ort, save
from tests.ops.harness import ort_run


@pytest.mark.parametrize(
    ("start", "limit", "delta"),
    [
        (np.float32(0.1), np.float32(100.0), np.float32(0.1)),  # 999 float32 sums: they drift like ORT's
        (np.float32(1.0), np.float32(1.25), np.float32(0.1)),
        (np.int64(10), np.int64(1), np.int64(-3)),
        (np.int32(1), np.int32(1), np.int32(1)),  # empty
        (np.int32(-5), np.int32(7), np.int32(2)),
        (np.int64(0), np.int64(7), np.int64(2)),
        (np.float32(3.0), np.float32(-1.0), np.float32(-0.7)),
    ],
    ids=str,
)
def test_range_folds_as_ort_computes_it(start, limit, delta):
    (got,) = fold.Range([np.array(start), np.array(limit), np.array(delta)], {}, 11)
    want = ort_run("Range", [], consts=[np.array(start), np.array(limit), np.array(delta)], opset=11)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    assert fold.fold_output_elements("Range", [start, limit, delta], {}) == got.size


@pytest.mark.parametrize(
    "x",
    [
        np.array([[1, 0], [1, 1]], np.int64),
        np.array([[[0.0, 2.5, 0.0]], [[-1.0, 0.0, 0.0]]], np.float32),
        np.array([True, False, True, True]),
        np.array(3.0, np.float32),  # a scalar: one row of index 0
        np.zeros((2, 3), np.uint8),  # nothing nonzero: (2, 0)
    ],
    ids=lambda x: f"{x.dtype}{list(x.shape)}",
)
def test_nonzero_folds_as_ort_computes_it(x):
    (got,) = fold.NonZero([x], {}, 13)
    want = ort_run("NonZero", [], consts=[x], opset=13)
    assert got.dtype == want.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    bound = fold.fold_output_elements("NonZero", [x], {}) * x.itemsize
    assert got.nbytes <= bound


def positions_model():
    """Position ids from the input's length, and columns picked by a constant mask's NonZero."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "two"], ["length"], axis=0),
        helper.make_node("Range", ["zero", "length", "one"], ["positions"]),
        helper.make_node("Cast", ["positions"], ["pos_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "pos_f"], ["shifted"]),
        helper.make_node("NonZero", ["mask"], ["where"]),
        helper.make_node("Squeeze", ["where", "axes0"], ["columns"]),
        helper.make_node("Gather", ["shifted", "columns"], ["y"], axis=2),
    ]
    consts = {
        "two": np.array(2, np.int64),
        "zero": np.array(0, np.int64),
        "one": np.array(1, np.int64),
        "mask": np.array([0, 1, 0, 1, 1, 0, 1], np.bool_),
        "axes0": np.array([0], np.int64),
    }
    graph = helper.make_graph(
        nodes,
        "positions",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_constant_range_and_nonzero_in_a_model_match_ort(tmp_path):
    x = np.random.default_rng(2).standard_normal((1, 3, 7)).astype(np.float32)
    assert_model_matches_ort(positions_model(), {"x": x}, tmp_path)


@pytest.mark.parametrize("op", ["NonZero", "Range"])
def test_run_time_input_is_refused_with_the_reason(op, tmp_path):
    if op == "NonZero":
        nodes = [helper.make_node("NonZero", ["x"], ["y"])]
    else:  # a limit computed from the input's values
        nodes = [
            helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
            helper.make_node("Cast", ["top"], ["limit"], to=TensorProto.INT64),
            helper.make_node("Range", ["zero", "limit", "one"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        "runtime",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
        [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in (("zero", 0), ("one", 1))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path = save(model, tmp_path / "model.onnx")
    with pytest.raises(flexnnd.UnsupportedOp, match=f"{op}.*output size depends on run-time values"):
        flexnnd.import_model(path, tmp_path / "package", ladder=False)


def test_check_reports_them_as_constant_inputs_only(tmp_path):
    from flexnnd.graph.check import FOLDED, check_model

    report = check_model(save(positions_model(), tmp_path / "model.onnx"))
    status = {row["op"]: row["status"] for row in report["ops"]}
    assert status["Range"] == status["NonZero"] == status["Shape"] == FOLDED
    assert status["Add"] != FOLDED
