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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

import numpy as np

from flexnnd.errors import BudgetTooSmall
from flexnnd.graph.ir import Graph, Node, rows_of
from flexnnd.ops.base import Axis, Part, SliceAxis
from flexnnd.planner.lifetimes import lifetimes
from flexnnd.planner.pack import DIRECT_ALIGN, FullSpanGaps, Occupancy, Request, align, place_greedy_by_size
from flexnnd.planner.plan import ALIGNMENT, Load, Plan, Region, Step, WeightPiece, piece_nbytes, scratch_name
from flexnnd.planner.simulate import Timeline
from flexnnd.planner.verify import verify

# Weights this small are always resident: streaming them costs a read call for nothing.
ALWAYS_RESIDENT_BYTES = 64 * 1024
# A channel slice keeps at least this many output channels (below, GEMMs lose their SIMD width).
MIN_CHANNELS_PER_PART = 16
# A row band keeps at least this many output pixels (columns of the im2col GEMM).
MIN_PIXELS_PER_BAND = 256
# Piece sizes tried, as fractions of the budget, when the simulator chooses between slicings.
PIPELINE_FRACTIONS = (1 / 8, 1 / 16, 1 / 32)
# A plan whose compute waits less than this share of its latency is not worth re-slicing.
STALL_WORTH_SLICING = 0.01
# Shares of the budget a stalling plan also tries holding resident, its latest pieces first.
RESIDENT_SHARES = (0.1, 0.25, 1.0)

Slicing = Mapping[str, tuple[Axis, int]]  # node -> (axis, number of parts)


