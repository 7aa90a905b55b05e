"""The streaming floor, and the simulator choosing between slicings.

The floor is a bound on every schedule of a budget; the simulator's run of any plan obeys it, so
a plan's latency can be judged against what the budget allows, not only against all-resident."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flexnnd
from flexnnd.graph.onnx_import import import_onnx
from flexnnd.planner.bound import streaming_floor
from flexnnd.planner.ladder import SLOW_READS, build_ladder, expected_timeline, timeline
from flexnnd.planner.plan_budget import (
    Planner,
    _fill,
    max_slicing,
    pack,
    plan_for_budget,
    plan_with_slicing,
    slicing_of,
    smallest_plan,
)
from flexnnd.planner.profile import Machine, step_costs
from flexnnd.planner.resident import plan_resident
from flexnnd.planner.simulate import simulate
from tests.planner.plans import streamed_plan, two_layer_graph
from tests.planner.test_random_plans import layered_graphs

MACHINE = Machine(
    gemm_flops=5e10, winograd_flops=8e10, depthwise_flops=1e10, memory_bytes=1e10, read_bytes=2e8
)


# This machine's calibration, rounded.
LIKE_THIS_ONE = Machine(gemm_flops=8.6e10, winograd_flops=1.29e11, depthwise_flops=2.83e10, memory_bytes=2.22e10,
                        read_bytes=1.4e9, read_latency=5e-5, part_bytes=1.57e10, fc_bytes=2.59e10)  # fmt: skip


def node_seconds(graph, machine=MACHINE):
    return {c.node: c.compute_seconds(machine) for c in step_costs(graph)}


def test_the_floor_is_compute_with_room_and_reading_without():
    graph = two_layer_graph()
    planner = Planner(graph)
    seconds = {"fc1": 1.0, "fc2": 2.0}
    weights = {n: sum(graph.tensors[i].nbytes for i in node.inputs if graph.is_constant(i))
               for n, node in ((s.name, s) for s in planner.life.steps)}  # fmt: skip
    rate = 1000.0
    assert streaming_floor(graph, 1 << 30, seconds, rate, planner) == 3.0
    # No room beside the activations: every weight byte is read after the model starts, and
    # fc2's after fc1 has run.
    tight = int(planner.activation_bytes().max())
    free = tight - planner.activation_bytes()
    want = max(
        3.0, (weights["fc1"] + weights["fc2"] - free[0]) / rate, 1.0 + (weights["fc2"] - free[1]) / rate
    )
    assert streaming_floor(graph, tight, seconds, rate, planner) == pytest.approx(want)
    assert want > 3.0


def test_the_floor_counts_the_compute_after_the_weights_a_node_waits_for():
    """fc2 computes long after fc1's weights are in: the loader's head start on fc2 does not help
    while fc1 waits, so reading fc1's weights and then computing fc2 bounds the latency."""
    graph = two_layer_graph()
    planner = Planner(graph)
    seconds = {"fc1": 1.0, "fc2": 10.0}
    w1, w2 = (
        sum(graph.tensors[i].nbytes for i in s.inputs if graph.is_constant(i)) for s in planner.life.steps
    )
    rate = 1000.0
    tight = int(planner.activation_bytes().max())
    f0, f1 = tight - planner.activation_bytes()
    later = max(w1 - f0, 0) / rate + 10.0  # fc1's weights read from the start, then fc2 computes
    overall = max(11.0, max(w1 + w2 - f0, 0) / rate, 1.0 + max(w2 - f1, 0) / rate)
    assert later > overall  # what a bound over the remaining reads alone missed
    assert streaming_floor(graph, tight, seconds, rate, planner) == pytest.approx(later)


@given(model=layered_graphs(), fraction=st.floats(0.02, 1.0))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_plan_beats_the_floor_and_choosing_never_loses(model, fraction):
    graph, _ = import_onnx(model)
    planner = Planner(graph)
    budget = int(plan_resident(graph).arena_bytes * fraction)
    cost = node_seconds(graph)
    costs = {c.node: c for c in step_costs(graph)}
    run = lambda p: timeline(graph, p, MACHINE, costs)  # noqa: E731
    try:
        fitted = plan_for_budget(graph, budget, planner)
    except flexnnd.BudgetTooSmall:
        return
    chosen = plan_for_budget(graph, budget, planner, run)
    assert chosen.arena_bytes <= budget
    assert run(chosen).seconds <= run(fitted).seconds
    for plan in (fitted, chosen):
        floor = streaming_floor(graph, plan.arena_bytes, cost, MACHINE.read_bytes, planner)
        assert run(plan).seconds >= floor * (1 - 1e-9)


