"""How every numba kernel is compiled."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import numba
from numba.core import caching, event

from flexnnd import progress

# Reassociation lets LLVM vectorize reductions; no 'nnan'/'ninf', so NaN and Inf still propagate.
FASTMATH = frozenset({"reassoc", "contract", "nsz", "arcp"})


PACKAGE = Path(__file__).resolve().parents[1]  # flexnnd/


def _sources_digest() -> str:
    """A digest of every flexnnd module a kernel is written in or inlines from (ops/, planner/)."""
    digest = hashlib.sha256()
    for path in sorted([*(PACKAGE / "ops").glob("*.py"), *(PACKAGE / "planner").glob("*.py")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


SOURCES_DIGEST = _sources_digest()


def _whole_source(base: type) -> type:
    """numba's cache locator `base`, for flexnnd's kernels only, with a source stamp that also
    covers every kernel module: numba stamps only the function's own file, so a kernel that inlines
    a changed helper from another file (bias_act, exp32) would load its stale machine code."""

    class Locator(base):
        @classmethod
        def from_function(cls, py_func, py_file):
            if not Path(py_file).resolve().is_relative_to(PACKAGE):
                return None  # not flexnnd's: numba's own locators take it
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return (super().get_source_stamp(), SOURCES_DIGEST)

    Locator.__name__ = Locator.__qualname__ = f"WholeSource{base.__name__}"
    return Locator


CACHE_IMPL = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in numba 0.61
if not any(c.__name__.startswith("WholeSource") for c in CACHE_IMPL._locator_classes):
    CACHE_IMPL._locator_classes[:0] = [_whole_source(c) for c in CACHE_IMPL._locator_classes]


def kernel(fn=None, **kw):
    """njit with the project's defaults: cached on disk, GIL released, numpy error model."""
    opts = {"cache": True, "nogil": True, "fastmath": set(FASTMATH), "error_model": "numpy"}
    opts.update(kw)
    if fn is None:
        return lambda f: numba.njit(**opts)(f)
    return numba.njit(**opts)(fn)


class _CompileCounter(event.Listener):
    """Counts the flexnnd kernels numba compiles (cache misses) in a progress task, started at the
    first: a start that finds every kernel in the cache says nothing."""

    def __init__(self, name: str, total: int | None, stack: contextlib.ExitStack):
        self.name, self.total, self.stack = name, total, stack
        self.task: progress.Task | None = None

    def on_start(self, ev: event.Event) -> None:
        pass

    def on_end(self, ev: event.Event) -> None:
        fn = ev.data["dispatcher"].py_func
        if not fn.__module__.startswith("flexnnd."):  # numba's own helpers compile inside ours
            return
        if self.task is None:
            self.task = self.stack.enter_context(progress.task(self.name, self.total))
        self.task.advance(detail=f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}")


@contextlib.contextmanager
def compiling(name: str = "compiling kernels", total: int | None = None) -> Iterator[_CompileCounter]:
    """Reports the kernels compiled inside as a progress task (loads from numba's cache are not counted)."""
    with contextlib.ExitStack() as stack:
        counter = _CompileCounter(name, total, stack)
        with event.install_listener("numba:compile", counter):
            yield counter


class _CompilerUse(event.Listener):
    """Counts numba's compiler-lock sections: each is a kernel compiled or loaded from the cache, the
    only work that touches LLVM's code once the kernels a process runs are in memory."""

    def __init__(self):
        self.used = 0  # sections finished
        self.active = 0  # sections running now
        self._lock = threading.Lock()  # numba signals a section's start before taking its lock

    def on_start(self, ev: event.Event) -> None:
        with self._lock:
            self.active += 1

    def on_end(self, ev: event.Event) -> None:
        with self._lock:
            self.active -= 1
            self.used += 1


_compiler_use = _CompilerUse()
event.register("numba:compiler_lock", _compiler_use)


def compiler_use() -> tuple[int, bool]:
    """(compiler sections finished so far, whether one is running now)."""
    return _compiler_use.used, _compiler_use.active > 0


def skip_blas_probe() -> None:
    """Keep numba from importing scipy.linalg (16 MB of RSS, 10 MB anonymous, measured here) to learn
    whether BLAS is there: no kernel calls BLAS inside numba (matmuls run in numpy), and one that did
    would fail to compile saying so. For a process that serves (the daemon), not a library user's."""
    import sys

    sys.modules.setdefault("scipy.linalg.cython_blas", None)  # None: an import of it raises ImportError
