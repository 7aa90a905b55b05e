"""If and Loop (graph/control_flow.py): folded, guarded or unrolled, each model against ONNX Runtime
all-resident and at its smallest plan."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import flexnnd
from flexnnd.errors import InputValueError, ShapeError, UnsupportedOp
from flexnnd.graph.control_flow import MAX_TRIP_COUNT
from flexnnd.graph.onnx_import import check_ops_before_weights, import_onnx
from flexnnd.planner.lifetimes import lifetimes
from tests.conftest import assert_model_matches_ort, save

F, B, I64 = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64
RNG = np.random.default_rng(17)


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "cf", inputs, outputs, list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def branch(name, nodes, outputs, inits=()):
    return helper.make_graph(nodes, name, [], outputs, list(inits))


def conv_branch(name, channels, seed):
    """A branch with weights (so the smallest plan streams): Conv -> Relu of the outer x."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((channels, 32, 3, 3)) * 0.1).astype(np.float32)
    return branch(
        name,
        [
            helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"{name}_c"], [f"{name}_y"]),
        ],
        [vi(f"{name}_y", F, [1, channels, 12, 12])],
        [init(f"{name}_w", w)],
    )


def runtime_if_model(cond_input):
    """y = If(cond) then Relu(Conv_a(x)) else Relu(Conv_b(x)); cond from `cond_input`'s nodes."""
    nodes, inputs = cond_input
    nodes = [
        *nodes,
        helper.make_node(
            "If", ["cond"], ["y"], then_branch=conv_branch("a", 96, 1), else_branch=conv_branch("b", 96, 2)
        ),
    ]
    return model(nodes, [vi("x", F, [1, 32, 12, 12]), *inputs], [vi("y", F, [1, 96, 12, 12])])


BOOL_COND = ([helper.make_node("Identity", ["c"], ["cond"])], [vi("c", B, [])])
INT_COND = (
    [
        helper.make_node("Greater", ["n", "zero"], ["cond"]),
        helper.make_node("Constant", [], ["zero"], value_int=0),
    ],
    [vi("n", I64, [1])],
)


@pytest.mark.parametrize("value", [True, False])
def test_if_on_a_runtime_bool_runs_only_the_taken_branch(value, tmp_path):
    x = RNG.standard_normal((1, 32, 12, 12)).astype(np.float32)
    arenas = assert_model_matches_ort(runtime_if_model(BOOL_COND), {"x": x, "c": np.array(value)}, tmp_path)
    assert arenas[1] < arenas[0]  # the smallest plan streams the branches' weights


@pytest.mark.parametrize("value", [3, -2])
def test_if_on_a_runtime_int_comparison(value, tmp_path):
    x = RNG.standard_normal((1, 32, 12, 12)).astype(np.float32)
    assert_model_matches_ort(runtime_if_model(INT_COND), {"x": x, "n": np.array([value], np.int64)}, tmp_path)


def test_the_branch_not_taken_does_not_run(tmp_path):
    """The else branch gathers with indices out of range: it would fail the request if it ran."""
    then_g = branch("then", [helper.make_node("Neg", ["ids"], ["t"])], [vi("t", I64, [2])])
    else_g = branch("else", [helper.make_node("Gather", ["table", "ids"], ["e"])], [vi("e", I64, [2])])
    m = model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        [vi("ids", I64, [2]), vi("c", B, [])],
        [vi("y", I64, [2])],
        [init("table", np.arange(4, dtype=np.int64))],
    )
    ids = np.array([7, -9], np.int64)
    with flexnnd.Session(save(m, tmp_path / "m.onnx"), cache_dir=tmp_path / "cache") as sess:
        np.testing.assert_array_equal(sess.run({"ids": ids, "c": np.array(True)})["y"], -ids)
        with pytest.raises(InputValueError, match="out of range"):
            sess.run({"ids": ids, "c": np.array(False)})