@pytest.fixture(scope="module")
def resnet18(zoo_model):
    graph, _ = import_onnx(onnx.load(str(zoo_model("resnet18"))))
    return graph


def test_the_smallest_plan_loads_ahead_within_its_own_arena(resnet18):
    planner = Planner(resnet18)
    lay = planner.layout(max_slicing(resnet18, planner))
    small = frozenset(p for p, w in lay.pieces.items() if w.tensor in planner.small)
    tight = pack(lay, planner, 1 << 62, small, preload=False)
    plan = smallest_plan(resnet18, planner)
    assert plan.arena_bytes == plan.budget == tight.arena_bytes
    ahead = sum(ld.after_step < ld.step - 1 for ld in plan.loads)
    assert ahead > len(plan.loads) // 2, (
        f"only {ahead} of {len(plan.loads)} loads start before the step ahead"
    )
    assert timeline(resnet18, plan, MACHINE).seconds < 0.9 * timeline(resnet18, tight, MACHINE).seconds


def test_the_simulator_cuts_big_weights_where_that_streams_faster(resnet18):
    """At 40% of all-resident on a machine like this one, the plan that only fits streams
    layer4's 9 MB weights whole, each waited for in full; sliced, they stream while earlier
    layers compute, and the simulator takes that plan."""
    machine = dataclasses.replace(MACHINE, gemm_flops=8.6e10, winograd_flops=1.45e11, read_bytes=1.4e9)
    planner = Planner(resnet18)
    run = lambda p: timeline(resnet18, p, machine)  # noqa: E731
    budget = plan_resident(resnet18).arena_bytes * 2 // 5
    fitted = plan_for_budget(resnet18, budget, planner)
    chosen = plan_for_budget(resnet18, budget, planner, run)
    assert not any(s.node.startswith("/layer4") and s.part for s in fitted.steps)
    assert any(s.node.startswith("/layer4") and s.part and s.part.axis == "channels" for s in chosen.steps)
    assert run(chosen).seconds < 0.9 * run(fitted).seconds


def test_each_read_pays_the_storage_latency():
    graph = two_layer_graph()
    plan = streamed_plan(graph)
    piece = plan.loads[0].piece
    slow = dataclasses.replace(MACHINE, read_latency=0.5)
    nbytes = {piece: int(0.25 * MACHINE.read_bytes)}
    assert simulate(plan, [1.0, 2.0], nbytes, MACHINE).seconds == pytest.approx(3.0)
    assert simulate(plan, [0.5, 2.0], nbytes, slow).seconds == pytest.approx(0.75 + 2.0)
    assert np.isfinite(slow.read_latency)


def test_channel_parts_pay_for_the_operand_they_share(resnet18):
    """Cut into 16 channel parts, layer4's first conv costs its share per part plus a read of its
    im2col per part; cut by rows, parts share nothing."""
    costs = {c.node: c for c in step_costs(resnet18)}
    conv = costs["/layer4/1/conv1/Conv"]
    assert conv.shared_bytes == 4 * 512 * 9 * 7 * 7
    machine = dataclasses.replace(MACHINE, part_bytes=1e9)
    whole = conv.compute_seconds(machine)
    part = conv.part_seconds(machine, 16, channels=True)
    assert part == pytest.approx(whole / 16 + machine.step_overhead + conv.shared_bytes / 1e9)
    assert conv.part_seconds(machine, 16, channels=False) == pytest.approx(whole / 16 + machine.step_overhead)
    assert conv.part_seconds(MACHINE, 16, channels=True) == pytest.approx(whole / 16 + MACHINE.step_overhead)
    assert costs["/fc/Gemm"].shared_bytes == 4 * 512


def test_the_bottom_rung_takes_a_coarser_slicing_when_it_fits_and_runs_faster(resnet18):
    """Maximal slicing sets the smallest budget; within it the ladder's bottom rung is the fastest
    plan found (ResNet-18: fewer, bigger pieces), never slower and never bigger."""
    machine = dataclasses.replace(MACHINE, read_bytes=1.4e9, read_latency=5e-5, part_bytes=2e9)
    smallest = smallest_plan(resnet18, Planner(resnet18))
    bottom = build_ladder(resnet18, machine)[0]
    assert bottom.arena_bytes <= smallest.arena_bytes == bottom.budget
    assert len(bottom.steps) < len(smallest.steps)
    assert bottom.predicted_seconds < timeline(resnet18, smallest, machine).seconds


