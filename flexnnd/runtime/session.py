"""Session: a model package, a plan and its arena — the public way to run a model."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexnnd.errors import BudgetTooSmall
from flexnnd.graph.onnx_import import import_model
from flexnnd.graph.package import MANIFEST, Package, read_package
from flexnnd.planner import plan_resident
from flexnnd.planner.ladder import choose, stored_ladder
from flexnnd.planner.plan import Plan
from flexnnd.planner.stream import plan_for_budget
from flexnnd.runtime import threads as threads_mod
from flexnnd.runtime.executor import Executor, check_feeds
from flexnnd.sizes import parse_size


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flexnn" / "packages"


def package_for(model: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The package folder for `model`: itself if it is one, else an import cached by file identity."""
    path = Path(model)
    if path.is_dir():
        return path
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = Path(cache_dir or default_cache_dir()) / f"{path.stem}-{key}"
    if not (target / MANIFEST).is_file():
        import_model(path, target)
    return target


class Session:
    """Runs one model. `model` is an .onnx file (imported once, cached) or a package folder."""

    def __init__(
        self,
        model: str | os.PathLike,
        budget: int | str | None = None,
        threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        self.package: Package = read_package(package_for(model, cache_dir))
        self.threads = int(threads) if threads else threads_mod.available_cores()
        self._lock = threading.Lock()
        graph = self.package.graph
        self.inputs = [TensorSpec(t.name, t.shape, t.dtype) for t in graph.inputs]
        self.outputs = [TensorSpec(t.name, t.shape, t.dtype) for t in graph.outputs]
        self._expected = {t.name: (t.shape, t.dtype) for t in graph.inputs}
        # What one inference allocates besides the arena: the copies of its outputs it returns.
        self.output_bytes = sum(t.nbytes for t in graph.outputs)
        self.ladder = stored_ladder(self.package)
        self.plan = self._plan_for(budget)
        self.budget: int | None = None if budget is None else parse_size(budget)
        self._pending: Plan | None = None
        self._executor = Executor(self.package, self.plan)
        self.last_inference_seconds: float | None = None

    def _plan_for(self, budget: int | str | None) -> Plan:
        if budget is None:
            return plan_resident(self.package.graph)
        requested = parse_size(budget)
        if self.ladder is not None:  # a switch between precomputed rungs, not a re-plan
            try:
                return choose(self.ladder, requested - self.output_bytes)
            except BudgetTooSmall as e:
                raise BudgetTooSmall(requested, e.minimum + self.output_bytes, e.model) from None
        try:
            return plan_for_budget(self.package.graph, requested - self.output_bytes)
        except BudgetTooSmall as e:
            raise BudgetTooSmall(requested, e.minimum + self.output_bytes, e.model, exact=False) from None

    def set_budget(self, budget: int | str | None) -> None:
        """Plan for `budget` now (BudgetTooSmall at once if nothing fits); swap at the next inference."""
        plan = self._plan_for(budget)
        with self._lock:
            self._pending = plan
            self.budget = None if budget is None else parse_size(budget)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one set of inputs (copies; the arena is reused next time)."""
        check_feeds(feeds, self._expected)
        with self._lock:  # one arena holds one inference's activations at a time
            if self._pending is not None:
                # The old arena goes first, so the two never add up beyond the budget.
                self._executor.close()
                self.plan, self._pending = self._pending, None
                self._executor = Executor(self.package, self.plan)
            threads_mod.set_threads(self.threads)
            start = time.perf_counter()
            outputs = self._executor.run(feeds)
            self.last_inference_seconds = time.perf_counter() - start
        return outputs

    def stats(self) -> dict[str, object]:
        plan = self.plan
        return {
            "model": self.package.graph.name,
            "budget": self.budget,
            "plan_budget": plan.budget,
            "arena_bytes": plan.arena_bytes,
            "resident_bytes": sum(plan.region[p].nbytes for p in plan.resident),
            "streamed_bytes": sum(plan.region[ld.piece].nbytes for ld in plan.loads),
            "steps": len(plan.steps),
            "sliced_steps": sum(1 for s in plan.steps if s.part is not None),
            "last_inference_seconds": self.last_inference_seconds,
        }

    def close(self) -> None:
        with self._lock:
            self._executor.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
