"""Concats whose inputs are written straight into their slice of the output: a property of the
graph that the import's node order and the planner's lifetimes both follow."""

from __future__ import annotations

from flexnnd.graph.ir import Graph


def elidable_concats(graph: Graph) -> dict[str, list[tuple[str, int]]]:
    """Concats (ops with a concat_axis) whose inputs can be written straight into their slice of
    the output.

    That needs the slices to be contiguous (every dimension before the axis is 1) and each input
    to be an activation computed by a kernel for this concat alone: not a graph input or output,
    not a constant, not an alias, not listed twice. Returns node name -> [(input, byte offset)].
    """
    producers = {o: n for n in graph.nodes for o in n.outputs}
    outputs = {t.name for t in graph.outputs}
    claimed: set[str] = set()
    result: dict[str, list[tuple[str, int]]] = {}
    for node in graph.nodes:
        axis = node.op.concat_axis()
        if axis is None:
            continue
        shape = graph.shape(node.outputs[0])
        axis %= len(shape)
        names = list(node.inputs)
        ok = all(d == 1 for d in shape[:axis]) and len(set(names)) == len(names)
        for name in names:
            producer = producers.get(name)
            ok = ok and (
                producer is not None
                and not producer.op.alias
                and name not in outputs
                and name not in claimed
                and not graph.is_constant(name)
            )
        if not ok:
            continue
        offset, pieces = 0, []
        for name in names:
            pieces.append((name, offset))
            offset += graph.tensors[name].nbytes
        claimed.update(names)
        result[node.name] = pieces
    return result
