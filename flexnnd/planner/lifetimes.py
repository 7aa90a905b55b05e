"""Steps, storage roots and lifetimes of a graph's tensors."""

from __future__ import annotations

from dataclasses import dataclass

from flexnnd.graph.elision import elidable_concats
from flexnnd.graph.ir import Graph, Node


@dataclass(frozen=True)
class Lifetimes:
    steps: tuple[Node, ...]  # nodes that run, in order (alias and elided nodes run nothing)
    aliases: dict[str, str]  # tensor -> storage root
    offsets: dict[str, int]  # tensor -> byte offset inside its root (a slice of an elided Concat)
    first: dict[str, int]  # storage root -> step that writes it (0 for graph inputs)
    last: dict[str, int]  # storage root -> last step that reads it (the end for graph outputs and state)


def lifetimes(graph: Graph) -> Lifetimes:
    parent: dict[str, tuple[str, int]] = {}
    elided = elidable_concats(graph)
    steps: list[Node] = []
    for node in graph.nodes:
        if node.op.alias:
            parent[node.outputs[0]] = (node.inputs[0], 0)
        elif node.name in elided:
            for name, offset in elided[node.name]:
                parent[name] = (node.outputs[0], offset)
        else:
            steps.append(node)
    parent.update((out, (inp, 0)) for out, inp in in_place_state(graph) if out not in parent)
    aliases: dict[str, str] = {}
    offsets: dict[str, int] = {}
    for name in parent:
        root, offset = name, 0
        while root in parent:
            root, step_offset = parent[root]
            offset += step_offset
        aliases[name] = root
        if offset:  # zero offsets are implied (Plan.address), so plans compare equal after a round trip
            offsets[name] = offset
    end = max(len(steps) - 1, 0)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for t in graph.inputs:
        first[t.name] = 0
        last[t.name] = 0
    for i, node in enumerate(steps):
        for name in node.outputs:
            root = aliases.get(name, name)
            first.setdefault(root, i)
            last.setdefault(root, i)
        for name in node.reads:  # a guard's condition is read until the last step it guards
            if name and not graph.is_constant(name):
                root = aliases.get(name, name)
                last[root] = max(last.get(root, i), i)
    for t in graph.outputs:
        last[aliases.get(t.name, t.name)] = end
    for name in graph.state.values():  # kept from one run to the next: no activation may reuse it
        last[name] = end
    return Lifetimes(tuple(steps), aliases, offsets, first, last)


def in_place_state(graph: Graph) -> list[tuple[str, str]]:
    """State pairs whose output may take its input's storage: the output's node updates that input
    in place (`op.in_place`) and is its only reader, so the arena holds the state once, not twice."""
    readers: dict[str, list[Node]] = {}
    producer: dict[str, Node] = {}
    for node in graph.nodes:
        for name in set(node.reads):
            readers.setdefault(name, []).append(node)
        for name in node.outputs:
            producer[name] = node
    pairs = []
    for out, inp in graph.state.items():
        node = producer.get(out)
        if (
            node is not None
            and node.op.in_place
            and not node.guard
            and node.outputs[0] == out
            and node.inputs[0] == inp
            and node.inputs.count(inp) == 1
            and readers.get(inp) == [node]
        ):
            pairs.append((out, inp))
    return pairs