def test_guarded_nodes_keep_their_condition_alive_and_survive_the_package(tmp_path):
    graph, _ = import_onnx(runtime_if_model(BOOL_COND))
    guarded = [n for n in graph.nodes if n.guard]
    assert {g for n in guarded for g in n.guard} == {("c", True), ("c", False)}
    assert {n.name.split("/")[1] for n in guarded} == {"then", "else"}
    life = lifetimes(graph)
    last_guarded = max(i for i, n in enumerate(life.steps) if n.guard)
    assert life.last["c"] >= last_guarded
    select = next(n for n in graph.nodes if n.op_type == "flexnn.IfSelect")
    assert select.inputs[0] == "c" and not select.guard
    path = save(runtime_if_model(BOOL_COND), tmp_path / "m.onnx")
    with flexnnd.Session(path, cache_dir=tmp_path / "cache") as sess:
        read_back = {n.name: n.guard for n in sess.package.graph.nodes}
    assert all(read_back[n.name] == n.guard for n in guarded)


def test_a_node_fused_inside_a_branch_keeps_its_guard(tmp_path):
    """x * Sigmoid(x) in the then branch becomes one Swish node, guarded like the nodes it replaced."""
    then_g = branch(
        "then",
        [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["t"])],
        [vi("t", F, [2, 5])],
    )
    else_g = branch("else", [helper.make_node("Neg", ["x"], ["e"])], [vi("e", F, [2, 5])])
    m = model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        [vi("x", F, [2, 5]), vi("c", B, [])],
        [vi("y", F, [2, 5])],
    )
    graph, _ = import_onnx(m)
    swish = next(n for n in graph.nodes if n.op_type == "Swish")
    assert swish.guard == (("c", True),)
    x = RNG.standard_normal((2, 5)).astype(np.float32)
    for c in (True, False):
        (tmp_path / str(c)).mkdir()
        assert_model_matches_ort(m, {"x": x, "c": np.array(c)}, tmp_path / str(c))


def test_if_with_a_constant_condition_imports_only_the_taken_branch(tmp_path):
    then_g = branch("then", [helper.make_node("Sigmoid", ["x"], ["t"])], [vi("t", F, [2, 5])])
    # The dropped branch uses an op flexnn does not have: it is never imported.
    else_g = branch("else", [helper.make_node("NoSuchOp", ["x"], ["e"])], [vi("e", F, [2, 5])])
    m = model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        [vi("x", F, [2, 5])],
        [vi("y", F, [2, 5])],
        [init("c", np.array(True))],
    )
    graph, _ = import_onnx(m)
    assert [n.op_type for n in graph.nodes] == ["Sigmoid"]
    assert not any(n.guard for n in graph.nodes)
    check_ops_before_weights(save(m, tmp_path / "m.onnx"))  # the literal condition drops else
    x = RNG.standard_normal((2, 5)).astype(np.float32)
    with flexnnd.Session(tmp_path / "m.onnx", cache_dir=tmp_path / "cache") as sess:
        np.testing.assert_allclose(sess.run({"x": x})["y"], 1 / (1 + np.exp(-x)), rtol=1e-5)


def shape_if_model(width):
    """y = x * 2 when x's width > 4, else x + 1: the condition folds from the input's shape."""
    two, one = init("two", np.float32(2)), init("one", np.float32(1))
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "axis1"], ["w"], axis=0),
        helper.make_node("Greater", ["w", "four"], ["wide"]),
        helper.make_node(
            "If",
            ["wide"],
            ["y"],
            then_branch=branch(
                "then", [helper.make_node("Mul", ["x", "two"], ["t"])], [vi("t", F, None)], [two]
            ),
            else_branch=branch(
                "else", [helper.make_node("Add", ["x", "one"], ["e"])], [vi("e", F, None)], [one]
            ),
        ),
    ]
    return model(
        nodes,
        [vi("x", F, [3, width])],
        [vi("y", F, [3, width])],
        [init("axis1", np.int64(1)), init("four", np.int64(4))],
    )


