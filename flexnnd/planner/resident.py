"""The plan of an unlimited budget: every weight resident, nothing sliced."""

from __future__ import annotations

from types import MappingProxyType

from flexnnd.graph.ir import Graph, Node, rows_of
from flexnnd.planner.lifetimes import lifetimes
from flexnnd.planner.pack import Request, place_greedy_by_size
from flexnnd.planner.plan import Plan, Step, WeightPiece, scratch_name
from flexnnd.planner.verify import verify


def constant_inputs(graph: Graph, node: Node) -> tuple[str, ...]:
    return tuple(i for i in node.inputs if i and graph.is_constant(i))


def plan_resident(graph: Graph) -> Plan:
    """Everything resident, no slicing: the plan of an unlimited budget.

    Weights live for the whole inference; activations and scratch share memory by lifetime.
    """
    life = lifetimes(graph)
    end = max(len(life.steps) - 1, 0)
    requests = [Request(w, graph.tensors[w].nbytes, 0, end) for w in graph.constants]
    for root, first in life.first.items():
        requests.append(Request(root, graph.tensors[root].nbytes, first, life.last[root]))
    for i, node in enumerate(life.steps):
        scratch = node.op.scratch_bytes(node.in_shapes)
        if scratch:
            requests.append(Request(scratch_name(node.name), scratch, i, i))
    regions, arena = place_greedy_by_size(requests)
    pieces = {w: WeightPiece(w, w, 0, rows_of(graph.tensors[w].shape)) for w in graph.constants}
    plan = Plan(
        model=graph.name,
        budget=None,
        arena_bytes=arena,
        steps=tuple(Step(n.name, None, constant_inputs(graph, n)) for n in life.steps),
        regions=tuple(sorted(regions, key=lambda r: (r.offset, r.first))),
        resident=graph.constants,
        aliases=MappingProxyType(life.aliases),
        offsets=MappingProxyType(life.offsets),
        pieces=MappingProxyType(pieces),
    )
    verify(plan, graph)
    return plan
