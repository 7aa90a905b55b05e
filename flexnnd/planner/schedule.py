"""A memory-aware execution order: which branch of a block runs first decides what is alive when.

Every topological order of the nodes is a path through the graph's down-sets (the sets of nodes
already run). Where all orders meet (a down-set that is the only one of its size, such as the
tensor between two inception blocks) the choice starts over, so each segment between two such cuts
is solved exactly on its own: first the smallest peak, where a step costs the activations alive
during it plus its own weights and scratch; then the smallest sum of those costs; then the fewest
nodes moved out of the original order, so a graph with nothing to gain keeps its order.
"""

from __future__ import annotations

import logging

from flexnnd.graph.ir import Graph, Node
from flexnnd.planner.lifetimes import elidable_concats

log = logging.getLogger(__name__)

# Down-sets explored per segment; a wider segment (many independent branches) keeps the original
# order from there on, since the exact search grows exponentially with the number of branches.
MAX_STATES = 20_000


class _Costs:
    """Per node and per storage root, as bit masks over node indices, what a step costs."""

    def __init__(self, graph: Graph):
        nodes = graph.nodes
        elided = elidable_concats(graph)
        parent: dict[str, str] = {}
        runs = []
        for node in nodes:
            if node.op.alias:
                parent[node.outputs[0]] = node.inputs[0]
            elif node.name in elided:
                for name, _ in elided[node.name]:
                    parent[name] = node.outputs[0]
            runs.append(not node.op.alias and node.name not in elided)

        def root(name: str) -> str:
            while name in parent:
                name = parent[name]
            return name

        producer = {o: i for i, n in enumerate(nodes) for o in n.outputs if o}
        self.pred = [0] * len(nodes)
        writers: dict[str, int] = {}
        readers: dict[str, int] = {}
        self.writes: list[tuple[str, ...]] = []
        self.work: list[int] = []
        for i, node in enumerate(nodes):
            variables = [t for t in node.inputs if t and not graph.is_constant(t)]
            for t in variables:
                if t in producer:
                    self.pred[i] |= 1 << producer[t]
            if not runs[i]:  # aliases and elided concats run nothing and hold nothing of their own
                self.writes.append(())
                self.work.append(0)
                continue
            for t in variables:
                readers[root(t)] = readers.get(root(t), 0) | 1 << i
            written = tuple(dict.fromkeys(root(o) for o in node.outputs if o))
            for r in written:
                writers[r] = writers.get(r, 0) | 1 << i
            self.writes.append(written)
            weights = sum(graph.tensors[t].nbytes for t in node.inputs if t and graph.is_constant(t))
            self.work.append(weights + node.op.scratch_bytes(node.in_shapes))
        inputs = {root(t.name) for t in graph.inputs}
        outputs = {root(t.name) for t in graph.outputs}
        self.roots = sorted(set(writers) | inputs)
        self.nbytes = {r: graph.tensors[r].nbytes for r in self.roots}
        # A root opens once a writer ran and closes once every reader ran. Two more bits: a source
        # that has always run (it writes the graph inputs) and a sink that never runs (it reads
        # the graph outputs).
        self.source = 1 << len(nodes)
        sink = self.source << 1
        self.writers = {r: self.source if r in inputs else writers.get(r, 0) for r in self.roots}
        self.readers = {r: sink if r in outputs else readers.get(r, 0) for r in self.roots}

    def alive(self, done: int) -> int:
        """Bytes of the roots open after the nodes in `done` ran."""
        return sum(self.nbytes[r] for r in self.roots if self.writers[r] & done and self.readers[r] & ~done)

    def step(self, done: int, alive: int, i: int) -> int:
        """Bytes in use while node i runs after `done`: what is alive, its new outputs, its work."""
        if not self.writes[i]:
            return 0
        new = sum(self.nbytes[r] for r in self.writes[i] if not self.writers[r] & done)
        return alive + new + self.work[i]


def memory_order(graph: Graph) -> tuple[Node, ...]:
    """The graph's nodes in a topological order that keeps the memory of each step low (see the
    module docstring); the original order where nothing is gained."""
    nodes = graph.nodes
    costs = _Costs(graph)
    full = (costs.source << 1) - 1
    order: list[int] = []
    done = costs.source
    while done != full:
        segment = _segment(costs, done, full)
        if segment is None:
            log.warning(
                "graph %r: a segment after node %d of %d has over %d partial orders; the rest keeps "
                "its original order",
                graph.name,
                len(order),
                len(nodes),
                MAX_STATES,
            )
            order.extend(i for i in range(len(nodes)) if not done >> i & 1)
            break
        order.extend(segment)
        for i in segment:
            done |= 1 << i
    return tuple(nodes[i] for i in order)


def _segment(costs: _Costs, start: int, full: int) -> list[int] | None:
    """The best nodes to run from down-set `start` to the next down-set every order passes."""
    pred = costs.pred
    # Level k: the down-sets reached by k more nodes. Dicts keep insertion order: deterministic.
    levels: list[dict[int, int]] = [{start: costs.alive(start)}]
    edges: dict[int, list[tuple[int, int, int]]] = {}  # down-set -> [(node, next down-set, cost)]
    explored = 0
    while True:
        level: dict[int, int] = {}
        for done, alive in levels[-1].items():
            out = edges.setdefault(done, [])
            for i in range(len(pred)):
                if done >> i & 1 or pred[i] & ~done:
                    continue
                after = done | 1 << i
                out.append((i, after, costs.step(done, alive, i)))
                if after not in level:
                    level[after] = costs.alive(after)
        levels.append(level)
        explored += len(level)
        if explored > MAX_STATES:
            return None
        if len(level) == 1:
            break
    # First the smallest peak over the segment (a bottleneck path, exact level by level) ...
    inf = float("inf")
    peak = {start: 0}
    for level in levels[:-1]:
        for done in level:
            for _, after, cost in edges[done]:
                peak[after] = min(peak.get(after, inf), max(peak[done], cost))
    (end,) = levels[-1]
    limit = peak[end]
    # ... then, among the paths that stay within it, the smallest (sum of costs, nodes overtaken).
    best: dict[int, tuple[int, int]] = {start: (0, 0)}
    back: dict[int, tuple[int, int]] = {}
    for level in levels[:-1]:
        for done in level:
            if done not in best:
                continue
            total, moved = best[done]
            for i, after, cost in edges[done]:
                if cost > limit:
                    continue
                # Nodes before i in the original order that have not run yet: i overtakes them.
                value = (total + cost, moved + (~done & ((1 << i) - 1) & full).bit_count())
                if after not in best or value < best[after]:
                    best[after] = value
                    back[after] = (done, i)
    path = []
    at = end
    while at != start:
        at, i = back[at]
        path.append(i)
    return path[::-1]