@pytest.mark.parametrize("width, op", [(6, "Mul"), (2, "Add")])
def test_if_on_a_shape_comparison_folds(width, op, tmp_path):
    graph, _ = import_onnx(shape_if_model(width))
    assert [n.op_type for n in graph.nodes] == [op]
    x = RNG.standard_normal((3, width)).astype(np.float32)
    assert_model_matches_ort(shape_if_model(width), {"x": x}, tmp_path)


def nested_if_model():
    """y = If(a) then (If(b) then x*2 else Relu(x)) else (If(true) then x-1 else NoSuchOp)."""
    inner_runtime = helper.make_node(
        "If",
        ["b"],
        ["t"],
        then_branch=branch("tt", [helper.make_node("Mul", ["x", "two"], ["tt_y"])], [vi("tt_y", F, [4, 3])]),
        else_branch=branch("te", [helper.make_node("Relu", ["x"], ["te_y"])], [vi("te_y", F, [4, 3])]),
    )
    inner_constant = helper.make_node(
        "If",
        ["yes"],
        ["e"],
        then_branch=branch("et", [helper.make_node("Sub", ["x", "one"], ["et_y"])], [vi("et_y", F, [4, 3])]),
        else_branch=branch("ee", [helper.make_node("Relu", ["x"], ["ee_y"])], [vi("ee_y", F, [4, 3])]),
    )
    outer = helper.make_node(
        "If",
        ["a"],
        ["y"],
        then_branch=branch("then", [inner_runtime], [vi("t", F, [4, 3])]),
        else_branch=branch("else", [inner_constant], [vi("e", F, [4, 3])]),
    )
    return model(
        [outer],
        [vi("x", F, [4, 3]), vi("a", B, []), vi("b", B, [])],
        [vi("y", F, [4, 3])],
        [init("two", np.float32(2)), init("one", np.float32(1)), init("yes", np.array(True))],
    )


@pytest.mark.parametrize("a, b", [(True, True), (True, False), (False, True), (False, False)])
def test_nested_ifs(a, b, tmp_path):
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    assert_model_matches_ort(nested_if_model(), {"x": x, "a": np.array(a), "b": np.array(b)}, tmp_path)


def test_nested_guards_are_conjunctions():
    graph, _ = import_onnx(nested_if_model())
    guards = {n.name: n.guard for n in graph.nodes}
    assert guards["If_0/then/If_0/then/Mul_0"] == (("a", True), ("b", True))
    assert guards["If_0/else/If_0/then/Sub_0"] == (("a", False),)


def loop_model(trips, opset=17):
    """Loop M times: acc += x * i (loop-carried); scan outputs acc and i as float."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Cast", ["i"], ["fi"], to=F),
            helper.make_node("Mul", ["x", "fi"], ["xi"]),
            helper.make_node("Add", ["acc_in", "xi"], ["acc_out"]),
            helper.make_node("Relu", ["acc_out"], ["scan_acc"]),
        ],
        "body",
        [vi("i", I64, []), vi("cond_in", B, []), vi("acc_in", F, [2, 3])],
        [vi("cond_out", B, []), vi("acc_out", F, [2, 3]), vi("scan_acc", F, [2, 3])],
    )
    nodes = [helper.make_node("Loop", ["M", "", "acc0"], ["acc", "scans"], body=body)]
    return model(
        nodes,
        [vi("x", F, [2, 3]), vi("acc0", F, [2, 3])],
        [vi("acc", F, [2, 3]), vi("scans", F, [trips, 2, 3])],
        [init("M", np.int64(trips))],
        opset=opset,
    )


@pytest.mark.parametrize("trips, opset", [(5, 17), (1, 17), (3, 11)])
def test_loop_with_a_static_trip_count_is_unrolled(trips, opset, tmp_path):
    graph, _ = import_onnx(loop_model(trips, opset))
    assert any(n.name.startswith(f"Loop_0/{trips - 1}/") for n in graph.nodes)
    feeds = {
        "x": RNG.standard_normal((2, 3)).astype(np.float32),
        "acc0": RNG.standard_normal((2, 3)).astype(np.float32),
    }
    assert_model_matches_ort(loop_model(trips, opset), feeds, tmp_path)


def counting_loop_model():
    """A while loop (M = INT64_MAX) whose condition i < 3 folds in each iteration: 3 iterations."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["i", "one"], ["next"]),
            helper.make_node("Less", ["next", "three"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "x"], ["v_out"]),
        ],
        "body",
        [vi("i", I64, []), vi("cond_in", B, []), vi("v_in", F, [3])],
        [vi("cond_out", B, []), vi("v_out", F, [3])],
        [init("one", np.int64(1)), init("three", np.int64(3))],
    )
    nodes = [helper.make_node("Loop", ["M", "go", "v0"], ["v"], body=body)]
    return model(
        nodes,
        [vi("x", F, [3]), vi("v0", F, [3])],
        [vi("v", F, [3])],
        [init("M", np.int64(2**63 - 1)), init("go", np.array(True))],
    )


