"""Session: a model package, a plan and its arena — the public way to run a model."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flexnn_api.sizes import parse_size

from flexnnd.errors import BudgetTooSmall, LoadError, PackageError, ShapeError
from flexnnd.graph.package import MANIFEST, Package, read_package
from flexnnd.planner.ladder import LADDER_FILE, choose, stored_ladder
from flexnnd.planner.plan import Plan
from flexnnd.planner.plan_budget import plan_for_budget
from flexnnd.planner.plan_file import IndexEntry, read_plan
from flexnnd.planner.resident import plan_resident
from flexnnd.runtime import calibrate
from flexnnd.runtime import threads as threads_mod
from flexnnd.runtime.executor import Executor, check_feeds
from flexnnd.runtime.ladders import current_rungs


class _Closed:
    """Stands in for an executor whose arena was released and whose successor failed to build."""

    loader, stall_seconds = None, 0.0

    def __init__(self, plan: Plan):
        self.plan = plan

    def state_views(self) -> dict[str, np.ndarray]:
        return {}

    def evict_state(self) -> dict[str, np.ndarray]:
        return {}

    def reset_state(self) -> None:
        pass

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise LoadError(
            f"no plan is loaded (wanted a {self.plan.arena_bytes:,}-byte arena): the last plan adoption failed"
        )

    def close(self) -> None:
        pass


def default_cache_dir() -> Path:
    return calibrate.default_cache_dir() / "packages"


def package_for_path(
    model: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    state: Mapping[str, str] | None = None,
) -> Path:
    """Where package_for keeps the import of `model` (which may not exist yet), by file identity and
    the input shapes and state pairs it was imported with."""
    path = Path(model)
    if path.is_dir():
        return path
    st = path.stat()
    shapes = (
        "" if not input_shapes else repr(sorted((k, tuple(map(int, v))) for k, v in input_shapes.items()))
    )
    shapes += "" if not state else f"|state {sorted(state.items())!r}"
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}{shapes}".encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / f"{path.stem}-{key}"


def package_for(
    model: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    calibration_dir: str | os.PathLike | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    state: Mapping[str, str] | None = None,
) -> Path:
    """The package folder for `model`: itself if it is one, else an import (with its ladder) cached
    by file identity, `input_shapes` (static shapes for inputs whose dimensions the file leaves
    unknown) and `state` (import_model's state pairs); `calibration_dir` holds this machine's rates
    (import_model's default if None)."""
    path = Path(model)
    target = package_for_path(path, cache_dir, input_shapes, state)
    if target == path and input_shapes:
        raise ShapeError(
            f"{path} is a package, imported with fixed shapes already: input_shapes apply to an .onnx file"
        )
    if target == path and state:
        raise _state_of_a_package(path)
    if target != path and not (target / MANIFEST).is_file():
        from flexnnd.runtime.ladders import import_model  # onnx only where an .onnx is imported

        import_model(path, target, input_shapes, calibration_dir=calibration_dir, state=state)
    return target


class Ladder:
    """A package's plans by budget: the one place that chooses a rung and reads its plan.

    `index` lists the rungs: plans.json's entries, each plan read (and verified) when it is chosen,
    or, for a ladder planned again in a read-only package, the plans themselves. None: the package
    was imported without a ladder, and each budget is planned on its own. Budgets here are a
    session's, its arena plus one inference's output copies (`output_bytes`)."""

    def __init__(self, package: Package, index: Sequence[IndexEntry] | Sequence[Plan] | None):
        self.package = package
        self.index: list[IndexEntry] | list[Plan] | None = list(index) if index is not None else None
        self.output_bytes = package.output_bytes

    @classmethod
    def of(cls, package: Package) -> Ladder:
        """The package's ladder; one stored in another plan format is planned again (and stored)."""
        return cls(package, current_rungs(package, calibrate.default_cache_dir()))

    def choose(self, budget: int) -> IndexEntry | Plan:
        """The rung for a session budget of `budget` bytes; BudgetTooSmall counting the output copies."""
        try:
            return choose(self.index, budget - self.output_bytes)
        except BudgetTooSmall as e:
            raise BudgetTooSmall(budget, e.minimum + self.output_bytes, e.model) from None

    def read(self, rung: IndexEntry | Plan) -> Plan:
        """The plan of a rung: read from plans.json and verified, unless the ladder holds it already."""
        if isinstance(rung, Plan):
            return rung
        return read_plan(self.package.path / LADDER_FILE, rung, self.package.graph)

    def plan_for(self, budget: int | str | None) -> Plan:
        """The plan for a session budget (arena plus output copies); None: all resident."""
        if budget is None:
            return plan_resident(self.package.graph)
        requested = parse_size(budget)
        if self.index is not None:  # a switch between precomputed rungs, not a re-plan
            return self.read(self.choose(requested))
        try:
            return plan_for_budget(self.package.graph, requested - self.output_bytes)
        except BudgetTooSmall as e:
            raise BudgetTooSmall(requested, e.minimum + self.output_bytes, e.model, exact=False) from None

    def plans(self) -> list[Plan] | None:
        """Every plan, read from the package when only the index is held (a tool's view)."""
        if self.index and isinstance(self.index[0], IndexEntry):
            return stored_ladder(self.package)
        return self.index


@dataclass(frozen=True)
class Figures:
    """A session's figures at one moment: its plan's sizes and the last inference's timings."""

    model: str
    budget: int | None  # the budget asked for (arena plus output copies); None: all resident
    plan_budget: int | None  # the arena budget the plan was made for
    arena_bytes: int
    output_bytes: int  # one inference's output copies, beside the arena
    resident_bytes: int  # weights loaded once, at adoption
    streamed_bytes: int  # weights read on every inference
    steps: int
    sliced_steps: int
    sliced_layers: int  # distinct layers run in parts
    last_inference_seconds: float | None
    last_stall_seconds: float  # of the last inference: how long compute waited for weights
    last_read_bytes: int  # of the last inference: what the loader read
    last_read_seconds: float

    @property
    def held_bytes(self) -> int:
        """What the plan holds: its arena and one inference's output copies."""
        return self.arena_bytes + self.output_bytes


@dataclass(frozen=True)
class LastRun:
    """The last inference's timings and reads: what a served request records, without the plan's sums."""

    arena_bytes: int  # of the plan it ran on
    seconds: float | None
    stall_seconds: float  # how long compute waited for weights
    read_bytes: int  # what the loader read
    read_seconds: float


# Session.stats()'s keys: the figures as they were before Figures existed (a public dict).
STATS_KEYS = (
    *("model", "budget", "plan_budget", "arena_bytes", "resident_bytes", "streamed_bytes", "steps"),
    *("sliced_steps", "last_inference_seconds", "last_stall_seconds", "last_read_bytes", "last_read_seconds"),
)


@dataclass(frozen=True)
class Swap:
    """One adopted plan change: sizes before and after, how long it took, whether serving went on."""

    from_arena: int
    to_arena: int
    seconds: float
    overlapped: bool  # the old plan kept serving while the new arena was loaded


def _state_of_a_package(path) -> PackageError:
    return PackageError(f"{path} is a package, imported with its state pairs: state applies to an .onnx file")


def _carry_state(state: Mapping[str, np.ndarray], fresh: Executor) -> None:
    """The state a run left (views of the old arena, or their copies) into a new plan's arena."""
    views = fresh.state_views()
    for name, value in state.items():
        np.copyto(views[name], value)


class Session:
    """Runs one model. `model` is an .onnx file (imported once, cached), a package folder, or a
    Package already read; `ladder` its Ladder (or the plans or index to make one of) when the caller
    has one already; `plan` the one to start with when the caller has read it (else chosen for `budget`);
    `input_shapes` fixes the shapes of an .onnx file's inputs whose dimensions it leaves unknown, and
    `state` declares its state pairs (see `flexnnd.import_model`).

    A session is its package, one plan and that plan's arena; `adopt` changes the plan, and
    `set_budget` is an adopt deferred to the next run. A model's state (`Graph.state`, a decoder's
    cache) stays in the arena between runs and moves with each adopt; `reset_state` zeroes it."""

    def __init__(
        self,
        model: str | os.PathLike | Package,
        budget: int | str | None = None,
        threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        ladder: Ladder | Sequence[Plan] | Sequence[IndexEntry] | None = None,
        plan: Plan | None = None,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        state: Mapping[str, str] | None = None,
    ):
        if isinstance(model, Package) and state:
            raise _state_of_a_package(model.path)
        self.package: Package = (
            model
            if isinstance(model, Package)
            else read_package(package_for(model, cache_dir, input_shapes=input_shapes, state=state))
        )
        self.threads = int(threads) if threads else threads_mod.available_cores()
        self._lock = threading.Lock()
        # Swaps go before queued inferences (Lock is not fair): inferences wait while one is pending.
        self._turn = threading.Condition(self._lock)
        self._swaps_waiting = 0
        self._count_lock = threading.Lock()
        self.inputs, self.outputs = self.package.inputs, self.package.outputs
        self._expected = {t.name: (t.shape, t.dtype) for t in self.inputs}
        # Only the ladder's index is held; the plan adopted is read (and verified) when chosen.
        if ladder is None:
            ladder = Ladder.of(self.package)
        elif not isinstance(ladder, Ladder):
            ladder = Ladder(self.package, ladder)
        self.rungs: Ladder = ladder
        # What one inference allocates besides the arena: the copies of its outputs it returns.
        self.output_bytes = ladder.output_bytes
        self.plan = plan if plan is not None else ladder.plan_for(budget)
        self.budget: int | None = None if budget is None else parse_size(budget)
        self._pending: Plan | None = None
        self._executor = Executor(self.package, self.plan)
        self.last_inference_seconds: float | None = None
        self.running_since: float | None = None  # monotonic start of the inference in flight, for watchdogs

    def plan_for(self, budget: int | str | None) -> Plan:
        """The plan this session would adopt for `budget` (arena plus output copies); None: all resident."""
        return self.rungs.plan_for(budget)

    @property
    def ladder(self) -> list[Plan] | None:
        """Every plan of the ladder (read from the package when only its index is held: a tool's view)."""
        return self.rungs.plans()

    def set_budget(self, budget: int | str | None) -> None:
        """Plan for `budget` now (BudgetTooSmall at once if nothing fits); swap at the next inference."""
        plan = self.plan_for(budget)
        with self._lock:
            self._pending = plan
            self.budget = None if budget is None else parse_size(budget)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one set of inputs (copies; the arena is reused next time). Feeds and
        outputs have the model's declared types (`inputs`, `outputs`): a float16 or double one is
        converted to and from the arena's float32 as it is copied in and out."""
        check_feeds(feeds, self._expected)
        with self._turn:  # one arena holds one inference's activations at a time
            while self._swaps_waiting:
                self._turn.wait()
            if self._pending is not None:  # set_budget's deferred adopt
                plan, self._pending = self._pending, None
                self._rebuild(plan)
            threads_mod.set_threads(self.threads)
            start = time.perf_counter()
            self.running_since = time.monotonic()
            try:
                outputs = self._executor.run(feeds)
            finally:
                self.running_since = None
            self.last_inference_seconds = time.perf_counter() - start
        return outputs

    def adopt(self, plan: Plan, budget: int | None, overlap: bool) -> Swap:
        """Switch to `plan` now.

        overlap=True builds the new arena and loads its resident weights while the old plan keeps
        serving, then switches; the caller vouches that both arenas fit its budget at once. Otherwise
        the inference in flight finishes, the old arena is released, then the new one is built
        (queued inferences wait meanwhile).

        A failure leaves one of two states, told apart by `loaded`: an overlapped swap that fails
        leaves the old plan adopted and serving (`loaded` as before, `plan` unchanged); a blocking
        one leaves no plan (`loaded` False, runs raise LoadError) until the next successful adopt.
        """
        start = time.perf_counter()
        old_arena = self.plan.arena_bytes
        if overlap:
            fresh = Executor(self.package, plan)  # a failure here has touched nothing of the old plan
            with self._priority():
                _carry_state(self._executor.state_views(), fresh)  # arena to arena, between two runs
                old, self._executor = self._executor, fresh
                self.plan, self._pending, self.budget = plan, None, budget
            old.close()
        else:
            with self._priority():
                self._rebuild(plan)
                self._pending, self.budget = None, budget
        return Swap(old_arena, plan.arena_bytes, time.perf_counter() - start, overlap)

    def _rebuild(self, plan: Plan) -> None:
        """The old arena goes first, then `plan`'s is built: the two never add up beyond the budget.
        The caller holds the turn. A failure leaves no plan: runs raise LoadError, not a closed
        executor's {}, until the next adopt."""
        try:
            # The state (a decoder's cache) outlives its arena in a heap copy, made once the arena's
            # other pages are returned: the copy and the new arena never add up beyond the budget.
            state = self._executor.evict_state() if self._executor.state_views() else {}
            self._executor.close()  # inside the try: a half-closed executor must not stay in use
            fresh = Executor(self.package, plan)
        except BaseException:
            self._executor = _Closed(plan)
            raise
        _carry_state(state, fresh)
        self._executor, self.plan = fresh, plan

    def reset_state(self) -> None:
        """Zero the state the model keeps between runs (a decoder's cache: a new conversation)."""
        with self._priority():
            self._executor.reset_state()

    @property
    def state(self) -> dict[str, str]:
        """The model's state pairs, output -> the input it feeds on the next run (none: stateless)."""
        return dict(self.package.graph.state)

    @property
    def state_bytes(self) -> int:
        """The arena bytes the state inputs hold in every plan (the outputs they are copied from are
        planned like any output)."""
        tensors = self.package.graph.tensors
        return sum(tensors[name].nbytes for name in self.package.graph.state.values())

    @contextlib.contextmanager
    def _priority(self):
        """The arena next, after the inference in flight and before any queued one."""
        with self._count_lock:
            self._swaps_waiting += 1
        with self._turn:
            try:
                yield
            finally:
                with self._count_lock:
                    self._swaps_waiting -= 1
                self._turn.notify_all()

    @property
    def loaded(self) -> bool:
        """False after a blocking adopt failed to build its arena."""
        return not isinstance(self._executor, _Closed)

    def last_run(self) -> LastRun:
        loader = self._executor.loader
        return LastRun(
            arena_bytes=self.plan.arena_bytes,
            seconds=self.last_inference_seconds,
            stall_seconds=self._executor.stall_seconds,
            read_bytes=loader.read_bytes if loader else 0,
            read_seconds=loader.read_seconds if loader else 0.0,
        )

    def figures(self) -> Figures:
        plan = self.plan
        last = self.last_run()
        return Figures(
            model=self.package.graph.name,
            budget=self.budget,
            plan_budget=plan.budget,
            arena_bytes=plan.arena_bytes,
            output_bytes=self.output_bytes,
            resident_bytes=sum(plan.region[p].nbytes for p in plan.resident),
            streamed_bytes=sum(plan.region[ld.piece].nbytes for ld in plan.loads),
            steps=len(plan.steps),
            sliced_steps=sum(1 for s in plan.steps if s.part is not None),
            sliced_layers=len({s.node for s in plan.steps if s.part is not None}),
            last_inference_seconds=last.seconds,
            last_stall_seconds=last.stall_seconds,
            last_read_bytes=last.read_bytes,
            last_read_seconds=last.read_seconds,
        )

    def stats(self) -> dict[str, object]:
        """The figures as a dict (the public API's form; the daemon reads figures())."""
        figures = self.figures()
        return {key: getattr(figures, key) for key in STATS_KEYS}

    def close(self) -> None:
        with self._lock:
            self._executor.close()
            self._executor = _Closed(self.plan)  # a late run gets a clear LoadError, not a dead arena

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