def test_a_bigger_budget_is_never_predicted_slower(resnet18):
    """Each rung also tries the slicing of the rung below it, which fits and leaves more room for
    resident weights, so the ladder's predicted latency falls as the budget grows."""
    machine = dataclasses.replace(MACHINE, gemm_flops=8.6e10, winograd_flops=1.45e11, read_bytes=2.8e9,
                                  read_latency=5e-5, part_bytes=2e9)  # fmt: skip
    predicted = [p.predicted_seconds for p in build_ladder(resnet18, machine)]
    for i in range(1, len(predicted)):
        assert predicted[i] <= min(predicted[:i]) * (1 + 1e-9), f"rung {i}: {predicted}"


def test_the_latest_pieces_become_resident_where_that_streams_faster(zoo_model):
    """MobileNetV2 at 55% of all-resident, on a machine like this one: its biggest whole weights
    are early convs, and keeping them resident leaves too little memory to load the 5 MB
    classifier ahead. The simulator takes the plan that keeps the classifier's pieces instead."""
    graph, _ = import_onnx(onnx.load(str(zoo_model("mobilenet_v2"))))
    planner = Planner(graph)
    run = lambda p: timeline(graph, p, LIKE_THIS_ONE)  # noqa: E731
    budget = plan_resident(graph).arena_bytes * 55 // 100
    chosen = plan_for_budget(graph, budget, planner, run)
    biggest = plan_with_slicing(planner, budget, slicing_of(chosen))  # biggest whole weights resident
    assert any(r.startswith("classifier.1.weight") for r in chosen.resident)
    assert not any(r.startswith("classifier.1.weight") for r in biggest.resident)
    assert run(chosen).seconds < 0.95 * run(biggest).seconds


def test_a_stalling_plan_holds_less_resident_where_that_loads_further_ahead(resnet18):
    """ResNet-18 at 35% of all-resident: filled with resident weights, either the biggest or the
    latest, the arena leaves too little room to load layer4 ahead while layers 1-3 compute. Streamed
    nearly whole, every byte of the budget is free to load ahead, and the simulator takes that."""
    planner = Planner(resnet18)
    run = lambda p: timeline(resnet18, p, LIKE_THIS_ONE)  # noqa: E731
    budget = plan_resident(resnet18).arena_bytes * 35 // 100
    chosen = plan_for_budget(resnet18, budget, planner, run)
    lay = planner.layout(slicing_of(chosen))
    filled = [_fill(planner, lay, budget), _fill(planner, lay, budget, latest_first=True)]
    resident = sum(chosen.region[r].nbytes for r in chosen.resident)
    assert resident < 0.05 * budget < min(sum(p.region[r].nbytes for r in p.resident) for p in filled)
    assert run(chosen).seconds < 0.95 * min(run(p).seconds for p in filled)


def test_plans_are_chosen_to_hold_up_when_reads_slow_down(resnet18):
    """ResNet-18 at 85%: at the calibrated read rate, streaming nearly everything wins by a little;
    at 0.7x that rate it loses by a lot. Chosen by the latency averaged over both rates, the plan
    keeps most of the budget resident and is the faster one when reads slow down."""
    planner = Planner(resnet18)
    slow = dataclasses.replace(LIKE_THIS_ONE, read_bytes=LIKE_THIS_ONE.read_bytes * SLOW_READS)
    budget = plan_resident(resnet18).arena_bytes * 85 // 100
    fast_only = plan_for_budget(resnet18, budget, planner, lambda p: timeline(resnet18, p, LIKE_THIS_ONE))
    chosen = plan_for_budget(
        resnet18, budget, planner, lambda p: expected_timeline(resnet18, p, LIKE_THIS_ONE)
    )
    held = [sum(p.region[r].nbytes for r in p.resident) for p in (fast_only, chosen)]
    assert held[0] < 0.5 * budget < held[1]
    assert timeline(resnet18, chosen, slow).seconds < 0.9 * timeline(resnet18, fast_only, slow).seconds
    expected = [expected_timeline(resnet18, p, LIKE_THIS_ONE).seconds for p in (fast_only, chosen)]
    assert expected[1] < expected[0]
