"""A plan: the steps of one inference and where every byte of it lives in one arena.

Memory is a plane: x is the step index, y the byte offset. Every region (an activation, a weight,
a step's scratch) is a rectangle [first, last] × [offset, offset + nbytes). Regions are keyed by
name (tensor name, or "<node>#scratch"), never by a running counter.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from flexnnd.errors import PlanError
from flexnnd.graph.ir import Graph, rows_of
from flexnnd.ops.base import Part

# 2: direct depthwise 3x3 convs need no scratch (their plans reserved the padded band).
# 3: Winograd for 3x3 convs 28+ wide with Cin*Cout/(Cin+Cout) >= 20 (their scratch differs).
# 4: Winograd transforms run over whole bands (a garbage tile column per tile row, output runs).
# 5: Winograd also for 13-14 wide 3x3 convs, in finer output-channel chunks (their scratch differs).
# 6: the plan file opens with an index, so one plan can be read without the others.
# 7: index entries also give resident and streamed bytes and sliced layers, so listings read no plan.
# 8: rungs sliced for streaming speed (the simulator chooses), the smallest rung loads ahead.
# 9: nodes ordered for memory, Winograd bands in 16-channel chunks, resident band lowest, longer-lived first.
# 10: a conv's channel parts share one im2col / Winograd input in the scratch (Winograd's v moved first).
# 11: the bottom rung is the fastest plan within the maximal slicing's arena.
# 12: a rung predicted slower than one below it takes that rung's slicing or plan.
# 13: the simulator reads adjacent released loads in one read, as the loader now does.
# 14: fully connected layers priced by their weights, depthwise convs by their input, pools by a pool.
# 15: a rung for every budget; rungs that share a plan share its text, budgets are in the index only.
# 16: a stalling rung also tries its latest pieces resident (sliced ones too), the simulator chooses.
# 17: a stalling rung also tries none or a share of the budget resident; rungs are chosen by their
#     latency averaged over the calibrated read rate and 0.7x it.
# 18: the simulator slows compute while reads are in flight (calibrated per machine).
PLAN_VERSION = 18
ALIGNMENT = 64


def scratch_name(node: str) -> str:
    return f"{node}#scratch"


# Slots: the smallest plan of a big model holds thousands of each of these.
@dataclass(frozen=True, slots=True)
class WeightPiece:
    """Rows [start, stop) of one weight's first dimension: a contiguous byte range of the weights
    file (weights are stored row-major in kernel layout), loaded and viewed as one region."""

    name: str  # its region's name: the tensor's name when whole, else "tensor[start:stop]"
    tensor: str
    start: int
    stop: int


def piece_nbytes(graph: Graph, piece: WeightPiece) -> int:
    """Bytes of a piece: its share of the weight's rows."""
    info = graph.tensors[piece.tensor]
    return info.nbytes // rows_of(info.shape) * (piece.stop - piece.start)


@dataclass(frozen=True, slots=True)
class Load:
    """A streamed piece, read into its region during each inference."""

    piece: str
    after_step: int  # the loader may start once this step has finished; -1: at the start
    step: int  # the first step that reads it


@dataclass(frozen=True, slots=True)
class Step:
    node: str
    part: Part | None = None
    weights: tuple[str, ...] = ()  # the pieces bound to the node's constant inputs, in input order

    @property
    def label(self) -> str:
        if self.part is None:
            return self.node
        return f"{self.node}[{self.part.axis} {self.part.start}:{self.part.stop}]"


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    offset: int
    nbytes: int
    first: int  # first step during which these bytes are reserved
    last: int  # last step during which they are reserved

    @property
    def end(self) -> int:
        return self.offset + self.nbytes

    def collides(self, other: Region) -> bool:
        return (
            self.first <= other.last
            and other.first <= self.last
            and self.offset < other.end
            and other.offset < self.end
        )


@dataclass(frozen=True)
class Plan:
    model: str
    budget: int | None
    arena_bytes: int
    steps: tuple[Step, ...]
    regions: tuple[Region, ...]
    resident: tuple[str, ...]  # pieces loaded once, when the plan is adopted
    aliases: Mapping[str, str]  # tensor -> the tensor whose storage it shares (reshape, flatten)
    offsets: Mapping[str, int] = field(default_factory=dict)  # alias -> byte offset in its root
    pieces: Mapping[str, WeightPiece] = field(default_factory=dict)
    loads: tuple[Load, ...] = ()  # streamed pieces, in file order
    predicted_seconds: float | None = None  # the latency simulator's estimate

    @cached_property
    def region(self) -> Mapping[str, Region]:
        return {r.name: r for r in self.regions}

    def storage(self, tensor: str) -> Region:
        return self.region[self.aliases.get(tensor, tensor)]

    def address(self, tensor: str) -> int:
        """Byte offset of an activation in the arena (an elided Concat's input sits inside it)."""
        return self.storage(tensor).offset + self.offsets.get(tensor, 0)


def check_no_overlap(plan: Plan) -> None:
    """The invariant: no two regions live at the same step overlap; nothing leaves the arena."""
    for r in plan.regions:
        if r.offset < 0 or r.end > plan.arena_bytes:
            raise PlanError(
                f"region {r.name!r} [{r.offset:,}, {r.end:,}) crosses the arena end ({plan.arena_bytes:,} bytes)"
            )
        if r.offset % ALIGNMENT:
            raise PlanError(f"region {r.name!r} at offset {r.offset} is not {ALIGNMENT}-byte aligned")
    # A sweep up the offsets: the regions still open at an offset must have disjoint step ranges,
    # so each new one is checked against its two neighbours in step order (n log n, not n²).
    open_by_end: list[tuple[int, int, Region]] = []  # heap of (end, index, region)
    open_by_first: list[tuple[int, int, Region]] = []  # sorted (first, index, region), disjoint ranges
    for k, b in enumerate(sorted(plan.regions, key=lambda r: (r.offset, r.end))):
        if b.nbytes <= 0 or b.first > b.last:
            continue  # reserves nothing: collides with nothing
        while open_by_end and open_by_end[0][0] <= b.offset:
            _, j, gone = heapq.heappop(open_by_end)
            del open_by_first[bisect.bisect_left(open_by_first, (gone.first, j))]
        at = bisect.bisect_left(open_by_first, (b.first, k))
        for a in open_by_first[max(at - 1, 0) : at + 1]:
            if a[2].collides(b):
                a = a[2]
                raise PlanError(
                    f"regions {a.name!r} [{a.offset:,}+{a.nbytes:,}, steps {a.first}-{a.last}] and "
                    f"{b.name!r} [{b.offset:,}+{b.nbytes:,}, steps {b.first}-{b.last}] overlap"
                )
        open_by_first.insert(at, (b.first, k, b))
        heapq.heappush(open_by_end, (b.end, k, b))
