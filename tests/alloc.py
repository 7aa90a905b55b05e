"""Measuring what a call allocates, transient allocations included (tracemalloc's peak)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable


def peak_allocation(fn: Callable[[], object], repeat: int = 3) -> int:
    """The most bytes `fn` had allocated at once, over `repeat` calls after one warm-up call."""
    fn()
    tracemalloc.start()
    try:
        worst = 0
        for _ in range(repeat):
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            fn()
            _, peak = tracemalloc.get_traced_memory()
            worst = max(worst, peak - base)
        return worst
    finally:
        tracemalloc.stop()


# Python objects a call creates (frames, small views, ints): far below any tensor in the tests.
OBJECT_SLACK = 8 * 1024