def test_a_loop_whose_condition_folds_stops_where_it_says(tmp_path):
    graph, _ = import_onnx(counting_loop_model())
    assert sum(n.op_type == "Add" for n in graph.nodes) == 3
    feeds = {"x": RNG.standard_normal(3).astype(np.float32), "v0": RNG.standard_normal(3).astype(np.float32)}
    assert_model_matches_ort(counting_loop_model(), feeds, tmp_path)


def loop_in_if_model(stacked):
    """If(c) then Loop(4 iterations) else (x, -x tiled 4 times): `stacked` tiles a [1, 2, 3] view
    of -x to [4, 2, 3]; else a [2, 3] one to [8, 3], which the then branch's [4, 2, 3] disagrees with."""
    loop = loop_model(4).graph.node[0]
    then_g = branch("then", [loop], [vi("acc", F, [2, 3]), vi("scans", F, [4, 2, 3])])
    reps = [4, 1, 1] if stacked else [4, 1]
    neg = [helper.make_node("Neg", ["x"], ["n"])]
    if stacked:
        neg.append(helper.make_node("Unsqueeze", ["n", "zero"], ["n3"]))
    else_g = branch(
        "else",
        [
            *neg,
            helper.make_node("Tile", [neg[-1].output[0], "reps"], ["t"]),
            helper.make_node("Identity", ["x"], ["xe"]),
        ],
        [vi("xe", F, [2, 3]), vi("t", F, [4, 2, 3])],
        [init("reps", np.array(reps, np.int64))],
    )
    return model(
        [helper.make_node("If", ["c"], ["acc", "x_or_t"], then_branch=then_g, else_branch=else_g)],
        [vi("x", F, [2, 3]), vi("acc0", F, [2, 3]), vi("c", B, [])],
        [vi("acc", F, [2, 3]), vi("x_or_t", F, [4, 2, 3])],
        [init("M", np.int64(4)), init("zero", np.array([0], np.int64))],
    )


def test_loop_inside_a_runtime_if(tmp_path):
    with pytest.raises(
        UnsupportedOp, match=r"output 1 .*\[4, 2, 3\] in the then branch and float32 \[8, 3\]"
    ):
        import_onnx(loop_in_if_model(stacked=False))
    for c in (True, False):
        feeds = {"x": RNG.standard_normal((2, 3)).astype(np.float32), "acc0": np.ones((2, 3), np.float32)}
        (tmp_path / str(c)).mkdir()
        assert_model_matches_ort(
            loop_in_if_model(stacked=True), {**feeds, "c": np.array(c)}, tmp_path / str(c)
        )


