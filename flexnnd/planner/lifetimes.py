"""Steps, storage roots and lifetimes of a graph's tensors."""

from __future__ import annotations

from dataclasses import dataclass

from flexnnd.graph.ir import Graph, Node


@dataclass(frozen=True)
class Lifetimes:
    steps: tuple[Node, ...]  # nodes that run, in order (alias nodes run nothing)
    aliases: dict[str, str]  # tensor -> storage root
    first: dict[str, int]  # storage root -> step that writes it (0 for graph inputs)
    last: dict[str, int]  # storage root -> last step that reads it (the end for graph outputs)


def lifetimes(graph: Graph) -> Lifetimes:
    aliases: dict[str, str] = {}
    steps: list[Node] = []
    for node in graph.nodes:
        if node.op.alias:
            src = node.inputs[0]
            aliases[node.outputs[0]] = aliases.get(src, src)
        else:
            steps.append(node)
    end = max(len(steps) - 1, 0)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for t in graph.inputs:
        first[t.name] = 0
        last[t.name] = 0
    for i, node in enumerate(steps):
        for name in node.outputs:
            first.setdefault(aliases.get(name, name), i)
            last.setdefault(aliases.get(name, name), i)
        for name in node.inputs:
            if name and not graph.is_constant(name):
                root = aliases.get(name, name)
                last[root] = max(last.get(root, i), i)
    for t in graph.outputs:
        last[aliases.get(t.name, t.name)] = end
    return Lifetimes(tuple(steps), aliases, first, last)
