"""Placing rectangles on the (step × byte offset) plane."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from flexnnd.ops.jit import kernel
from flexnnd.planner.plan import ALIGNMENT, Region
from flexnnd.weights_file import DIRECT_ALIGN
from flexnnd.weights_file import align as _round_up


@dataclass(frozen=True)
class Request:
    """A region to place: `nbytes` reserved from step `first` through step `last`."""

    name: str
    nbytes: int
    first: int
    last: int


# A streamed piece is placed where its arena address and its file offset agree modulo the loader's
# O_DIRECT block (DIRECT_ALIGN), so it can read it direct (the package aligns every weight to it).


def align(n: int, to: int = ALIGNMENT) -> int:
    """`n` rounded up to the arena's region alignment."""
    return _round_up(n, to)


class Occupancy:
    """The rectangles placed so far, as columns of int64 arrays, answering "lowest free offset".

    The planner's innermost query: one vectorized pass per call instead of a Python loop over
    every region placed.
    """

    def __init__(self, regions: Iterable[Region] = (), capacity: int = 256):
        regions = list(regions)
        capacity = max(capacity, 2 * len(regions))
        self._start = np.empty(capacity, np.int64)
        self._end = np.empty(capacity, np.int64)
        self._first = np.empty(capacity, np.int64)
        self._last = np.empty(capacity, np.int64)
        self._n = 0
        for r in regions:
            self.add(r.offset, r.nbytes, r.first, r.last)

    def copy(self) -> Occupancy:
        other = Occupancy.__new__(Occupancy)
        other._start, other._end = self._start.copy(), self._end.copy()
        other._first, other._last = self._first.copy(), self._last.copy()
        other._n = self._n
        return other

    def add(self, offset: int, nbytes: int, first: int, last: int) -> None:
        n = self._n
        if n == len(self._start):
            for name in ("_start", "_end", "_first", "_last"):
                column = getattr(self, name)
                setattr(self, name, np.concatenate([column, np.empty_like(column)]))
        _insert(self._start, self._end, self._first, self._last, n, offset, offset + nbytes, first, last)
        self._n = n + 1

    def lowest_fit(self, size: int, first: int, last: int, residue: int | None = None) -> int:
        """The lowest aligned offset where `size` bytes are free for all of steps [first, last];
        with `residue`, the lowest one that is `residue` modulo DIRECT_ALIGN."""
        return int(
            _lowest_fit(
                self._start, self._end, self._first, self._last, self._n,
                size, first, last, -1 if residue is None else residue, ALIGNMENT, DIRECT_ALIGN,
            )
        )  # fmt: skip


@kernel(fastmath=False)
def _insert(start, end, first, last, n, s, e, f, la):  # pragma: no cover
    # Kept sorted by start, so a query scans once instead of sorting what is live.
    k = np.searchsorted(start[:n], s, side="right")
    for i in range(n, k, -1):
        start[i], end[i], first[i], last[i] = start[i - 1], end[i - 1], first[i - 1], last[i - 1]
    start[k], end[k], first[k], last[k] = s, e, f, la


@kernel(fastmath=False)
def _lowest_fit(
    start, end, first, last, n, size, q_first, q_last, residue, alignment, direct
):  # pragma: no cover
    # The planner's innermost query, compiled: numpy's per-call overhead was most of planning time.
    below = 0 if residue < 0 else residue  # where the free space begins below the next busy region
    top = 0
    for i in range(n):
        if first[i] > q_last or last[i] < q_first:
            continue
        if start[i] - below >= size:
            return below
        if end[i] > top:
            top = end[i]
            below = -(-top // alignment) * alignment if residue < 0 else top + (residue - top) % direct
    return below


class FullSpanGaps:
    """The free gaps below and between everything placed, for regions reserved at every step.

    Such a region collides with every other one, so its lowest fit is the first gap of the
    union of all placed regions that is large enough: a short list, where a scan is cheap.
    """

    def __init__(self, regions: Iterable[Region]):
        self._gaps: list[tuple[int, int]] = []  # (aligned start, end) of each free gap, by offset
        top = 0
        for start, end in sorted((r.offset, r.end) for r in regions):
            if start > top:
                self._gaps.append((top, start))
            if end > top:
                top = -(-end // ALIGNMENT) * ALIGNMENT
        self._top = top  # everything from here up is free

    def copy(self) -> FullSpanGaps:
        other = FullSpanGaps.__new__(FullSpanGaps)
        other._gaps, other._top = list(self._gaps), self._top
        return other

    def place(self, size: int, nbytes: int) -> int:
        """Reserve `nbytes` at the lowest gap of at least `size` (aligned) bytes; its offset."""
        if nbytes <= 0:
            return 0  # as the full scan would: nothing is reserved
        for k, (start, end) in enumerate(self._gaps):
            if end - start >= size:
                rest = -(-(start + nbytes) // ALIGNMENT) * ALIGNMENT
                if rest < end:
                    self._gaps[k] = (rest, end)
                else:
                    del self._gaps[k]
                return start
        start = self._top
        self._top = -(-(start + nbytes) // ALIGNMENT) * ALIGNMENT
        return start


def place_greedy_by_size(requests: Iterable[Request], floor: int = 0) -> tuple[list[Region], int]:
    """Largest first, each at the lowest offset free during its lifetime (TFLite's greedy-by-size),
    all at or above `floor` (an aligned band kept free below them at every step).

    Returns the regions and the arena size they need.
    """
    if floor % ALIGNMENT:
        raise ValueError(f"floor {floor} is not a multiple of {ALIGNMENT}")
    # Equal sizes: the longer-lived first, so shorter ones fill in around it (ResNet-50's smallest
    # arena: 8.19 -> 7.80 MiB).
    ordered = sorted(requests, key=lambda r: (-r.nbytes, r.first - r.last, r.first, r.name))
    busy = Occupancy(capacity=len(ordered) + 1)
    placed: list[Region] = []
    for req in ordered:
        offset = floor + busy.lowest_fit(align(req.nbytes), req.first, req.last)
        busy.add(offset - floor, req.nbytes, req.first, req.last)
        placed.append(Region(req.name, offset, req.nbytes, req.first, req.last))
    arena = max((align(r.end) for r in placed), default=0)
    return placed, arena