def test_a_branch_that_cannot_take_the_input_shapes_fails_only_when_selected(tmp_path):
    """The else branch reshapes x to [4, 4], which its 2x3 shape cannot be: the model imports, and
    a request that selects else fails with the reason."""
    then_g = branch("then", [helper.make_node("Relu", ["x"], ["t"])], [vi("t", F, [2, 3])])
    else_g = branch(
        "else",
        [
            helper.make_node("Reshape", ["x", "shape"], ["r"]),
            helper.make_node("Slice", ["r", "s", "e"], ["e_y"]),
        ],
        [vi("e_y", F, [2, 3])],
        [
            init("shape", np.array([4, 4], np.int64)),
            init("s", np.array([0, 0], np.int64)),
            init("e", np.array([2, 3], np.int64)),
        ],
    )
    m = model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        [vi("x", F, [2, 3]), vi("c", B, [])],
        [vi("y", F, [2, 3])],
    )
    path = save(m, tmp_path / "m.onnx")
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    with flexnnd.Session(path, cache_dir=tmp_path / "cache") as sess:
        np.testing.assert_array_equal(sess.run({"x": x, "c": np.array(True)})["y"], np.maximum(x, 0))
        with pytest.raises(InputValueError, match=r"selects the else branch.*Reshape") as caught:
            sess.run({"x": x, "c": np.array(False)})
        assert caught.value.node == "If_0"
        np.testing.assert_array_equal(sess.run({"x": x, "c": np.array(True)})["y"], np.maximum(x, 0))


def test_refusals_name_the_loop_and_the_reason():
    m = loop_model(3)
    m.graph.initializer.pop()  # M is a graph input now: known only at run time
    m.graph.input.append(vi("M", I64, []))
    with pytest.raises(UnsupportedOp, match="trip count known only at run time"):
        import_onnx(m)
    with pytest.raises(UnsupportedOp, match=f"trip count 4,097 is above the {MAX_TRIP_COUNT:,}"):
        import_onnx(loop_model(MAX_TRIP_COUNT + 1))
    with pytest.raises(ShapeError, match="runs 0 times"):
        import_onnx(loop_model(0))


def test_an_unknown_op_inside_a_branch_is_refused_before_weights_with_its_nesting(tmp_path):
    bad = branch("b", [helper.make_node("NoSuchOp", ["x"], ["b_y"])], [vi("b_y", F, [2, 5])])
    also_bad = branch("c", [helper.make_node("AlsoNoOp", ["x"], ["c_y"])], [vi("c_y", F, [2, 5])])
    body = helper.make_graph(
        [helper.make_node("Identity", ["ci"], ["co"]), helper.make_node("NoSuchOp", ["v"], ["w"])],
        "body",
        [vi("i", I64, []), vi("ci", B, []), vi("v", F, [2, 5])],
        [vi("co", B, []), vi("w", F, [2, 5])],
    )
    m = model(
        [
            helper.make_node("If", ["c"], ["y"], name="gate", then_branch=bad, else_branch=also_bad),
            helper.make_node("Loop", ["M", "", "x"], ["z"], name="steps", body=body),
        ],
        [vi("x", F, [2, 5]), vi("c", B, [])],
        [vi("y", F, [2, 5]), vi("z", F, [2, 5])],
        [init("M", np.int64(2))],
    )
    with pytest.raises(UnsupportedOp) as caught:
        check_ops_before_weights(save(m, tmp_path / "m.onnx"))
    names = {r.node for r in caught.value.refusals}
    assert names == {"gate/then/NoSuchOp_0", "gate/else/AlsoNoOp_0", "steps/body/NoSuchOp_1"}


