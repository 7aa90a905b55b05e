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

from flexnnd.graph.elision import elidable_concats
from flexnnd.graph.ir import Graph, Node

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
        self.succ: list[list[int]] = [[] for _ in nodes]
        writers: dict[str, int] = {}
        readers: dict[str, int] = {}
        self.writes: list[tuple[str, ...]] = []
        self.reads: list[tuple[str, ...]] = []
        self.work: list[int] = []
        for i, node in enumerate(nodes):
            variables = [t for t in node.reads if t and not graph.is_constant(t)]
            for p in dict.fromkeys(producer[t] for t in variables if t in producer):
                self.pred[i] |= 1 << p
                self.succ[p].append(i)
            if not runs[i]:  # aliases and elided concats run nothing and hold nothing of their own
                self.writes.append(())
                self.reads.append(())
                self.work.append(0)
                continue
            read = tuple(dict.fromkeys(root(t) for t in variables))
            for r in read:
                readers[r] = readers.get(r, 0) | 1 << i
            written = tuple(dict.fromkeys(root(o) for o in node.outputs if o))
            for r in written:
                writers[r] = writers.get(r, 0) | 1 << i
            self.writes.append(written)
            self.reads.append(read)
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

    def opened(self, done: int, i: int) -> int:
        """Bytes of the roots node i opens when it runs after `done`."""
        return sum(self.nbytes[r] for r in self.writes[i] if not self.writers[r] & done)

    def closed(self, after: int, i: int) -> int:
        """Bytes of the roots whose last reader is node i, which ran last in `after`."""
        return sum(self.nbytes[r] for r in self.reads[i] if not self.readers[r] & ~after)

    def step(self, done: int, alive: int, i: int) -> int:
        """Bytes in use while node i runs after `done`: what is alive, its new outputs, its work."""
        if not self.writes[i]:
            return 0
        return alive + self.opened(done, i) + self.work[i]

    def ready(self, done: int) -> tuple[int, ...]:
        """The nodes not in `done` whose inputs all are."""
        return tuple(i for i in range(len(self.pred)) if not done >> i & 1 and not self.pred[i] & ~done)

    def ready_after(self, ready: tuple[int, ...], after: int, i: int) -> tuple[int, ...]:
        """ready(after) from ready(done) when `after` is `done` plus node i: only i's consumers join."""
        rest = [j for j in ready if j != i]
        joined = [j for j in self.succ[i] if not self.pred[j] & ~after]
        return tuple(sorted(rest + joined)) if joined else tuple(rest)


def memory_order(graph: Graph) -> tuple[Node, ...]:
    """The graph's nodes in a topological order that keeps the memory of each step low (see the
    module docstring); the original order where nothing is gained."""
    nodes = graph.nodes
    costs = _Costs(graph)
    full = (costs.source << 1) - 1
    order: list[int] = []
    done = costs.source
    at = (costs.alive(done), costs.ready(done))  # bytes alive and nodes ready after `done`
    while done != full:
        found = _segment(costs, done, at, full)
        if found is None:
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
        segment, at = found
        order.extend(segment)
        for i in segment:
            done |= 1 << i
    return tuple(nodes[i] for i in order)


def _segment(
    costs: _Costs, start: int, at: tuple[int, tuple[int, ...]], full: int
) -> tuple[list[int], tuple[int, tuple[int, ...]]] | None:
    """The best nodes to run from down-set `start` (`at`: bytes alive and nodes ready there) to the
    next down-set every order passes, and what is alive and ready there; None when there are too
    many orders to search."""
    # Level k: the down-sets reached by k more nodes, each with (bytes alive, ready nodes). Dicts
    # keep insertion order, and nodes are tried in index order: the result is deterministic.
    levels: list[dict[int, tuple[int, tuple[int, ...]]]] = [{start: at}]
    edges: dict[int, list[tuple[int, int, int]]] = {}  # down-set -> [(node, next down-set, cost)]
    explored = 0
    while True:
        level: dict[int, tuple[int, tuple[int, ...]]] = {}
        for done, (alive, candidates) in levels[-1].items():
            out = edges.setdefault(done, [])
            for i in candidates:
                after = done | 1 << i
                out.append((i, after, costs.step(done, alive, i)))
                if after not in level:
                    explored += 1
                    if explored > MAX_STATES:
                        return None
                    level[after] = (
                        alive + costs.opened(done, i) - costs.closed(after, i),
                        costs.ready_after(candidates, after, i),
                    )
        levels.append(level)
        if len(level) == 1:
            break
    # First the smallest peak over the segment (a bottleneck path, exact level by level) ...
    inf = float("inf")
    peak = {start: 0}
    for level in levels[:-1]:
        for done in level:
            for _, after, cost in edges[done]:
                peak[after] = min(peak.get(after, inf), max(peak[done], cost))
    ((end, end_at),) = levels[-1].items()
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
    state = end
    while state != start:
        state, i = back[state]
        path.append(i)
    return path[::-1], end_at
