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

from flexnnd.errors import PlanError
from flexnnd.graph.onnx_import import import_model
from flexnnd.graph.package import MANIFEST, Package, read_package
from flexnnd.planner import plan_resident
from flexnnd.runtime import threads as threads_mod
from flexnnd.runtime.executor import Executor, check_feeds


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
        if budget is not None:
            raise PlanError("budgeted plans need the planner's ladder, which this version does not have yet")
        self.package: Package = read_package(package_for(model, cache_dir))
        self.threads = int(threads) if threads else threads_mod.available_cores()
        self._lock = threading.Lock()
        self.plan = plan_resident(self.package.graph)
        self._executor = Executor(self.package, self.plan)
        self.last_inference_seconds: float | None = None
        graph = self.package.graph
        self.inputs = [TensorSpec(t.name, t.shape, t.dtype) for t in graph.inputs]
        self.outputs = [TensorSpec(t.name, t.shape, t.dtype) for t in graph.outputs]
        self._expected = {t.name: (t.shape, t.dtype) for t in graph.inputs}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one set of inputs (copies; the arena is reused next time)."""
        check_feeds(feeds, self._expected)
        with self._lock:  # one arena holds one inference's activations at a time
            threads_mod.set_threads(self.threads)
            start = time.perf_counter()
            outputs = self._executor.run(feeds)
            self.last_inference_seconds = time.perf_counter() - start
        return outputs

    def stats(self) -> dict[str, object]:
        return {
            "model": self.package.graph.name,
            "arena_bytes": self.plan.arena_bytes,
            "resident_bytes": sum(self.package.weights[w].nbytes for w in self.plan.resident),
            "steps": len(self.plan.steps),
            "last_inference_seconds": self.last_inference_seconds,
        }

    def close(self) -> None:
        with self._lock:
            self._executor.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