def _splits(axis: SliceAxis, parts: int) -> bool:
    """Whether `parts` parts along `axis` keep the least a part may hold: MIN_CHANNELS_PER_PART
    channels, or MIN_PIXELS_PER_BAND output pixels a band of rows (the one slicing rule)."""
    least = MIN_CHANNELS_PER_PART if axis.cuts_weights else MIN_PIXELS_PER_BAND
    return axis.extent // parts * axis.unit_pixels >= least


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    bounds = [total * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


@dataclass(frozen=True)
class Layout:
    """Steps, pieces and lifetimes of one slicing, before any offset is chosen."""

    slicing: Mapping[str, tuple[Axis, int]]  # node -> (axis, parts): what this layout is of
    steps: tuple[Step, ...]
    nodes: tuple[Node, ...]  # the node of each step
    pieces: Mapping[str, WeightPiece]
    piece_steps: Mapping[str, tuple[int, int]]  # piece -> (first, last) step reading it
    requests: tuple[Request, ...]  # activations and scratch, with their lifetimes
    aliases: Mapping[str, str]
    offsets: Mapping[str, int]
    piece_bytes: Mapping[str, int]
    file_order: tuple[str, ...]  # the pieces in the order the weights file holds them
    # piece -> its file offset modulo DIRECT_ALIGN, where that is a possible arena offset too
    direct_residue: Mapping[str, int | None]
    # Aligned bytes of the pieces every budget keeps resident: the base leaves them the bottom band.
    always_resident: int = 0

    @cached_property
    def base(self) -> tuple[Region, ...]:
        """The activations' and scratch's placement: the same for every budget. It sits above the
        always-resident band, so a step's streamed pieces can grow straight up from its activations
        instead of jumping over that band (GoogLeNet's smallest arena: 6.2 MB with the band on top)."""
        return tuple(place_greedy_by_size(self.requests, self.always_resident)[0])

    @cached_property
    def base_occupancy(self) -> Occupancy:
        return Occupancy(self.base, capacity=len(self.base) + len(self.pieces) + 1)

    @cached_property
    def base_gaps(self) -> FullSpanGaps:
        return FullSpanGaps(self.base)

    @cached_property
    def base_end(self) -> int:
        return max((r.end for r in self.base), default=0)

    def _alive(self, weights: bool) -> np.ndarray:
        delta = np.zeros(len(self.steps) + 1, np.int64)
        for req in self.requests:
            delta[req.first] += req.nbytes
            delta[req.last + 1] -= req.nbytes
        if weights:
            for name, (first, last) in self.piece_steps.items():
                delta[first] += self.piece_bytes[name]
                delta[last + 1] -= self.piece_bytes[name]
        return np.cumsum(delta[:-1])

    @cached_property
    def live_bytes(self) -> np.ndarray:
        """Per step, the bytes every plan of this layout holds then: the activations and scratch
        alive, and each weight piece from its first to its last reader."""
        return self._alive(weights=True)

    @cached_property
    def demand(self) -> tuple[int, ...]:
        """Bytes each step needs at least: what is alive then, plus its own weight pieces."""
        own = np.array([sum(self.piece_bytes[p] for p in s.weights) for s in self.steps], np.int64)
        return tuple((self._alive(weights=False) + own).tolist())

    @cached_property
    def _piece_columns(self) -> tuple[dict[str, int], np.ndarray, np.ndarray, np.ndarray]:
        index = {name: k for k, name in enumerate(self.piece_steps)}
        first = np.array([f for f, _ in self.piece_steps.values()], np.int64)
        after = np.array([last + 1 for _, last in self.piece_steps.values()], np.int64)
        nbytes = np.array([self.piece_bytes[name] for name in self.piece_steps], np.int64)
        return index, first, after, nbytes

    def resident_floor(self, resident: frozenset[str]) -> int:
        """A lower bound on the arena of any plan holding `resident` for every step; a plan whose
        floor exceeds the budget cannot fit, so packing it can be skipped without changing plans."""
        if not resident:
            return int(self.live_bytes.max(initial=0))
        index, first, after, nbytes = self._piece_columns
        chosen = np.fromiter((index[name] for name in resident), np.int64, len(resident))
        delta = np.zeros(len(self.steps) + 1, np.int64)
        np.add.at(delta, first[chosen], -nbytes[chosen])
        np.add.at(delta, after[chosen], nbytes[chosen])
        live = self.live_bytes + np.cumsum(delta[:-1])
        return int(live.max(initial=0)) + int(nbytes[chosen].sum())


class Planner:
    """What planning one graph needs that does not depend on the budget, computed once and shared
    by every rung of a ladder: lifetimes, scratch sizes, the layouts tried with their activation
    placements, and the chain in which slicing is refined."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.life = lifetimes(graph)
        self.position = {name: i for i, name in enumerate(graph.constants)}
        self.small = frozenset(w for w in graph.constants if graph.tensors[w].nbytes <= ALWAYS_RESIDENT_BYTES)
        self._scratch: dict[tuple[str, Part | None], int] = {}
        self._axes: dict[str, dict[str, SliceAxis]] = {}
        self._layouts: dict[tuple, Layout] = {}
        # Refining depends only on the graph, so every budget walks the same chain of slicings.
        self._chain: list[Layout] = []
        self._chain_slicing: dict[str, tuple[Axis, int]] = {}
        self._chain_skip: set[str] = set()
        self._chain_done = False
        self._minimum: int | None = None

    def scratch_bytes(self, node: Node, part: Part | None = None) -> int:
        key = (node.name, part)
        if key not in self._scratch:
            self._scratch[key] = node.op.scratch_bytes(node.in_shapes, part)
        return self._scratch[key]

    def axes(self, node: Node) -> dict[Axis, SliceAxis]:
        """The axes `node`'s op may be cut along, by name (see Op.slice_axes)."""
        if node.name not in self._axes:
            out_shapes = [self.graph.shape(o) for o in node.outputs]
            self._axes[node.name] = {a.name: a for a in node.op.slice_axes(node.in_shapes, out_shapes)}
        return self._axes[node.name]

    def layout(self, slicing: Slicing) -> Layout:
        key = tuple(sorted(slicing.items()))
        if key not in self._layouts:
            self._layouts[key] = _layout(self, slicing)
        return self._layouts[key]

    def chain(self, k: int) -> Layout | None:
        """The k-th slicing of the refinement chain (the first is no slicing), None past its end."""
        while len(self._chain) <= k and not self._chain_done:
            if not self._chain:
                self._chain.append(self.layout({}))
            elif _refine(self, self._chain[-1], self._chain_slicing, self._chain_skip):
                self._chain.append(self.layout(self._chain_slicing))
            else:
                self._chain_done = True
        return self._chain[k] if k < len(self._chain) else None

    def minimum_budget_hint(self) -> int:
        """A lower bound on any plan's arena: the activations alive together (no slicing shrinks them)."""
        if self._minimum is None:
            requests = [r for r in self.layout({}).requests if not r.name.endswith("#scratch")]
            self._minimum = place_greedy_by_size(requests)[1]
        return self._minimum

    def activation_bytes(self) -> np.ndarray:
        """Per node (unsliced step), the bytes of activations alive then: no slicing shrinks them."""
        lay = self.layout({})
        delta = np.zeros(len(lay.steps) + 1, np.int64)
        for req in lay.requests:
            if not req.name.endswith("#scratch"):
                delta[req.first] += req.nbytes
                delta[req.last + 1] -= req.nbytes
        return np.cumsum(delta[:-1])

    def file_order(self, pieces: Mapping[str, WeightPiece]) -> list[str]:
        position = self.position
        return sorted(pieces, key=lambda p: (position[pieces[p].tensor], pieces[p].start))


def layout(graph: Graph, slicing: Slicing) -> Layout:
    return Planner(graph).layout(slicing)


def _layout(planner: Planner, slicing: Slicing) -> Layout:
    graph, life = planner.graph, planner.life
    steps: list[Step] = []
    nodes: list[Node] = []
    pieces: dict[str, WeightPiece] = {}
    piece_steps: dict[str, tuple[int, int]] = {}
    node_span: dict[str, tuple[int, int]] = {}
    scratch: dict[str, int] = {}
    for node in life.steps:
        constants = [i for i in node.inputs if i and graph.is_constant(i)]
        axis, count = slicing.get(node.name, (None, 1))
        first = len(steps)
        cut = planner.axes(node)[axis] if axis else None
        parts = [None] if cut is None else [Part(axis, a, b) for a, b in _split(cut.extent, count)]
        for part in parts:
            names = []
            for tensor in constants:
                rows = rows_of(graph.shape(tensor))
                if part is not None and cut.cuts_weights:
                    piece = WeightPiece(f"{tensor}[{part.start}:{part.stop}]", tensor, part.start, part.stop)
                else:
                    piece = WeightPiece(tensor, tensor, 0, rows)
                pieces[piece.name] = piece
                lo, _ = piece_steps.get(piece.name, (len(steps), 0))
                piece_steps[piece.name] = (lo, len(steps))
                names.append(piece.name)
            need = planner.scratch_bytes(node, part)
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
        MappingProxyType(dict(slicing)),
        tuple(steps),
        tuple(nodes),
        MappingProxyType(pieces),
        MappingProxyType(piece_steps),
        tuple(requests),
        MappingProxyType(life.aliases),
        MappingProxyType(life.offsets),
        MappingProxyType({p: piece_nbytes(graph, w) for p, w in pieces.items()}),
        tuple(planner.file_order(pieces)),
        MappingProxyType({p: _direct_residue(graph, w) for p, w in pieces.items()}),
        sum(align(piece_nbytes(graph, w)) for w in pieces.values() if w.tensor in planner.small),
    )


