"""How many threads the math libraries use: OpenBLAS (numpy's BLAS) and numba."""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("flexnnd.threads")

_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)


def _blas_setter():
    # The BLAS numpy loaded, found the way threadpoolctl does: by the process's mappings.
    with open("/proc/self/maps") as maps:
        paths = {
            line.split()[-1] for line in maps if "blas" in line.lower() and ".so" in line.rsplit("/", 1)[-1]
        }
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for name in _SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = None
                return fn
    return None


_setter = None
_searched = False
_current: int | None = None


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def set_threads(n: int) -> None:
    """Use `n` threads in BLAS calls; numba kernels are single-threaded and split by the executor."""
    global _setter, _searched, _current
    if n == _current:
        return
    _current = n
    if not _searched:
        _setter, _searched = _blas_setter(), True
        if _setter is None:
            log.warning("no OpenBLAS found in this process: BLAS thread count left as it is")
    if _setter is not None:
        _setter(int(n))
