"""Plans under a budget: slice the bottleneck steps, stream weights, decide every offset offline.

Memory is the (step × byte offset) plane. Activations live longest and fragment it most, so
they (and each step's scratch) are placed first; then the resident weight pieces, which are
reserved for every step; then the streamed pieces in file order, each as early as a gap of its
size stays free until its last reader ends — that start is its preload. Slicing is chosen per
budget: the step that needs the most memory is split further (its weights by output channels,
or its scratch by bands of output rows) until the plan fits.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from flexnnd.errors import BudgetTooSmall
from flexnnd.graph.ir import Graph, Node
from flexnnd.ops.base import Part
from flexnnd.planner.lifetimes import lifetimes
from flexnnd.planner.pack import Request, align, lowest_fit, place_greedy_by_size
from flexnnd.planner.plan import Load, Plan, Region, Step, WeightPiece, piece_nbytes, scratch_name
from flexnnd.planner.verify import verify

# Weights this small are always resident: streaming them costs a read call for nothing.
ALWAYS_RESIDENT_BYTES = 64 * 1024
# A channel slice keeps at least this many output channels (below, GEMMs lose their SIMD width).
MIN_CHANNELS_PER_PART = 16
# A row band keeps at least this many output pixels (columns of the im2col GEMM).
MIN_PIXELS_PER_BAND = 256

Slicing = Mapping[str, tuple[str, int]]  # node -> (axis, number of parts)


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    bounds = [total * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


@dataclass(frozen=True)
class Layout:
    """Steps, pieces and lifetimes of one slicing, before any offset is chosen."""

    steps: tuple[Step, ...]
    nodes: tuple[Node, ...]  # the node of each step
    pieces: Mapping[str, WeightPiece]
    piece_steps: Mapping[str, tuple[int, int]]  # piece -> (first, last) step reading it
    requests: tuple[Request, ...]  # activations and scratch, with their lifetimes
    aliases: Mapping[str, str]
    offsets: Mapping[str, int]


def layout(graph: Graph, slicing: Slicing) -> Layout:
    life = lifetimes(graph)
    steps: list[Step] = []
    nodes: list[Node] = []
    pieces: dict[str, WeightPiece] = {}
    piece_steps: dict[str, tuple[int, int]] = {}
    node_span: dict[str, tuple[int, int]] = {}
    scratch: dict[str, int] = {}
    for node in life.steps:
        constants = [i for i in node.inputs if i and graph.is_constant(i)]
        axis, count = slicing.get(node.name, ("", 1))
        first = len(steps)
        if axis == "channels":
            parts = [Part("channels", a, b) for a, b in _split(graph.shape(constants[0])[0], count)]
        elif axis == "rows":
            parts = [Part("rows", a, b) for a, b in _split(graph.shape(node.outputs[0])[2], count)]
        else:
            parts = [None]
        for part in parts:
            names = []
            for tensor in constants:
                rows = graph.shape(tensor)[0]
                if part is not None and part.axis == "channels":
                    piece = WeightPiece(f"{tensor}[{part.start}:{part.stop}]", tensor, part.start, part.stop)
                else:
                    piece = WeightPiece(tensor, tensor, 0, rows)
                pieces[piece.name] = piece
                lo, _ = piece_steps.get(piece.name, (len(steps), 0))
                piece_steps[piece.name] = (lo, len(steps))
                names.append(piece.name)
            need = node.op.scratch_bytes(node.in_shapes, part)
            scratch[node.name] = max(scratch.get(node.name, 0), need)
            steps.append(Step(node.name, part, tuple(names)))
            nodes.append(node)
        node_span[node.name] = (first, len(steps) - 1)
    requests = []
    for root, first in life.first.items():
        a = node_span[life.steps[first].name][0]
        b = node_span[life.steps[life.last[root]].name][1]
        requests.append(Request(root, graph.tensors[root].nbytes, a, max(a, b)))
    for name, nbytes in scratch.items():
        if nbytes:
            a, b = node_span[name]
            requests.append(Request(scratch_name(name), nbytes, a, b))
    return Layout(
        tuple(steps),
        tuple(nodes),
        MappingProxyType(pieces),
        MappingProxyType(piece_steps),
        tuple(requests),
        MappingProxyType(life.aliases),
        MappingProxyType(life.offsets),
    )


def _file_order(graph: Graph, pieces: Mapping[str, WeightPiece]) -> list[str]:
    position = {name: i for i, name in enumerate(graph.constants)}
    return sorted(pieces, key=lambda p: (position[pieces[p].tensor], pieces[p].start))


def pack(
    graph: Graph,
    lay: Layout,
    budget: int,
    resident: frozenset[str],
    base: list[Region] | None = None,
    preload: bool = True,
) -> Plan | None:
    """Offsets for every region of `lay` within `budget` bytes, or None when they do not fit.

    `base` is the activations' and scratch's placement of `lay` when the caller already has it.
    """
    regions = list(base) if base is not None else place_greedy_by_size(lay.requests)[0]
    if max((r.end for r in regions), default=0) > budget:
        return None
    end = len(lay.steps) - 1
    piece_bytes = {p: piece_nbytes(graph, w) for p, w in lay.pieces.items()}
    for name in sorted(resident, key=lambda p: -piece_bytes[p]):
        offset = lowest_fit(align(piece_bytes[name]), 0, end, regions)
        if offset + piece_bytes[name] > budget:
            return None
        regions.append(Region(name, offset, piece_bytes[name], 0, end))
    loads: list[Load] = []
    earliest = 0  # loads stay in file order: none may be released before the previous one
    for name in _file_order(graph, lay.pieces):
        if name in resident:
            continue
        first, last = lay.piece_steps[name]
        size = piece_bytes[name]

        def fits(start: int, first=first, last=last, size=size) -> int | None:
            offset = lowest_fit(align(size), start, last, regions)
            return offset if offset + size <= budget else None

        if fits(first) is None:
            return None
        lo, hi = (earliest, first) if preload else (first, first)  # the smallest start that fits: monotone
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(mid) is None:
                lo = mid + 1
            else:
                hi = mid
        offset = fits(lo)
        regions.append(Region(name, offset, size, lo, last))
        loads.append(Load(name, lo - 1, first))
        earliest = lo
    arena = max((align(r.end) for r in regions), default=0)
    return Plan(
        model=graph.name,
        budget=budget,
        arena_bytes=arena,
        steps=lay.steps,
        regions=tuple(sorted(regions, key=lambda r: (r.offset, r.first))),
        resident=tuple(_file_order(graph, {p: lay.pieces[p] for p in resident})),
        aliases=lay.aliases,
        offsets=lay.offsets,
        pieces=lay.pieces,
        loads=tuple(loads),
    )


def _step_demand(graph: Graph, lay: Layout) -> list[int]:
    """Bytes each step needs at least: what is alive then, plus its own weight pieces."""
    demand = [0] * len(lay.steps)
    for req in lay.requests:
        for i in range(req.first, req.last + 1):
            demand[i] += req.nbytes
    for i, step in enumerate(lay.steps):
        demand[i] += sum(piece_nbytes(graph, lay.pieces[p]) for p in step.weights)
    return demand


def _refine(graph: Graph, lay: Layout, slicing: dict[str, tuple[str, int]], skip: set[str]) -> bool:
    """Split the most demanding step's node one level further; False when nothing can split."""
    demand = _step_demand(graph, lay)
    for i in sorted(range(len(demand)), key=lambda i: -demand[i]):
        node = lay.nodes[i]
        if node.name in skip:
            continue
        axis, count = slicing.get(node.name, ("", 1))
        options = node.op.slicing
        weights = sum(graph.tensors[t].nbytes for t in node.inputs if t and graph.is_constant(t))
        scratch = node.op.scratch_bytes(node.in_shapes)
        out_shape = graph.shape(node.outputs[0])
        if "channels" in options and axis in ("", "channels") and weights >= scratch and _groups_ok(node):
            channels = graph.shape(next(t for t in node.inputs if t and graph.is_constant(t)))[0]
            if channels // (count * 2) >= MIN_CHANNELS_PER_PART:
                slicing[node.name] = ("channels", count * 2)
                return True
        if "rows" in options and axis in ("", "rows") and len(out_shape) == 4:
            rows, width = out_shape[2], out_shape[3]
            if rows // (count * 2) * width >= MIN_PIXELS_PER_BAND:
                slicing[node.name] = ("rows", count * 2)
                return True
        skip.add(node.name)
    return False


