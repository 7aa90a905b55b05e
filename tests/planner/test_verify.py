"""The verifier accepts a valid streaming plan and rejects each way of breaking one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import helper

import flexnnd
from flexnnd.graph.onnx_import import import_onnx
from flexnnd.planner import plan_resident, verify
from flexnnd.planner.plan import Load
from tests.conftest import make_model


@pytest.fixture(scope="module")
def graph():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2"),
    ]
    inits = [
        ("w1", rng.standard_normal((64, 32)).astype(np.float32)),
        ("b1", np.zeros(64, np.float32)),
        ("w2", rng.standard_normal((16, 64)).astype(np.float32)),
        ("b2", np.zeros(16, np.float32)),
    ]
    graph, _ = import_onnx(make_model(nodes, [("x", [1, 32])], [("y", None)], inits))
    return graph


def regions_with(plan, **changes):
    return tuple(dataclasses.replace(r, **changes[r.name]) if r.name in changes else r for r in plan.regions)


def streamed_plan(graph):
    """fc2's weight streamed: its load is released at the start (after step -1), read at step 1."""
    plan = plan_resident(graph)
    (w2,) = [w for w in graph.constants if graph.tensors[w].shape == (16, 64)]
    return dataclasses.replace(
        plan,
        arena_bytes=plan.arena_bytes + 4096,
        regions=regions_with(plan, **{w2: {"offset": plan.arena_bytes, "first": 0, "last": 1}}),
        resident=tuple(r for r in plan.resident if r != w2),
        loads=(Load(w2, -1, 1),),
    )


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
