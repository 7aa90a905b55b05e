"""The daemon's own heap: glibc's malloc tuned and trimmed so freed request buffers leave RSS."""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters from glibc's malloc.h
MMAP_THRESHOLD = 128 << 10
TRIM_SLACK = 16 << 20  # RSS beyond runtime + plans that makes the main loop return free heap pages


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold: request buffers (a camera frame is ~0.6 MB) are then mmapped and
    returned on free. Left dynamic, the threshold rises after the first free and every later buffer
    stays in the heap, RSS the budget cannot see."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, MMAP_THRESHOLD)
        )
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False


def trim_malloc() -> bool:
    """Give free heap pages back to the OS (glibc's malloc_trim): gRPC receives a big message as many
    small frames whose freed chunks stay in malloc's arenas, hundreds of MiB after a burst."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


def own_memory() -> tuple[int, int]:
    """(RSS, anonymous RSS) of this process, from /proc/self/status."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0]) * 1024
    return fields.get("VmRSS", 0), fields.get("RssAnon", 0)


def trim_if_grown(committed: int, idle_overhead: int) -> None:
    """Trim the heap when RSS beside the plans exceeds the idle runtime measured at start by TRIM_SLACK."""
    rss, _ = own_memory()
    if rss - committed - idle_overhead > TRIM_SLACK:
        trim_malloc()


MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim the range's pages now; their contents stay valid
COMPILER_LIBRARY = "libllvmlite"


class CompilerPages:
    """Pages out LLVM's code (llvmlite's shared library, ~67 MB of RSS once numba has compiled or
    loaded kernels) after the last use of numba's compiler: inferences and swaps between plans run
    the kernels already in memory and never touch it. A later compile faults the pages back."""

    def __init__(self):
        self.released_at: int | None = None  # jit.compiler_use() count at the last release
        self.supported = True

    def release_if_used(self) -> int:
        """Page LLVM out if the compiler ran since the last release and is idle now: RSS freed, bytes."""
        from flexnnd.ops import jit

        used, running = jit.compiler_use()
        if running or used == self.released_at or not self.supported:
            return 0
        before, _ = own_memory()
        self.supported = page_out(COMPILER_LIBRARY)
        self.released_at = used
        return max(0, before - own_memory()[0])


def page_out(library: str) -> bool:
    """MADV_PAGEOUT over every mapping of the shared library whose file name starts with `library`;
    False where the kernel or libc lacks it."""
    libc = ctypes.CDLL(None, use_errno=True)
    madvise = getattr(libc, "madvise", None)
    if madvise is None:
        return False
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    with open("/proc/self/maps") as f:
        ranges = [
            line.split()[0]
            for line in f
            if len(fields := line.split()) >= 6 and Path(fields[5]).name.startswith(library)
        ]
    for span in ranges:
        start, end = (int(v, 16) for v in span.split("-"))
        if madvise(start, end - start, MADV_PAGEOUT) != 0 and ctypes.get_errno() in (
            errno.EINVAL,
            errno.ENOSYS,
        ):
            return False  # EINVAL: a kernel before 5.4 has no MADV_PAGEOUT
    return True