def _groups_ok(node: Node) -> bool:
    group = getattr(node.op, "group", 1)
    return group == 1 or (node.in_shapes[0] is not None and group == node.in_shapes[0][1])


def plan_for_budget(graph: Graph, budget: int) -> Plan:
    """The plan for `budget` arena bytes: slicing refined until it fits, then as many of the
    biggest weights resident as still fit; raises BudgetTooSmall when no slicing fits."""
    floor = minimum_budget_hint(graph)
    if budget < floor:
        raise BudgetTooSmall(budget, floor, graph.name, exact=False)
    slicing: dict[str, tuple[str, int]] = {}
    skip: set[str] = set()
    small = frozenset(w for w in graph.constants if graph.tensors[w].nbytes <= ALWAYS_RESIDENT_BYTES)
    while True:
        lay = layout(graph, slicing)
        always = frozenset(p for p, w in lay.pieces.items() if w.tensor in small)
        plan = pack(graph, lay, budget, always)
        if plan is not None:
            break
        if not _refine(graph, lay, slicing, skip):
            raise BudgetTooSmall(budget, minimum_budget_hint(graph), graph.name, exact=False)
    # Leftover memory: whole weights become resident, biggest (costliest to stream) first.
    whole = sorted(
        (p for p, w in lay.pieces.items() if p == w.tensor and p not in always),
        key=lambda p: -graph.tensors[p].nbytes,
    )
    resident = set(always)
    base = place_greedy_by_size(lay.requests)[0]
    for name in whole:
        trial = pack(graph, lay, budget, frozenset(resident | {name}), base)
        if trial is not None:
            resident.add(name)
            plan = trial
    verify(plan, graph)
    return plan


