"""The daemon's own heap: glibc's malloc tuned and trimmed so freed request buffers leave RSS."""

from __future__ import annotations

import ctypes

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


def trim_if_grown(committed: int, runtime_overhead: int) -> None:
    """Trim the heap when RSS beside the plans exceeds the runtime measured at start by TRIM_SLACK."""
    rss, _ = own_memory()
    if rss - committed - runtime_overhead > TRIM_SLACK:
        trim_malloc()
