"""Placing rectangles on the (step × byte offset) plane."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flexnnd.planner.plan import ALIGNMENT, Region


@dataclass(frozen=True)
class Request:
    """A region to place: `nbytes` reserved from step `first` through step `last`."""

    name: str
    nbytes: int
    first: int
    last: int


def align(n: int, to: int = ALIGNMENT) -> int:
    return (n + to - 1) // to * to


def lowest_fit(size: int, first: int, last: int, placed: Iterable[Region]) -> int:
    """The lowest aligned offset where `size` bytes are free for all of steps [first, last]."""
    # The planner's innermost loop: plain tuples, no property or function call per region.
    busy = sorted([(r.offset, r.offset + r.nbytes) for r in placed if r.first <= last and first <= r.last])
    offset = 0
    for start, end in busy:
        if start - offset >= size:
            break
        if end > offset:
            offset = -(-end // ALIGNMENT) * ALIGNMENT
    return offset


def place_greedy_by_size(requests: Iterable[Request]) -> tuple[list[Region], int]:
    """Largest first, each at the lowest offset free during its lifetime (TFLite's greedy-by-size).

    Returns the regions and the arena size they need.
    """
    placed: list[Region] = []
    for req in sorted(requests, key=lambda r: (-r.nbytes, r.first, r.name)):
        offset = lowest_fit(align(req.nbytes), req.first, req.last, placed)
        placed.append(Region(req.name, offset, req.nbytes, req.first, req.last))
    arena = max((align(r.end) for r in placed), default=0)
    return placed, arena
