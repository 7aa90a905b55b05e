"""How every numba kernel is compiled."""

from __future__ import annotations

import numba

# Reassociation lets LLVM vectorize reductions; no 'nnan'/'ninf', so NaN and Inf still propagate.
FASTMATH = frozenset({"reassoc", "contract", "nsz", "arcp"})


def kernel(fn=None, **kw):
    """njit with the project's defaults: cached on disk, GIL released, numpy error model."""
    opts = {"cache": True, "nogil": True, "fastmath": set(FASTMATH), "error_model": "numpy"}
    opts.update(kw)
    if fn is None:
        return lambda f: numba.njit(**opts)(f)
    return numba.njit(**opts)(fn)