def _direct_residue(graph: Graph, piece: WeightPiece) -> int | None:
    """Where the piece starts in the weights file modulo DIRECT_ALIGN (every weight starts on a
    multiple of it); None when no 64-byte-aligned arena offset can match it."""
    info = graph.tensors[piece.tensor]
    residue = info.nbytes // rows_of(info.shape) * piece.start % DIRECT_ALIGN
    return residue if residue % ALIGNMENT == 0 else None


def pack(
    lay: Layout,
    planner: Planner,
    budget: int,
    resident: frozenset[str],
    preload: bool = True,
) -> Plan | None:
    """Offsets for every region of `lay` within `budget` bytes, or None when they do not fit."""
    if lay.base_end > budget or lay.resident_floor(resident) > budget:
        return None
    end = len(lay.steps) - 1
    piece_bytes = lay.piece_bytes
    busy = lay.base_occupancy.copy()
    everywhere = lay.base_gaps.copy()  # a resident region collides with every other one
    regions = list(lay.base)
    # Ties go in file order: a set's iteration order changes with the hash seed, so would the plan.
    for name in sorted(
        resident, key=lambda p: (-piece_bytes[p], planner.position[lay.pieces[p].tensor], lay.pieces[p].start)
    ):
        offset = everywhere.place(align(piece_bytes[name]), piece_bytes[name])
        if offset + piece_bytes[name] > budget:
            return None
        busy.add(offset, piece_bytes[name], 0, end)
        regions.append(Region(name, offset, piece_bytes[name], 0, end))
    loads: list[Load] = []
    earliest = 0  # loads stay in file order: none may be released before the previous one
    for name in lay.file_order:
        if name in resident:
            continue
        first, last = lay.piece_steps[name]
        size = piece_bytes[name]
        aligned = align(size)

        residue = lay.direct_residue[name]

        def fits(start: int, last=last, size=size, aligned=aligned, residue=residue) -> int | None:
            offset = busy.lowest_fit(aligned, start, last, residue)
            return offset if offset + size <= budget else None

        # The smallest start that fits (fitting is monotone in the start). The earliest allowed
        # start often fits at once, which saves the binary search.
        lo = earliest if preload else first
        offset = fits(lo)
        if offset is None and lo < first:
            offset = fits(first)
            if offset is not None:
                lo, hi = lo + 1, first  # `offset` is always fits(hi)
                while lo < hi:
                    mid = (lo + hi) // 2
                    found = fits(mid)
                    if found is None:
                        lo = mid + 1
                    else:
                        hi, offset = mid, found
        if offset is None:
            return None
        busy.add(offset, size, lo, last)
        regions.append(Region(name, offset, size, lo, last))
        loads.append(Load(name, lo - 1, first))
        earliest = lo
    arena = max((align(r.end) for r in regions), default=0)
    return Plan(
        model=planner.graph.name,
        budget=budget,
        arena_bytes=arena,
        steps=lay.steps,
        regions=tuple(sorted(regions, key=lambda r: (r.offset, r.first))),
        resident=tuple(planner.file_order({p: lay.pieces[p] for p in resident})),
        aliases=lay.aliases,
        offsets=lay.offsets,
        pieces=lay.pieces,
        loads=tuple(loads),
    )


