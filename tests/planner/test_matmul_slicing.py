"""Transformers' Linear layers (MatMul by a constant weight) streamed in output-column pieces: the
smallest plan cuts them, and the mini models still equal ONNX Runtime at full and smallest budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd import zoo
from flexnnd.graph.ir import rows_of
from flexnnd.graph.onnx_import import import_onnx
from flexnnd.ops.base import Axis
from flexnnd.planner.plan_budget import smallest_plan
from flexnnd.planner.profile import Machine, step_costs
from tests.conftest import assert_model_matches_ort
from tests.zoo.inputs import example_feeds


def lm_head_model(vocab: int = 4099, hidden: int = 64, seq: int = 3) -> onnx.ModelProto:
    """x[1, S, H] @ W[H, V]: a tied LM head, far larger than anything else in the graph."""
    w = np.random.default_rng(5).standard_normal((hidden, vocab), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"], name="lm_head")],
        "lm_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, seq, vocab])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def matmul_parts(plan, graph) -> dict[str, int]:
    """MatMul node -> the number of output-column parts the plan runs it in (1 = whole)."""
    counts: dict[str, int] = {}
    kinds = {n.name: n.op_type for n in graph.nodes}
    for step in plan.steps:
        if kinds[step.node] == "MatMul":
            counts[step.node] = counts.get(step.node, 0) + 1
            assert step.part is None or step.part.axis is Axis.CHANNELS
    return counts


def test_lm_head_weight_streams_in_column_pieces(tmp_path):
    model = lm_head_model()
    feeds = {"x": np.random.default_rng(6).standard_normal((1, 3, 64), dtype=np.float32)}
    resident_arena, smallest_arena = assert_model_matches_ort(model, feeds, tmp_path)
    weight = 64 * 4099 * 4
    assert resident_arena >= weight
    # Before, the whole 1 MB weight had to be resident; now only a piece of its rows at a time.
    assert smallest_arena < weight // 4
    graph, _ = import_onnx(model)
    plan = smallest_plan(graph)
    assert matmul_parts(plan, graph)["lm_head"] > 4
    # Pieces are row ranges of the prepared (V, H) weight, covering it once, in order.
    pieces = [plan.pieces[w] for s in plan.steps for w in s.weights]
    (tensor,) = {p.tensor for p in pieces}
    assert graph.tensors[tensor].shape == (4099, 64)
    assert [p.start for p in pieces] == [0] + [p.stop for p in pieces[:-1]]
    assert pieces[-1].stop == rows_of(graph.tensors[tensor].shape)


@pytest.mark.parametrize("name", ["gpt2_mini", "bert_mini", "vit_mini"])
def test_mini_transformer_matches_onnxruntime_with_sliced_matmuls(name, tmp_path):
    model = zoo.build(name)
    feeds = example_feeds(model, 11)
    resident_arena, smallest_arena = assert_model_matches_ort(model, feeds, tmp_path)
    assert smallest_arena < resident_arena
    graph, _ = import_onnx(model)
    # The smallest plan cuts some MatMul by a constant weight; attention's MatMuls stay whole.
    parts = matmul_parts(smallest_plan(graph), graph)
    nodes = {n.name: n for n in graph.nodes}
    constant_b = {m for m in parts if graph.is_constant(nodes[m].inputs[1])}
    assert any(parts[m] > 1 for m in constant_b)
    assert all(parts[m] == 1 for m in set(parts) - constant_b)


def test_sliced_matmul_is_priced_as_a_fully_connected_layer():
    """The simulator prices a MatMul by a weight as Gemm: streaming its weights or its FLOPs, and
    each column part pays its share, its dispatch and a re-read of A."""
    graph, _ = import_onnx(lm_head_model(vocab=2048, hidden=256, seq=4))
    (cost,) = [c for c in step_costs(graph) if c.node == "lm_head"]
    assert cost.kind == "fc" and cost.weight_bytes == 2048 * 256 * 4
    assert cost.flops == 2 * 4 * 256 * 2048 and cost.shared_bytes == 4 * 4 * 256
    machine = Machine(
        gemm_flops=1e10, winograd_flops=1e10, depthwise_flops=1e9, memory_bytes=1e10, read_bytes=1e9,
        fc_bytes=1e10, part_bytes=1e10,
    )  # fmt: skip
    whole = cost.compute_seconds(machine)
    assert whole == pytest.approx(max(cost.flops / 1e10, cost.weight_bytes / 1e10) + machine.step_overhead)
    part = cost.part_seconds(machine, 8, channels=True)
    assert part == pytest.approx(whole / 8 + machine.step_overhead + cost.shared_bytes / 1e10)
    assert whole < 8 * part < whole + 8 * (machine.step_overhead + cost.shared_bytes / 1e10) + 1e-12
