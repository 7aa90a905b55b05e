"""Hostile graphs for the ops of issue 17: absurd sizes, axes and indices are clear errors at import
(before anything of their size is allocated) or fail the one request at run time; the session
serves the next request."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import flexnnd
from flexnnd.errors import InputValueError, ShapeError, TensorTooLarge, UnsupportedOp
from flexnnd.graph.onnx_import import import_onnx
from tests.conftest import save

BIG = 1 << 40


def model(nodes, inputs, inits=(), opset=18):
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


F, I64 = TensorProto.FLOAT, TensorProto.INT64
X = [("x", F, [2, 3])]
n = helper.make_node


@pytest.mark.parametrize(
    "nodes, inputs, inits, error, words",
    [
        ([n("Expand", ["x", "s"], ["y"])], X, [("s", np.array([BIG, 1, 3], np.int64))], TensorTooLarge, "above the limit"),
        ([n("Tile", ["x", "r"], ["y"])], X, [("r", np.array([BIG, 1], np.int64))], TensorTooLarge, "above the limit"),
        ([n("Pad", ["x", "p"], ["y"])], X, [("p", np.array([0, 0, BIG, BIG], np.int64))], TensorTooLarge, "above the limit"),
        (
            [n("Resize", ["x4", "", "sc"], ["y"], mode="nearest")],
            [("x4", F, [1, 1, 4, 4])],
            [("sc", np.array([1, 1, 1e9, 1e9], np.float32))],
            ShapeError,
            "longer than 16,777,216",
        ),
        ([n("OneHot", ["i", "d", "v"], ["y"])], [("i", I64, [4])], [("d", np.array(BIG, np.int64)), ("v", np.array([0.0, 1.0], np.float32))], TensorTooLarge, "above the limit"),
        ([n("Gather", ["x", "k"], ["y"], axis=1)], X, [("k", np.array([5], np.int64))], ShapeError, "reach outside axis 1"),
        ([n("Gather", ["x", "k"], ["y"], axis=7)], X, [("k", np.array([0], np.int64))], ShapeError, "axis 7"),
        ([n("Split", ["x", "s"], ["y", "z"], axis=1)], X, [("s", np.array([1, 9], np.int64))], ShapeError, "do not add up"),
        ([n("TopK", ["x", "k"], ["y", "i"], axis=1)], X, [("k", np.array([99], np.int64))], ShapeError, "k 99"),
        ([n("ReduceSum", ["x", "a"], ["y"])], X, [("a", np.array([99], np.int64))], ShapeError, "99"),
        ([n("CumSum", ["x", "a"], ["y"])], X, [("a", np.array(9, np.int64))], ShapeError, "axis"),
        ([n("Cast", ["x"], ["y"], to=TensorProto.STRING)], X, [], UnsupportedOp, "STRING"),
        ([n("Softmax", ["x"], ["y"], axis=5)], X, [], ShapeError, "axis"),
    ],
    ids=[
        "expand-huge", "tile-huge", "pad-huge", "resize-huge", "onehot-huge", "gather-const-index",
        "gather-axis", "split-sizes", "topk-k", "reduce-axis", "cumsum-axis", "cast-string", "softmax-axis",
    ],
)  # fmt: skip
def test_absurd_parameters_are_import_errors(nodes, inputs, inits, error, words):
    with pytest.raises(error, match=words):
        import_onnx(model(nodes, inputs, inits))


@pytest.mark.parametrize(
    "nodes, inputs, inits, bad, good",
    [
        (
            [n("Gather", ["t", "ids"], ["y"])],
            [("ids", I64, [1, 4])],
            [("t", np.arange(12, dtype=np.float32).reshape(6, 2))],
            {"ids": np.array([[0, 1, 6, 2]], np.int64)},
            {"ids": np.array([[0, -1, 5, 2]], np.int64)},
        ),
        (
            [n("Gather", ["t", "ids"], ["y"])],
            [("ids", I64, [1, 2])],
            [("t", np.arange(12, dtype=np.float32).reshape(6, 2))],
            {"ids": np.array([[-(1 << 62), 0]], np.int64)},
            {"ids": np.array([[3, 0]], np.int64)},
        ),
        (
            [n("ScatterND", ["d", "i", "u"], ["y"])],
            [("d", F, [4, 2]), ("i", I64, [2, 1]), ("u", F, [2, 2])],
            [],
            {
                "d": np.zeros((4, 2), np.float32),
                "i": np.array([[1], [4]], np.int64),
                "u": np.ones((2, 2), np.float32),
            },
            {
                "d": np.zeros((4, 2), np.float32),
                "i": np.array([[1], [3]], np.int64),
                "u": np.ones((2, 2), np.float32),
            },
        ),
        (
            [n("GatherElements", ["d", "i"], ["y"], axis=1)],
            [("d", F, [2, 3]), ("i", I64, [2, 2])],
            [],
            {"d": np.zeros((2, 3), np.float32), "i": np.array([[0, 3], [1, 2]], np.int64)},
            {"d": np.zeros((2, 3), np.float32), "i": np.array([[0, 2], [1, -3]], np.int64)},
        ),
    ],
    ids=[
        "gather-past-the-end",
        "gather-hugely-negative",
        "scatternd-past-the-end",
        "gatherelements-past-the-end",
    ],
)
def test_an_index_out_of_range_fails_the_request_and_the_next_one_runs(
    nodes, inputs, inits, bad, good, tmp_path
):
    path = save(model(nodes, inputs, inits), tmp_path / "m.onnx")
    with flexnnd.Session(path, cache_dir=tmp_path / "cache") as sess:
        with pytest.raises(InputValueError, match="out of range") as caught:
            sess.run(bad)
        assert caught.value.node  # the executor names the node
        assert np.isfinite(sess.run(good)["y"]).all()