def _refine(planner: Planner, lay: Layout, slicing: dict[str, tuple[Axis, int]], skip: set[str]) -> bool:
    """Split the most demanding step's node one level further; False when nothing can split."""
    graph = planner.graph
    demand = lay.demand
    for i in sorted(range(len(demand)), key=lambda i: -demand[i]):
        node = lay.nodes[i]
        if node.name in skip:
            continue
        axis, count = slicing.get(node.name, (None, 1))
        axes = planner.axes(node)
        channels, rows = axes.get(Axis.CHANNELS), axes.get(Axis.ROWS)
        weights = sum(graph.tensors[t].nbytes for t in node.inputs if t and graph.is_constant(t))
        scratch = planner.scratch_bytes(node)
        if channels and axis in (None, Axis.CHANNELS) and weights >= scratch and _splits(channels, count * 2):
            slicing[node.name] = (Axis.CHANNELS, count * 2)
            return True
        if rows and axis in (None, Axis.ROWS) and _splits(rows, count * 2):
            slicing[node.name] = (Axis.ROWS, count * 2)
            return True
        skip.add(node.name)
    return False


def plan_for_budget(
    graph: Graph,
    budget: int,
    planner: Planner | None = None,
    timeline: Callable[[Plan], Timeline] | None = None,
) -> Plan:
    """The plan for `budget` arena bytes: slicing refined until it fits, then as many of the
    biggest weights resident as still fit; raises BudgetTooSmall when no slicing fits.

    With `timeline` (the simulator's run of a plan), a plan whose compute waits for weights is
    compared with plans that also cut the big weights into pieces small enough to stream in a
    pipeline, and with the latest pieces resident instead of the biggest; the fastest is
    returned. Pass one `planner` when planning many budgets of the same graph."""
    planner = planner or Planner(graph)
    floor = planner.minimum_budget_hint()
    if budget < floor:
        raise BudgetTooSmall(budget, floor, graph.name, exact=False)
    for k in itertools.count():
        lay = planner.chain(k)
        if lay is None:
            raise BudgetTooSmall(budget, floor, graph.name, exact=False)
        plan = _fill(planner, lay, budget)
        if plan is not None:
            break
    if timeline is not None:
        run = timeline(plan)
        best = run.seconds
        if run.stall_seconds > STALL_WORTH_SLICING * best:

            def consider(trial: Plan | None) -> None:
                nonlocal plan, best
                if trial is not None and (seconds := timeline(trial).seconds) < best:
                    plan, best = trial, seconds

            # Slicings are compared packed as they are (cheap), the best one then filled with
            # resident weights (a pack per try) and compared with the plan that only fits.
            tried: dict[int, tuple[float, Layout, Plan]] = {}  # by identity: one layout per slicing
            for fraction in PIPELINE_FRACTIONS:
                slicing = _pipelined(planner, lay, budget * fraction)
                candidate = None if slicing is None else planner.layout(slicing)
                if candidate is None or id(candidate) in tried:
                    continue
                bare = _fill(planner, candidate, budget, resident=False)
                if bare is not None:
                    tried[id(candidate)] = (timeline(bare).seconds, candidate, bare)
            if tried:
                _, candidate, bare = min(tried.values(), key=lambda c: c[0])
                consider(bare)  # nothing resident: every byte of the budget free to load ahead
                consider(_fill(planner, candidate, budget, bare=bare))
            # Resident weights are memory no load can use at any step: the latest pieces resident
            # (the loader would fetch them far ahead, when memory is shortest), up to a share of the
            # budget each, or none, where the simulator prefers it.
            chosen = planner.layout(slicing_of(plan))
            bare = (
                tried[id(chosen)][2]
                if id(chosen) in tried
                else _fill(planner, chosen, budget, resident=False)
            )
            consider(bare)
            for share in RESIDENT_SHARES:
                consider(_fill(planner, chosen, budget, latest_first=True, most=share * budget, bare=bare))
    verify(plan, graph)
    return plan