def test_the_plan_verifier_requires_the_condition_reserved_at_every_guarded_step():
    """A guarded node whose output nobody reads runs after the select: only its guard reads c then."""
    import dataclasses

    from flexnnd.errors import PlanError
    from flexnnd.planner.resident import plan_resident
    from flexnnd.planner.verify import verify

    then_g = branch(
        "then",
        [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Neg", ["x"], ["unread"])],
        [vi("t", F, [2, 5])],
    )
    else_g = branch("else", [helper.make_node("Sigmoid", ["x"], ["e"])], [vi("e", F, [2, 5])])
    m = model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        [vi("x", F, [2, 5]), vi("c", B, [])],
        [vi("y", F, [2, 5])],
    )
    graph, _ = import_onnx(m)
    dead = next(n for n in graph.nodes if n.op_type == "Neg")
    graph = dataclasses.replace(graph, nodes=(*(n for n in graph.nodes if n is not dead), dead))
    plan = plan_resident(graph)
    verify(plan, graph)
    select = next(i for i, s in enumerate(plan.steps) if s.node == "If_0")
    assert plan.region["c"].last == len(plan.steps) - 1 > select  # lifetimes: the guard reads c last
    cut = tuple(dataclasses.replace(r, last=select) if r.name == "c" else r for r in plan.regions)
    with pytest.raises(PlanError, match=r"uses tensor 'c', but its region is reserved only for steps 0-"):
        verify(dataclasses.replace(plan, regions=cut), graph)


@pytest.mark.parametrize("cond", [None, True, False])
def test_a_1d_conv_inside_a_branch_runs_as_a_2d_one(cond, tmp_path):
    """cond None: the condition is the constant True; else a run-time input fed `cond`."""
    w = (RNG.standard_normal((6, 4, 3)) * 0.3).astype(np.float32)
    then_g = branch(
        "then",
        [helper.make_node("Conv", ["x", "w"], ["t"], pads=[1, 1])],
        [vi("t", F, [1, 6, 10])],
        [init("w", w)],
    )
    else_g = branch(
        "else", [helper.make_node("Conv", ["x", "w2"], ["e"], pads=[1, 1])], [vi("e", F, [1, 6, 10])]
    )
    inputs, inits = [vi("x", F, [1, 4, 10])], [init("w2", -w)]
    if cond is None:
        inits.append(init("c", np.array(True)))
    else:
        inputs.append(vi("c", B, []))
    m = model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        inputs,
        [vi("y", F, [1, 6, 10])],
        inits,
    )
    graph, _ = import_onnx(m)
    assert all(len(n.in_shapes[1]) == 4 for n in graph.nodes if n.op_type == "Conv")
    feeds = {"x": RNG.standard_normal((1, 4, 10)).astype(np.float32)}
    assert_model_matches_ort(m, feeds if cond is None else {**feeds, "c": np.array(cond)}, tmp_path)


def one_bad_branch_model(cond_from_shape):
    """If whose else branch has an op flexnn lacks; the condition is x's width > 4 (folded at import:
    then is taken, else dropped) or a bool input (both branches are imported)."""
    then_g = branch("then", [helper.make_node("Relu", ["x"], ["t"])], [vi("t", F, [3, 6])])
    else_g = branch("else", [helper.make_node("NoSuchOp", ["x"], ["e"])], [vi("e", F, [3, 6])])
    shape_cond = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "axis1"], ["w"], axis=0),
        helper.make_node("Greater", ["w", "four"], ["c"]),
    ]
    return model(
        [
            *(shape_cond if cond_from_shape else []),
            helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
        ],
        [vi("x", F, [3, 6]), *([] if cond_from_shape else [vi("c", B, [])])],
        [vi("y", F, [3, 6])],
        [init("axis1", np.int64(1)), init("four", np.int64(4))],
    )


def test_the_pre_scan_refuses_a_bad_branch_only_when_both_branches_will_be_imported(tmp_path):
    with pytest.raises(UnsupportedOp, match=r"NoSuchOp .*If_0/else/NoSuchOp_0"):
        check_ops_before_weights(save(one_bad_branch_model(cond_from_shape=False), tmp_path / "run.onnx"))
    path = save(one_bad_branch_model(cond_from_shape=True), tmp_path / "shape.onnx")
    check_ops_before_weights(path)  # the condition may fold and drop else: the import decides
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    with flexnnd.Session(path, cache_dir=tmp_path / "cache") as sess:
        np.testing.assert_array_equal(sess.run({"x": x})["y"], np.maximum(x, 0))


