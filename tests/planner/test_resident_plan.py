"""The resident plan's invariant: live regions never overlap, nothing crosses the arena's end."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flexnnd
from flexnnd.planner.pack import Request, place_greedy_by_size
from flexnnd.planner.plan import Plan, Region, check_no_overlap
from flexnnd.planner.resident import plan_resident


@given(
    st.lists(
        st.tuples(st.integers(1, 10_000), st.integers(0, 30), st.integers(0, 10)),
        min_size=1,
        max_size=60,
    )
)
@settings(max_examples=200, deadline=None)
def test_greedy_placement_never_overlaps_live_regions(specs):
    requests = [Request(f"t{i}", size, first, first + span) for i, (size, first, span) in enumerate(specs)]
    regions, arena = place_greedy_by_size(requests)
    plan = Plan("random", None, arena, (), tuple(regions), (), {})
    check_no_overlap(plan)
    # Never worse than giving every tensor its own memory.
    assert arena <= sum(-(-r.nbytes // 64) * 64 for r in requests)


def _plan(regions, arena):
    return Plan("hand", None, arena, (), tuple(regions), (), {})


def test_overlap_is_rejected_with_names_and_steps():
    a = Region("a", 0, 128, 0, 3)
    b = Region("b", 64, 128, 2, 5)
    with pytest.raises(flexnnd.PlanError, match=r"'a' .*steps 0-3.* and 'b' .*steps 2-5.* overlap"):
        check_no_overlap(_plan([a, b], 256))


def test_same_bytes_at_disjoint_steps_are_fine():
    check_no_overlap(_plan([Region("a", 0, 128, 0, 1), Region("b", 0, 128, 2, 3)], 128))


def test_crossing_the_arena_end_is_rejected():
    with pytest.raises(flexnnd.PlanError, match="crosses the arena end"):
        check_no_overlap(_plan([Region("a", 64, 128, 0, 0)], 128))


def test_misaligned_region_is_rejected():
    with pytest.raises(flexnnd.PlanError, match="not 64-byte aligned"):
        check_no_overlap(_plan([Region("a", 8, 64, 0, 0)], 128))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "squeezenet1_1", "googlenet"])
def test_zoo_resident_plans_hold_the_invariant(name, zoo_model, package_cache):
    from flexnnd.graph.package import read_package
    from flexnnd.runtime.session import package_for

    graph = read_package(package_for(zoo_model(name), package_cache)).graph
    plan = plan_resident(graph)
    check_no_overlap(plan)
    weights = sum(graph.tensors[w].nbytes for w in graph.constants)
    activations = sum(graph.tensors[r.name].nbytes for r in plan.regions if r.name in graph.tensors) - weights
    # Lifetime reuse: the arena holds all weights but far less than every activation at once.
    assert weights <= plan.arena_bytes < weights + activations
    broken = dataclasses.replace(plan, arena_bytes=plan.arena_bytes - 4096)
    with pytest.raises(flexnnd.PlanError):
        check_no_overlap(broken)