def slicing_of(plan: Plan) -> dict[str, tuple[Axis, int]]:
    """node -> (axis, parts) of every sliced node of `plan`."""
    slicing: dict[str, tuple[Axis, int]] = {}
    for step in plan.steps:
        if step.part is not None:
            slicing[step.node] = (step.part.axis, slicing.get(step.node, (None, 0))[1] + 1)
    return slicing


def plan_with_slicing(planner: Planner, budget: int, slicing: Slicing) -> Plan | None:
    """The plan of `slicing` within `budget`, leftover memory spent on resident weights; None when
    it does not fit."""
    plan = _fill(planner, planner.layout(slicing), budget)
    if plan is not None:
        verify(plan, planner.graph)
    return plan


def _fill(
    planner: Planner,
    lay: Layout,
    budget: int,
    resident: bool = True,
    latest_first: bool = False,
    most: float | None = None,
    bare: Plan | None = None,
) -> Plan | None:
    """`lay` packed within `budget`, then (with `resident`) leftover memory spent on whole weights
    becoming resident, biggest (costliest to stream) first; None when it does not fit at all.
    With `latest_first`, any piece may become resident, the last in file order first: they are
    the ones the loader would otherwise have to fetch far ahead, when memory is shortest. With
    `most`, no more than that many bytes become resident beyond the tiny weights. `bare` is `lay`
    already packed with only the tiny weights resident, when the caller has it."""
    graph = planner.graph
    always = frozenset(p for p, w in lay.pieces.items() if w.tensor in planner.small)
    plan = bare if bare is not None else pack(lay, planner, budget, always)
    if plan is None or not resident:
        return plan
    if latest_first:
        candidates = [p for p in reversed(lay.file_order) if p not in always]
    else:
        candidates = sorted(
            (p for p, w in lay.pieces.items() if p == w.tensor and p not in always),
            key=lambda p: -graph.tensors[p].nbytes,
        )
    if most is not None:  # the candidates up to the share: a prefix, as the fill takes them in order
        total = itertools.accumulate(lay.piece_bytes[p] for p in candidates)
        candidates = [p for p, upto in zip(candidates, total, strict=True) if upto <= most]
    kept = set(always)
    # Candidates are tried in runs that double while they fit and halve when not: most fit
    # when one does, and a successful pack costs as much as the whole streamed layout.
    i, run = 0, 1
    while i < len(candidates):
        batch = candidates[i : i + run]
        trial = pack(lay, planner, budget, frozenset(kept.union(batch)))
        if trial is not None:
            kept.update(batch)
            plan, i, run = trial, i + len(batch), run * 2
        elif run > 1:
            run //= 2
        else:
            i += 1
    return plan