def test_flexnnctl_check_lists_the_nested_refusal_the_import_would_make(tmp_path):
    from flexnnd.graph.check import check_model

    report = check_model(save(one_bad_branch_model(cond_from_shape=False), tmp_path / "m.onnx"))
    assert [r["node"] for r in report["refused"]] == ["If_0/else/NoSuchOp_0"]
    assert {o["op"]: o["status"] for o in report["ops"]}["If"] == "supported"


@pytest.mark.parametrize("c", [True, False])
def test_a_runtime_if_inside_an_unrolled_loop(c, tmp_path):
    """Each of the 3 iterations has its own guarded branches and select: v += x, or v -= x * i."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["ci"], ["co"]),
            helper.make_node(
                "If",
                ["c"],
                ["w"],
                then_branch=branch("then", [helper.make_node("Add", ["v", "x"], ["t"])], [vi("t", F, [4])]),
                else_branch=branch(
                    "else",
                    [
                        helper.make_node("Cast", ["i"], ["fi"], to=F),
                        helper.make_node("Mul", ["x", "fi"], ["xi"]),
                        helper.make_node("Sub", ["v", "xi"], ["e"]),
                    ],
                    [vi("e", F, [4])],
                ),
            ),
        ],
        "body",
        [vi("i", I64, []), vi("ci", B, []), vi("v", F, [4])],
        [vi("co", B, []), vi("w", F, [4])],
    )
    m = model(
        [helper.make_node("Loop", ["M", "", "v0"], ["v"], body=body)],
        [vi("x", F, [4]), vi("v0", F, [4]), vi("c", B, [])],
        [vi("v", F, [4])],
        [init("M", np.int64(3))],
    )
    graph, _ = import_onnx(m)
    assert sum(n.op_type == "flexnn.IfSelect" for n in graph.nodes) == 3
    feeds = {"x": RNG.standard_normal(4).astype(np.float32), "v0": RNG.standard_normal(4).astype(np.float32)}
    assert_model_matches_ort(m, {**feeds, "c": np.array(c)}, tmp_path)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_, np.uint8])
def test_if_select_copies_the_taken_branch_without_allocating(dtype):
    from flexnnd.ops.control_flow import IfSelect
    from tests.ops.harness import assert_no_numpy_allocations

    op = IfSelect(outputs=2)
    cond = np.array([True])
    then = [np.arange(6).reshape(2, 3).astype(dtype), np.ones(4, dtype)]
    other = [np.zeros((2, 3), dtype), np.zeros(4, dtype)]
    outs = [np.empty((2, 3), dtype), np.empty(4, dtype)]
    shapes = [(1,), (2, 3), (4,), (2, 3), (4,)]
    assert op.infer(shapes, [None] * 5) == [(2, 3), (4,)]
    assert op.slice_axes(shapes, [(2, 3), (4,)]) == ()
    run = op.bind([cond, *then, *other], outs, None)
    for value, want in ((True, then), (False, other)):
        cond[0] = value
        assert_no_numpy_allocations(run)
        for got, expected, reference in zip(outs, want, op.reference([cond, *then, *other]), strict=True):
            np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(reference, expected)


def test_if_select_refuses_branches_that_disagree_and_is_not_an_onnx_op():
    from flexnnd.errors import DtypeRefused
    from flexnnd.ops.control_flow import IfSelect

    with pytest.raises(
        ShapeError, match=r"then branch outputs \[\(2, 3\)\], else branch outputs \[\(3, 2\)\]"
    ):
        IfSelect().infer([(), (2, 3), (3, 2)], [None] * 3)
    with pytest.raises(DtypeRefused, match="int64"):
        IfSelect().output_dtypes(["int64", "float32", "float32"])
    with pytest.raises(UnsupportedOp, match="flexnn's own op"):
        IfSelect.from_onnx({}, [None], "n", 17)
