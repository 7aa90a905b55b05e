"""The best latency any streaming schedule can reach within a budget: the streaming floor.

With one loader reading at `read_bytes`/s and compute running the nodes in order, at the moment
node s starts the arena holds the activations alive then (no slicing shrinks them) and at most
the rest of the budget in weights that nodes s.. still need. Every other byte nodes s..t read
is still to be loaded, one after another, before node t+1 can start, so

    latency >= compute(nodes before s) + (weights(nodes s..t) - (budget - activations(s))) / rate
               + compute(nodes after t)

for every s <= t, and latency >= compute(all nodes). The largest of these is the floor: no plan of
this budget, however sliced or packed, beats it on this machine. The issue's simpler bound,
max(all-resident latency, streamed bytes / rate), ignores that the loader cannot run further
ahead than the free memory, so below some budget it asks for the impossible; the floor says where.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from flexnnd.graph.ir import Graph
from flexnnd.planner.plan_budget import Planner


def streaming_floor(
    graph: Graph,
    budget: int,
    node_seconds: Mapping[str, float],
    read_bytes: float,
    planner: Planner | None = None,
) -> float:
    """Seconds no plan within `budget` arena bytes can beat, given each node's compute time
    (`node_seconds`, all-resident) and the storage's read rate in bytes/s."""
    planner = planner or Planner(graph)
    steps = planner.life.steps
    if not steps:
        return 0.0
    activations = planner.activation_bytes()
    weights = np.zeros(len(steps), np.float64)
    last_use = {c: k for k, n in enumerate(steps) for c in n.inputs if c and graph.is_constant(c)}
    for name, k in last_use.items():  # a weight two nodes share is needed until the later one
        weights[k] += graph.tensors[name].nbytes
    seconds = np.array([node_seconds[n.name] for n in steps], np.float64)
    done = np.concatenate([[0.0], np.cumsum(seconds)])  # done[k]: compute of the nodes before k
    read = np.concatenate([[0], np.cumsum(weights)])  # read[k]: weights of the nodes before k
    free = np.maximum(budget - activations, 0)
    # [s, t]: from node s's start, the weights of nodes s..t not in memory then, read before node
    # t+1 starts; the nodes after t compute after that (t < s: no constraint).
    to_read = np.maximum(read[None, 1:] - read[:-1, None] - free[:, None], 0)
    bound = done[:-1, None] + to_read / read_bytes + (done[-1] - done[None, 1:])
    return float(max(done[-1], np.triu(bound).max()))