def _pipelined(planner: Planner, lay: Layout, most: float) -> dict[str, tuple[Axis, int]] | None:
    """`lay`'s slicing with every weight bigger than `most` bytes cut by output channels until
    its pieces are not (or as far as the part limits allow): small pieces stream while the
    previous ones compute, and fit the gaps earlier steps leave. None when nothing changes."""
    graph = planner.graph
    slicing = dict(lay.slicing)
    changed = False
    for node in planner.life.steps:
        axis, count = slicing.get(node.name, (None, 1))
        weights = [t for t in node.inputs if t and graph.is_constant(t)]
        channels = planner.axes(node).get(Axis.CHANNELS)
        if not weights or axis not in (None, Axis.CHANNELS) or channels is None:
            continue
        nbytes = sum(graph.tensors[t].nbytes for t in weights)
        while nbytes / count > most and _splits(channels, count * 2):
            count *= 2
            changed = True
        if count > 1:
            slicing[node.name] = (Axis.CHANNELS, count)
    return slicing if changed else None


def minimum_budget_hint(graph: Graph) -> int:
    """A lower bound on any plan's arena: the activations alive together (no slicing shrinks them)."""
    return Planner(graph).minimum_budget_hint()


def max_slicing(graph: Graph, planner: Planner | None = None) -> dict[str, tuple[Axis, int]]:
    """Every sliceable node split as finely as the part limits allow (weights by channels where
    they outweigh the scratch, else scratch by rows)."""
    planner = planner or Planner(graph)
    slicing: dict[str, tuple[Axis, int]] = {}
    for node in planner.life.steps:
        weights = [t for t in node.inputs if t and graph.is_constant(t)]
        weight_bytes = sum(graph.tensors[t].nbytes for t in weights)
        scratch = planner.scratch_bytes(node)
        axes = planner.axes(node)
        channels, rows = axes.get(Axis.CHANNELS), axes.get(Axis.ROWS)
        if channels and weights and weight_bytes >= scratch:
            cut = channels
        elif rows and scratch:
            cut = rows
        else:
            continue
        count = 1
        while _splits(cut, count * 2):
            count *= 2
        if count > 1:
            slicing[node.name] = (cut.name, count)
    return slicing


def smallest_plan(graph: Graph, planner: Planner | None = None) -> Plan:
    """The plan of the smallest budget: maximal slicing, only the tiny weights resident, its arena
    the smallest any packing reaches (nothing loaded ahead); within that arena, loads start as
    early as it leaves room for."""
    planner = planner or Planner(graph)
    lay = planner.layout(max_slicing(graph, planner))
    small = frozenset(p for p, w in lay.pieces.items() if w.tensor in planner.small)
    tight = pack(lay, planner, 1 << 62, small, preload=False)
    # The same arena has room to load ahead where the peak step is not: take it where it does.
    plan = pack(lay, planner, tight.arena_bytes, small) or tight
    plan = dataclasses.replace(plan, budget=tight.arena_bytes)
    verify(plan, graph)
    return plan
