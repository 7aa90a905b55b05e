"""The arena: one page-aligned anonymous mapping of exactly a plan's size.

Anonymous mmap (not the heap) so that dropping it returns the pages to the OS at once: a swap to
a smaller plan really shrinks RSS.
"""

from __future__ import annotations

import contextlib
import mmap

import numpy as np

from flexnnd.errors import ArenaError
from flexnnd.graph.ir import Shape


class Arena:
    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        # mmap refuses length 0; a model with no tensors still gets one page.
        try:
            self._map = mmap.mmap(
                -1, max(self.nbytes, mmap.PAGESIZE), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            )
        except (OSError, OverflowError, MemoryError) as e:
            raise ArenaError(self.nbytes, _available_bytes(), str(e)) from None
        self.bytes = np.frombuffer(self._map, dtype=np.uint8, count=self.nbytes)

    def view(self, offset: int, shape: Shape, dtype: str = "float32") -> np.ndarray:
        dt = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if offset < 0 or offset + n > self.nbytes:
            raise ValueError(f"view [{offset}, {offset + n}) outside the arena of {self.nbytes} bytes")
        return self.bytes[offset : offset + n].view(dt).reshape(shape)

    def drop_pages_except(self, keep: list[tuple[int, int]]) -> None:
        """Return every page outside the (offset, nbytes) ranges `keep` to the OS (they read as zeros
        after): a blocking swap keeps a decoder's cache while the rest of the old arena goes first."""
        page, start = mmap.PAGESIZE, 0
        for offset, nbytes in [*sorted(keep), (self.nbytes + page, 0)]:
            stop = offset // page * page
            if stop > start:
                self._map.madvise(mmap.MADV_DONTNEED, start, min(stop, len(self._map)) - start)
            start = max(start, -(-(offset + nbytes) // page) * page)

    def close(self) -> None:
        """Unmap now if nothing else views the arena; otherwise (say, a caller still holds a
        traceback whose frames hold views) the mapping goes when the last view does."""
        self.bytes = None
        mapping, self._map = self._map, None
        if mapping is None:
            return
        with contextlib.suppress(BufferError):
            mapping.close()


def _available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, for the error's numbers."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
