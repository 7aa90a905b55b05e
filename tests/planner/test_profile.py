"""Profile by arithmetic and the one-loader, one-compute-thread latency simulator."""

from __future__ import annotations

import dataclasses

import pytest

from flexnnd.planner.profile import Machine, step_costs
from flexnnd.planner.resident import plan_resident
from flexnnd.planner.simulate import simulate
from tests.planner.plans import streamed_plan

MACHINE = Machine(
    gemm_flops=1e11, winograd_flops=2e11, depthwise_flops=2e10, memory_bytes=1e10, read_bytes=1e9
)


def test_costs_come_from_shapes(graph):
    costs = step_costs(graph)
    assert [c.node for c in costs] == ["fc1", "fc2"]
    fc1, fc2 = costs
    assert (fc1.weight_bytes, fc1.input_bytes, fc1.output_bytes) == ((64 * 32 + 64) * 4, 32 * 4, 64 * 4)
    assert fc2.weight_bytes == (16 * 64 + 16) * 4
    assert fc1.kind == fc2.kind == "fc"
    assert fc1.flops >= 2 * 64 * 32


def test_all_resident_plan_takes_the_sum_of_its_steps(graph):
    timeline = simulate(plan_resident(graph), [1.0, 2.0], {}, MACHINE)
    assert timeline.seconds == 3.0
    assert timeline.stall_seconds == 0.0


@pytest.mark.parametrize(("load_seconds", "expected"), [(0.5, 3.0), (1.5, 3.5)])
def test_a_load_overlaps_the_step_before_its_own(graph, load_seconds, expected):
    plan = streamed_plan(graph)  # fc2's weight is released at the start, read at step 1
    piece = plan.loads[0].piece
    timeline = simulate(plan, [1.0, 2.0], {piece: int(load_seconds * MACHINE.read_bytes)}, MACHINE)
    assert timeline.load_start == (0.0,)
    assert timeline.seconds == pytest.approx(expected)
    assert timeline.stall_seconds == pytest.approx(max(0.0, load_seconds - 1.0))


def test_a_load_released_late_waits_for_its_step(graph):
    plan = streamed_plan(graph)
    late = dataclasses.replace(plan, loads=(dataclasses.replace(plan.loads[0], after_step=0),))
    timeline = simulate(late, [1.0, 2.0], {late.loads[0].piece: int(0.5 * MACHINE.read_bytes)}, MACHINE)
    assert timeline.load_start == (1.0,)
    assert timeline.seconds == pytest.approx(3.5)


@pytest.mark.parametrize(("name", "gflops"), [("resnet18", 3.64), ("resnet50", 8.21), ("mobilenet_v2", 0.60)])
def test_zoo_flops_match_the_published_counts(name, gflops, zoo_model, package_cache):
    from flexnnd.graph.package import read_package
    from flexnnd.runtime.session import package_for

    graph = read_package(package_for(zoo_model(name), package_cache)).graph
    total = sum(c.flops for c in step_costs(graph) if c.kind != "memory") / 1e9
    assert total == pytest.approx(gflops, rel=0.05)


def test_a_fully_connected_layer_costs_at_least_streaming_its_weights():
    from flexnnd.planner.profile import StepCost

    fc = StepCost("fc", "fc", weight_bytes=64_000_000, input_bytes=16_000, output_bytes=16_000,
                  scratch_bytes=0, flops=2 * 16_000_000)  # fmt: skip
    streaming = dataclasses.replace(MACHINE, fc_bytes=2e10, step_overhead=0.0)
    assert fc.compute_seconds(streaming) == pytest.approx(64e6 / 2e10)  # bound by its weights
    assert fc.compute_seconds(dataclasses.replace(streaming, fc_bytes=0.0)) == pytest.approx(3.2e7 / 1e11)


def test_a_strided_depthwise_conv_costs_its_input_pixels(zoo_model, package_cache):
    """A depthwise kernel's time follows its input's pixels: stride 2 does a quarter of the FLOPs
    in about the time of stride 1 (measured here: 8.6 against 32 GFLOP/s)."""
    from flexnnd.graph.package import read_package
    from flexnnd.runtime.session import package_for

    graph = read_package(package_for(zoo_model("mobilenet_v2"), package_cache)).graph
    nodes = {n.name: n for n in graph.nodes}
    strides = {}
    for cost in step_costs(graph):
        if cost.kind == "depthwise":
            node = nodes[cost.node]
            strides[cost.node] = node.op.geometry(node.in_shapes[0], node.in_shapes[1][0]).sh
            assert cost.dense_flops == cost.flops * strides[cost.node] ** 2
        else:
            assert cost.dense_flops == 0
    assert sorted(set(strides.values())) == [1, 2]
    machine = dataclasses.replace(MACHINE, step_overhead=0.0)
    for cost in step_costs(graph):
        if cost.kind == "depthwise":
            assert cost.compute_seconds(machine) == pytest.approx(cost.dense_flops / MACHINE.depthwise_flops)


def test_compute_loses_read_cpu_per_byte_read_meanwhile(graph):
    plan = streamed_plan(graph)  # fc2's weight is read during step 0
    piece = plan.loads[0].piece
    nbytes = int(0.5 * MACHINE.read_bytes)  # half of step 0
    costly = dataclasses.replace(MACHINE, read_cpu=0.2 / nbytes)  # the read costs 0.2 s of compute
    timeline = simulate(plan, [1.0, 2.0], {piece: nbytes}, costly)
    assert timeline.compute_end[0] == pytest.approx(1.2)
    assert timeline.seconds == pytest.approx(3.2)
    assert timeline.stall_seconds == pytest.approx(0.0)


def test_a_read_the_compute_waits_for_costs_no_compute(graph):
    plan = streamed_plan(graph)
    late = dataclasses.replace(plan, loads=(dataclasses.replace(plan.loads[0], after_step=0),))
    nbytes = int(0.5 * MACHINE.read_bytes)
    costly = dataclasses.replace(MACHINE, read_cpu=0.2 / nbytes)
    timeline = simulate(late, [1.0, 2.0], {late.loads[0].piece: nbytes}, costly)
    assert timeline.seconds == pytest.approx(3.5)  # read alone in [1, 1.5], then step 1
    assert timeline.stall_seconds == pytest.approx(0.5)


def test_a_read_spanning_steps_slows_each_by_its_overlap(graph):
    plan = streamed_plan(graph)
    nbytes = int(2.0 * MACHINE.read_bytes)  # in flight through all of step 0
    costly = dataclasses.replace(MACHINE, read_cpu=0.5 / int(1.0 * MACHINE.read_bytes))
    timeline = simulate(plan, [1.0, 2.0], {plan.loads[0].piece: nbytes}, costly)
    assert timeline.compute_end[0] == pytest.approx(2.0)  # at half speed while the read runs
    assert timeline.seconds == pytest.approx(4.0)  # step 1 waits for the read to end at 2.0