def minimum_budget_hint(graph: Graph) -> int:
    """A lower bound on any plan's arena: the activations alive together (no slicing shrinks them)."""
    requests = [r for r in layout(graph, {}).requests if not r.name.endswith("#scratch")]
    return place_greedy_by_size(requests)[1]


def max_slicing(graph: Graph) -> dict[str, tuple[str, int]]:
    """Every sliceable node split as finely as the part limits allow (weights by channels where
    they outweigh the scratch, else scratch by rows)."""
    slicing: dict[str, tuple[str, int]] = {}
    for node in lifetimes(graph).steps:
        weights = [t for t in node.inputs if t and graph.is_constant(t)]
        weight_bytes = sum(graph.tensors[t].nbytes for t in weights)
        scratch = node.op.scratch_bytes(node.in_shapes)
        out_shape = graph.shape(node.outputs[0])
        if "channels" in node.op.slicing and weights and weight_bytes >= scratch and _groups_ok(node):
            count = 1
            while graph.shape(weights[0])[0] // (count * 2) >= MIN_CHANNELS_PER_PART:
                count *= 2
            if count > 1:
                slicing[node.name] = ("channels", count)
        elif "rows" in node.op.slicing and len(out_shape) == 4 and scratch:
            count = 1
            while out_shape[2] // (count * 2) * out_shape[3] >= MIN_PIXELS_PER_BAND:
                count *= 2
            if count > 1:
                slicing[node.name] = ("rows", count)
    return slicing


def smallest_plan(graph: Graph) -> Plan:
    """The plan of the smallest budget: maximal slicing, nothing preloaded, only the tiny weights
    resident; its arena is that budget."""
    lay = layout(graph, max_slicing(graph))
    small = frozenset(
        p for p, w in lay.pieces.items() if graph.tensors[w.tensor].nbytes <= ALWAYS_RESIDENT_BYTES
    )
    plan = pack(graph, lay, 1 << 62, small, preload=False)
    plan = dataclasses.replace(plan, budget=plan.arena_bytes)
    verify(plan, graph)
    return plan
