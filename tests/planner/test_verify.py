"""The verifier accepts a valid streaming plan and rejects each way of breaking one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import helper

import flexnnd
from flexnnd.graph.onnx_import import import_onnx
from flexnnd.planner import verify
from flexnnd.planner.plan import Load
from flexnnd.planner.plan_budget import Planner, pack
from flexnnd.planner.resident import plan_resident
from flexnnd.planner.verify import operand_reuse
from tests.conftest import make_model
from tests.planner.plans import regions_with, streamed_plan


def test_valid_streaming_plan_passes(graph):
    verify(streamed_plan(graph), graph)


def test_resident_plan_passes(graph):
    verify(plan_resident(graph), graph)


def break_load(plan, **changes):
    return dataclasses.replace(plan, loads=(dataclasses.replace(plan.loads[0], **changes),))


def test_late_load_region_is_rejected(graph):
    plan = streamed_plan(graph)
    w2 = plan.loads[0].piece
    late = dataclasses.replace(plan, regions=regions_with(plan, **{w2: {"first": 1}}))
    with pytest.raises(
        flexnnd.PlanError,
        match=r"may write from step 0 until step 1, but its region is reserved only for steps 1-1",
    ):
        verify(late, graph)


def test_load_released_after_its_step_is_rejected(graph):
    with pytest.raises(flexnnd.PlanError, match="not before its step"):
        verify(break_load(streamed_plan(graph), after_step=1), graph)


def test_load_naming_the_wrong_step_is_rejected(graph):
    plan = streamed_plan(graph)
    w2 = plan.loads[0].piece
    plan = dataclasses.replace(plan, regions=regions_with(plan, **{w2: {"first": 0, "last": 2}}))
    with pytest.raises(flexnnd.PlanError):
        verify(break_load(plan, step=2), graph)


def test_overlap_with_a_streamed_piece_is_rejected(graph):
    plan = streamed_plan(graph)
    w2 = plan.loads[0].piece
    with pytest.raises(flexnnd.PlanError, match="overlap"):
        verify(dataclasses.replace(plan, regions=regions_with(plan, **{w2: {"offset": 0}})), graph)


def test_region_beyond_the_arena_is_rejected(graph):
    plan = streamed_plan(graph)
    with pytest.raises(flexnnd.PlanError, match="crosses the arena end"):
        verify(dataclasses.replace(plan, arena_bytes=plan.arena_bytes - 4096), graph)


def test_loads_out_of_file_order_are_rejected(graph):
    plan = streamed_plan(graph)
    (w1,) = [w for w in graph.constants if graph.tensors[w].shape == (64, 32)]
    region = plan.region[w1]
    # Stream fc1's weight too, but after fc2's in the load list: the file holds w1 first.
    plan = dataclasses.replace(
        plan,
        resident=tuple(r for r in plan.resident if r != w1),
        loads=(*plan.loads, Load(w1, -1, 0)),
        regions=regions_with(plan, **{w1: {"first": region.first, "last": 0}}),
    )
    with pytest.raises(flexnnd.PlanError, match="out of file order"):
        verify(plan, graph)


def test_piece_neither_resident_nor_streamed_is_rejected(graph):
    plan = streamed_plan(graph)
    with pytest.raises(flexnnd.PlanError, match="neither resident nor streamed"):
        verify(dataclasses.replace(plan, loads=()), graph)


def test_piece_both_resident_and_streamed_is_rejected(graph):
    plan = streamed_plan(graph)
    with pytest.raises(flexnnd.PlanError, match="both resident and streamed"):
        verify(dataclasses.replace(plan, resident=(*plan.resident, plan.loads[0].piece)), graph)


def test_step_reading_outside_a_tensor_lifetime_is_rejected(graph):
    plan = plan_resident(graph)
    with pytest.raises(flexnnd.PlanError, match="reserved only for steps"):
        verify(dataclasses.replace(plan, regions=regions_with(plan, r={"last": 0})), graph)


def test_region_smaller_than_its_piece_is_rejected(graph):
    plan = streamed_plan(graph)
    w2 = plan.loads[0].piece
    with pytest.raises(flexnnd.PlanError, match=r"has 4096 bytes but a 4000-byte region"):
        verify(dataclasses.replace(plan, regions=regions_with(plan, **{w2: {"nbytes": 4000}})), graph)


def test_region_smaller_than_its_tensor_is_rejected(graph):
    plan = streamed_plan(graph)
    with pytest.raises(flexnnd.PlanError, match=r"tensor 'r' has 256 bytes but a 128-byte region"):
        verify(dataclasses.replace(plan, regions=regions_with(plan, r={"nbytes": 128})), graph)


def conv_graph():
    """One 3x3 conv small enough that its channel parts share one im2col (Conv.shares_operand)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    inits = [("w", rng.standard_normal((64, 32, 3, 3)).astype(np.float32)), ("b", np.zeros(64, np.float32))]
    graph, _ = import_onnx(make_model(nodes, [("x", [1, 32, 7, 7])], [("y", None)], inits))
    return graph


def test_parts_sharing_an_operand_run_in_order():
    """A conv's later channel parts reuse the im2col the part before left in their scratch: the
    plan says so (operand_reuse) and verify() rejects a plan that runs them out of order."""
    graph = conv_graph()
    planner = Planner(graph)
    lay = planner.layout({"conv": ("channels", 2)})
    plan = pack(lay, planner, 1 << 30, frozenset(lay.pieces))  # all resident: only the order matters
    assert operand_reuse(plan, graph) == (False, True)
    verify(plan, graph)
    swapped = dataclasses.replace(plan, steps=plan.steps[::-1])
    with pytest.raises(flexnnd.PlanError, match="must run back to back, in order"):
        verify(swapped, graph)
