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


# ---- If and Loop (graph/control_flow.py) --------------------------------------------------------

B = TensorProto.BOOL


def sub(nodes, outputs, inputs=()):
    """A subgraph: outputs and inputs as (name, type) pairs, shapes left unknown."""
    return helper.make_graph(
        nodes,
        "sub",
        [helper.make_tensor_value_info(name, t, None) for name, t in inputs],
        [helper.make_tensor_value_info(name, t, None) for name, t in outputs],
    )


def if_model(then_g, else_g, cond_value=None):
    """y = If(c): c a constant when `cond_value` is given, else a bool input."""
    inputs = [*X] if cond_value is not None else [*X, ("c", B, [])]
    inits = [("c", np.array(cond_value))] if cond_value is not None else []
    return model([n("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)], inputs, inits)


RELU = sub([n("Relu", ["x"], ["r"])], [("r", F)])
LOOP_BODY = sub(
    [n("Identity", ["ci"], ["co"]), n("Relu", ["v"], ["w"])],
    [("co", B), ("w", F)],
    [("i", I64), ("ci", B), ("v", F)],
)


FAT_BODY = sub(
    [n("Identity", ["ci"], ["co"]), n("Relu", ["v"], ["w0"]), *(n("Relu", [f"w{k}"], [f"w{k + 1}"]) for k in range(28))],
    [("co", B), ("w28", F)],
    [("i", I64), ("ci", B), ("v", F)],
)  # fmt: skip


def deep_if(depth):
    """If inside If ... `depth` deep, every condition the bool input c."""
    graph = RELU
    for _ in range(depth):
        graph = sub([n("If", ["c"], ["r"], then_branch=graph, else_branch=RELU)], [("r", F)])
    return model(list(graph.node), [*X, ("c", B, [])])


@pytest.mark.parametrize(
    "build, error, words",
    [
        (lambda: if_model(sub([n("Relu", ["b"], ["a"]), n("Relu", ["a"], ["b"])], [("a", F)]), RELU, True), "MalformedGraph", "cycle"),
        (lambda: if_model(RELU, sub([n("Relu", ["b"], ["a"]), n("Relu", ["a"], ["b"])], [("a", F)])), "MalformedGraph", "cycle"),
        (lambda: if_model(sub([n("Relu", ["ghost"], ["a"])], [("a", F)]), RELU), "MalformedGraph", "'ghost', which no node produces"),
        (lambda: if_model(sub([n("Relu", ["x"], ["a"])], [("ghost", F)]), RELU, False), "MalformedGraph", "'ghost', which no node produces"),
        (lambda: if_model(sub([n("Relu", ["x"], ["a"]), n("Neg", ["x"], ["b"])], [("a", F), ("b", F)]), RELU), "MalformedGraph", "then branch has 2 outputs, the node 1"),
        (lambda: if_model(RELU, sub([], []), True), "MalformedGraph", "else branch has 0 outputs"),
        (lambda: model([n("If", ["c"], ["y"], then_branch=RELU)], [*X, ("c", B, [])]), "MalformedGraph", "no subgraph attribute"),
        (lambda: if_model(RELU, RELU, [True, False]), "ShapeError", "one element"),
        (lambda: model([n("If", ["k"], ["y"], then_branch=RELU, else_branch=RELU)], [*X, ("k", F, [])]), "UnsupportedOp", "bool condition"),
        (lambda: deep_if(20), "ModelImportError", "nested 17 deep, above the limit of 16"),
        (lambda: model([n("Loop", ["m", "", "x"], ["y"], body=LOOP_BODY)], X, [("m", np.array(2**62, np.int64))]), "UnsupportedOp", "trip count 4,611,686,018,427,387,904 is above the 4,096"),
        (lambda: model([n("Loop", ["m", "t", "x"], ["y"], body=LOOP_BODY)], X, [("m", np.array(2**62, np.int64)), ("t", np.array(True))]), "UnsupportedOp", "still running after 4,096 iterations"),
        (lambda: model([n("Loop", ["", "", "x"], ["y"], body=LOOP_BODY)], X), "UnsupportedOp", "never ends"),
        (lambda: model([n("Loop", ["m", "", "x"], ["y"], body=LOOP_BODY)], [*X, ("m", I64, [])]), "UnsupportedOp", "trip count known only at run time"),
        (lambda: model([n("Loop", ["m", "", "x", "x"], ["y"], body=LOOP_BODY)], X, [("m", np.array(2, np.int64))]), "MalformedGraph", r"body takes 3 inputs; it must take 2 \+ 2"),
        (lambda: model([n("Loop", ["m", "", "x"], ["y", "z"], body=LOOP_BODY)], X, [("m", np.array(2, np.int64))]), "MalformedGraph", "names 2 outputs"),
        (lambda: model([n("Loop", ["m", "", "x"], ["y"], body=FAT_BODY)], X, [("m", np.array(4000, np.int64))]), "ModelImportError", "4,000 iterations of 30 nodes would add 120,000 nodes"),
    ],
    ids=[
        "cycle-in-taken-branch", "cycle-in-runtime-branch", "undefined-name", "undefined-output", "then-output-count",
        "else-output-count", "no-else", "cond-two-elements", "cond-float", "nested-40-deep", "trip-2**62",
        "while-true-2**62", "loop-forever", "trip-at-run-time", "body-inputs", "loop-outputs", "nested-loops-cap",
    ],
)  # fmt: skip
def test_hostile_control_flow_is_a_clear_import_error(build, error, words):
    with pytest.raises(flexnnd.FlexnnError, match=words) as caught:
        import_onnx(build())
    assert type(caught.value).__name__ == error


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    key, length, out = (number << 3) | 2, len(payload), bytearray()
    for value in (key, length):
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def test_if_nested_1000_deep_is_refused_from_the_file_without_recursion_error(tmp_path):
    """onnx's helper cannot even build it: the bytes are written by hand, If inside If 1000 deep."""
    leaf = RELU.SerializeToString()
    graph = leaf
    for _ in range(1000):
        attrs = [
            _field(1, b"then_branch") + b"\xa0\x01\x05" + _field(6, graph),
            _field(1, b"else_branch") + b"\xa0\x01\x05" + _field(6, leaf),
        ]
        node = _field(1, b"c") + _field(2, b"r") + _field(4, b"If") + b"".join(_field(5, a) for a in attrs)
        graph = _field(1, node) + _field(12, helper.make_tensor_value_info("r", F, None).SerializeToString())
    outer = model([], [*X, ("c", B, [])])
    outer.graph.ClearField("node")
    data = outer.SerializeToString() + _field(7, graph)  # a second graph field merges into the first
    path = tmp_path / "deep.onnx"
    path.write_bytes(data)
    with pytest.raises(flexnnd.FlexnnError, match=r"deep|not a readable ONNX model"):
        flexnnd.import_model(path, tmp_path / "package", ladder=False)


def control_flow_seed() -> bytes:
    """A small model with a constant If, a run-time If and a Loop with a scan output: the bytes the
    truncation sweep and the byte flips below start from."""
    body = sub(
        [n("Identity", ["ci"], ["co"]), n("Add", ["v", "x"], ["w"]), n("Relu", ["w"], ["s"])],
        [("co", B), ("w", F), ("s", F)],
        [("i", I64), ("ci", B), ("v", F)],
    )
    nodes = [
        n("If", ["yes"], ["a"], then_branch=RELU, else_branch=sub([n("Neg", ["x"], ["r"])], [("r", F)])),
        n("If", ["c"], ["b"], then_branch=sub([n("Relu", ["a"], ["r"])], [("r", F)]), else_branch=RELU),
        n("Loop", ["m", "", "b"], ["y", "scan"], body=body),
    ]
    m = model(nodes, [*X, ("c", B, [])], [("yes", np.array(True)), ("m", np.array(3, np.int64))])
    m.graph.output.append(helper.make_tensor_value_info("scan", F, None))
    import_onnx(m)  # the seed itself imports
    return m.SerializeToString()


def test_truncated_and_flipped_control_flow_models_are_clear_errors():
    """Every cut of the seed's bytes, and 400 seeded byte flips, either import or fail with a flexnn
    error: never another exception, never a hang."""
    from flexnnd.graph.onnx_import import parse_onnx

    seed = control_flow_seed()
    rng = np.random.default_rng(5)
    cases = [seed[:cut] for cut in range(0, len(seed), 7)]
    for _ in range(400):
        data = bytearray(seed)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            data[pos] = int(rng.integers(0, 256))
        cases.append(bytes(data))
    outcomes = {"imported": 0, "refused": 0}
    for data in cases:
        try:
            import_onnx(parse_onnx(data, "cut"))
        except flexnnd.FlexnnError:
            outcomes["refused"] += 1
        else:
            outcomes["imported"] += 1
    assert outcomes["refused"] > len(seed) // 14  # most cuts break the model


def test_op_types_that_are_not_utf8_are_listed_in_one_refusal():
    """protobuf hands such names over as bytes: the error that lists every refused node still forms."""
    from flexnnd.errors import UnsupportedOps
    from flexnnd.graph.onnx_import import parse_onnx

    m = model([n("Zzzz", ["x"], ["t"]), n("Yyyy", ["t"], ["y"])], X)
    data = m.SerializeToString().replace(b"Zzzz", b"\x80zzz").replace(b"Yyyy", b"\xffyyy")
    with pytest.raises(UnsupportedOps, match="2 nodes cannot run") as caught:
        import_onnx(parse_onnx(data, "bytes"))
    assert all(isinstance(r.op_type, str) for r in caught.value.refusals)
