"""Run in a fresh process: the model's peak memory under a budget (printed as JSON).

The runtime is warmed first (imports, numba JIT, one inference, then the session closed), so
that what is measured after resetting VmHWM is the model's share alone: peak RSS minus the RSS
before the model was loaded again.
"""

from __future__ import annotations

import gc
import json
import sys

import numpy as np

import flexnnd


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := the current RSS


def feeds_for(sess) -> dict[str, np.ndarray]:
    """Seeded normal floats; zeros for integer inputs (a valid index into any table)."""
    rng = np.random.default_rng(0)
    return {
        t.name: rng.standard_normal(t.shape).astype(t.dtype)
        if np.issubdtype(np.dtype(t.dtype), np.floating)
        else np.zeros(t.shape, dtype=t.dtype)
        for t in sess.inputs
    }


def main(model: str, cache: str, budgets: list[str]) -> None:
    x = None
    for b in budgets:  # warm-up: every kernel specialization of every plan is compiled here
        with flexnnd.Session(model, budget=int(b), threads=1, cache_dir=cache) as sess:
            x = feeds_for(sess)
            sess.run(x)
    gc.collect()
    results = []
    sess = None
    gc.collect()
    before = status("VmRSS")
    reset_peak()
    for b in budgets:
        budget = int(b)
        if sess is None:
            sess = flexnnd.Session(model, budget=budget, threads=1, cache_dir=cache)
        else:
            sess.set_budget(budget)  # a swap: the next inference adopts the new plan
        sess.run(x)
        adoption = status("VmHWM") - before  # includes loading and, for a swap, the old plan
        reset_peak()
        sess.run(x)
        steady = status("VmHWM") - before
        reset_peak()
        results.append(
            {"budget": budget, "arena": sess.stats()["arena_bytes"], "adoption": adoption, "steady": steady}
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
