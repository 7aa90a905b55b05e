"""The daemon's models: loading, a shared budget split to minimise total latency, swaps, admission.

The budget covers every loaded model: each model's share pays for its arena plus the output copies
one inference makes. Each model's ladder gives its predicted latency per budget, and the split picks
one rung per model so the summed latency is smallest (an exact multiple-choice knapsack over the
Pareto fronts). A model holds its ladder's index and the plan it runs; a rung's plan is read from
plans.json when it is adopted. A model runs one inference at a time on its arena; up to
`queue_depth` more wait, beyond that a request is refused (Overloaded) rather than allocating
outside the budget. Each model keeps statistics of the requests it served (ModelStats) for Triton's
ModelStatistics and the metrics endpoint; the warm-up inference at load is not one of them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from flexnnd.daemon.events import Event, EventBus
from flexnnd.daemon.model_stats import ModelStats
from flexnnd.daemon.prepare import in_child, package_with_ladder
from flexnnd.errors import (
    BudgetTooSmall,
    FlexnnError,
    LoadError,
    ModelAlreadyLoaded,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PackageError,
    PlanError,
)
from flexnnd.graph.package import MANIFEST, Package, read_package
from flexnnd.planner.ladder import LADDER_FILE, NEXT_LADDER, PROVISIONAL, stored_rungs
from flexnnd.planner.plan import Plan
from flexnnd.planner.plan_file import IndexEntry
from flexnnd.runtime.session import Figures, Ladder, Session, package_for, package_for_path

log = logging.getLogger("flexnnd.models")


@dataclass(frozen=True)
class Rung:
    cost: int  # bytes of the model's share: arena plus one inference's output copies
    seconds: float  # predicted latency
    entry: IndexEntry  # the plan's place in plans.json: read when adopted, not held


def split_budget(rungs: Mapping[str, list[Rung]], total: int | None) -> dict[str, Rung] | None:
    """One rung per model with summed cost ≤ total and the least summed latency; None if none fits."""
    if total is None:
        return {name: max(options, key=lambda r: r.cost) for name, options in rungs.items()}
    front: list[tuple[int, float, dict[str, Rung]]] = [(0, 0.0, {})]
    for name, options in rungs.items():
        merged = [
            (cost + r.cost, seconds + r.seconds, {**chosen, name: r})
            for cost, seconds, chosen in front
            for r in options
            if cost + r.cost <= total
        ]
        merged.sort(key=lambda x: (x[0], x[1]))
        front = []
        for item in merged:  # the Pareto front: a costlier choice must be at least as fast
            if not front or item[1] <= front[-1][1]:
                front.append(item)
        if not front:
            return None
    # Equal predictions: the costlier choice keeps more weights resident, which the simulator undervalues.
    return min(front, key=lambda x: (x[1], -x[0]))[2]


class ModelState(StrEnum):
    """A loaded model's state; its value is the text status and the wire show."""

    LOADING = "loading"  # imported, no plan adopted yet
    READY = "ready"  # serving on a plan
    NO_FIT = "no-fit"  # the budget cannot hold it beside the others: no plan, waits for a larger budget
    FAILED = "failed"  # no plan to serve on (weights changed, an adopt failed): loaded again by the operator


@dataclass(frozen=True)
class ModelSnapshot:
    """One model as status and metrics show it, taken at one moment."""

    name: str
    state: ModelState
    ready: bool
    reason: str
    share: int | None  # its part of the budget; None while it has none
    figures: Figures | None  # of the plan it runs; None without one
    predicted_seconds: float  # the ladder's prediction for that plan; 0 without one
    last_latency_s: float  # the last served request's, 0 before one (the warm-up is not one)
    inferences: int
    queue_depth: int


class Model:
    """One loaded model: its session, state, share of the budget and admission counter. Its state
    changes only through its own methods (serving, kept, swap_failed, no_fit, fail)."""

    def __init__(self, name: str, source: Path, ladder: Ladder, queue_depth: int):
        package = ladder.package
        self.name, self.source, self.package_dir = name, source, package.path
        self.package, self.ladder, self.rungs = package, ladder, _rungs(ladder)
        self.inputs, self.outputs = package.inputs, package.outputs
        self.measured: dict[int, float] = {}  # arena bytes of a plan -> its last measured latency
        self.weights_path, self.weights_size = package.weights_path, package.weights_size
        self.weights_sha256 = package.weights_sha256
        self.weights_identity = _identity(package.weights_path)
        self.session: Session | None = None
        self.state = ModelState.LOADING
        self.reason = ""
        self.share: int | None = None
        self.failed_swap: tuple[int | None, int] | None = None  # (budget, arena bytes) of a swap that failed
        self.swap_error = ""  # the last failed swap's event message: a repeat is not published again
        self.stats = ModelStats()
        self.capacity = 1 + queue_depth  # the one running plus those waiting for the arena
        self._admitted = 0
        self._lock = threading.Lock()
        self._serving = threading.Lock()  # one run at a time: the session's figures read after it are its own

    @property
    def inferences(self) -> int:
        """Requests served; the warm-up run at load is not one."""
        return self.stats.inferences

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY and self.session is not None and self.session.loaded

    @property
    def minimum(self) -> int:
        return min(r.cost for r in self.rungs)

    @property
    def queue_depth(self) -> int:
        return self._admitted

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrived = time.perf_counter()
        with self._lock:
            if (
                self.state is not ModelState.READY or self.session is None
            ):  # a swap in progress is waited for, not refused
                raise ModelNotReady(f"model {self.name!r} is not ready ({self.state}): {self.reason}")
            if self._admitted >= self.capacity:
                raise Overloaded(
                    f"model {self.name!r} has {self._admitted} requests in flight or queued "
                    f"(capacity {self.capacity}); retry later"
                )
            self._admitted += 1
            session = self.session
        try:
            with self._serving:
                outputs = session.run(feeds)
                ended = time.perf_counter()
                last = session.last_run()  # not figures(): its plan sums need not run per request
        finally:
            with self._lock:
                self._admitted -= 1
        seconds = last.seconds
        self.stats.ran(
            queue_s=ended - arrived - seconds,
            infer_s=seconds,
            stall_s=last.stall_seconds,
            read_bytes=last.read_bytes,
        )
        self.measured[last.arena_bytes] = seconds
        return outputs

    @property
    def held_bytes(self) -> int:
        """Bytes its plan holds now: the arena and one inference's output copies; 0 without a plan."""
        session = self.session
        return (
            session.plan.arena_bytes + session.output_bytes if session is not None and session.loaded else 0
        )

    def snapshot(self) -> ModelSnapshot:
        session = self.session
        figures = session.figures() if session is not None and session.loaded else None
        predicted = next(
            (
                r.seconds
                for r in self.rungs
                if figures is not None and r.entry.arena_bytes == figures.arena_bytes
            ),
            0.0,
        )
        return ModelSnapshot(
            name=self.name,
            state=self.state,
            ready=self.ready,
            reason=self.reason,
            share=self.share,
            figures=figures,
            predicted_seconds=predicted,
            last_latency_s=self.stats.last_latency_s or 0.0,
            inferences=self.inferences,
            queue_depth=self.queue_depth,
        )

    @property
    def stuck_seconds(self) -> float:
        """How long the inference holding the arena has been running (0 when idle)."""
        session = self.session
        since = session.running_since if session is not None else None
        return 0.0 if since is None else time.monotonic() - since

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    @property
    def holds_memory(self) -> bool:
        """Counted in the split: a failed model holds no memory and is not planned for."""
        return self.state is not ModelState.FAILED

    def serving(self, share: int) -> None:
        """A plan was adopted: ready on it, any earlier swap failure forgotten."""
        self.state, self.reason, self.share = ModelState.READY, "", share
        self.failed_swap, self.swap_error = None, ""

    def kept(self, share: int) -> None:
        """The split keeps the plan it runs, under this share."""
        self.share, self.reason, self.failed_swap, self.swap_error = share, "", None, ""

    def swap_failed(self, total: int | None, arena_bytes: int, reason: str) -> None:
        """A swap failed with the old plan intact: it serves on, the swap waits for another budget."""
        self.failed_swap, self.reason = (total, arena_bytes), reason

    def no_fit(self, reason: str) -> None:
        """Left out of the split: its arena released until the budget grows."""
        self.close()
        self.state, self.share, self.reason = ModelState.NO_FIT, None, reason

    def fail(self, reason: str) -> None:
        """No plan to serve on: out of service until the operator loads it again."""
        self.close()
        self.state, self.share, self.failed_swap, self.reason = ModelState.FAILED, None, None, reason

    def weights_problem(self) -> str | None:
        """Why the weights file can no longer be trusted, or None. Hashes only when the file changed."""
        path = self.weights_path
        identity = _identity(path)
        if identity == self.weights_identity:
            return None
        if identity is None:
            return f"weights file {path} is gone or not a regular file"
        if identity[1] != self.weights_size:
            return f"weights file {path} is {identity[1]:,} bytes, {self.weights_size:,} at import (truncated or replaced)"
        try:
            digest = _sha256(path)
        except OSError as e:
            return f"weights file {path} is unreadable: {e}"
        if digest != self.weights_sha256:
            return f"weights file {path} changed since import (SHA-256 {digest[:12]}…, expected {self.weights_sha256[:12]}…)"
        self.weights_identity = identity  # touched or copied back unchanged: still the same weights
        return None


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a regular file, None when it is missing or something else."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Models:
    """Every loaded model under one budget. Loads, unloads and rebalances are serialized."""

    def __init__(self, cache_dir: Path, events: EventBus, threads: int | None = None, queue_depth: int = 8):
        self.cache_dir, self.events, self.threads, self.queue_depth = cache_dir, events, threads, queue_depth
        self._models: dict[str, Model] = {}
        self._lock = threading.RLock()  # held across a whole rebalance: swaps never interleave
        self.total: int | None = None
        self.swaps = 0
        self.plan_error = ""  # why the last rebalance could not read a plan ("" when it could)
        # On a machine not calibrated yet, plan ladders with estimated rates (the daemon calibrates after READY).
        self.estimate = False

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> Model:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(name, self.names()) from None

    def all(self) -> list[Model]:
        return list(self._models.values())

    def infer(self, name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self.get(name)
        try:
            return model.run(feeds)
        except LoadError:
            self.check_weights([model])  # a failed read: find out now whether the file went bad
            raise

    def check_weights(self, models: list[Model] | None = None) -> list[Model]:
        """Take models whose weights file changed out of service (arena released); the list of them."""
        broken = []
        for model in models if models is not None else self.all():
            if model.state is ModelState.FAILED:
                continue
            problem = model.weights_problem()
            if problem is None:
                continue
            with self._lock:
                model.fail(f"{problem}; reload it with flexnnctl load {model.name}")
            self.events.publish(Event("error", model.reason, model=model.name))
            broken.append(model)
        if broken:
            self._rebalance_or_keep("a model failed")
        return broken

    @property
    def committed(self) -> int:
        """Bytes the loaded plans hold now (arenas plus output copies)."""
        return sum(m.held_bytes for m in self.all())

    def minimum(self) -> int:
        return sum(m.minimum for m in self.all())

    def retry_failed_swaps(self) -> None:
        """Let the next rebalance try again the swaps that failed (an operator asked, say after
        repairing a file); the main loop's own ticks do not."""
        with self._lock:
            for model in self._models.values():
                model.failed_swap = None

    def load(
        self,
        name: str,
        source: Path,
        required: bool = False,
        input_shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> Model:
        """Import (cached), plan the ladder if the package has none, fit it into the budget and warm it.

        With required=True a budget too small for it raises BudgetTooSmall; else it stays loaded but
        not ready ("no-fit") until the budget grows. `input_shapes`: an .onnx file's unknown input
        dimensions, as the config gives them.
        """
        with self._lock:
            old = self._models.get(name)
            if old is not None and old.state is not ModelState.FAILED:
                raise ModelAlreadyLoaded(name, old.source)
            package = self._package(source, old is not None, input_shapes)  # a reload re-checks every byte
            ladder = stored_rungs(package)
            if ladder is None:
                start = time.perf_counter()
                in_child(package_with_ladder, str(package.path), str(self.cache_dir), self.estimate)
                ladder = stored_rungs(package)
                log.info(
                    "planned the ladder of %s: %d rungs in %.1f s",
                    name,
                    len(ladder),
                    time.perf_counter() - start,
                )
            model = Model(name, source, Ladder(package, ladder), self.queue_depth)
            if required and self.total is not None:
                others = sum(
                    m.minimum for m in self.all() if m.state not in (ModelState.NO_FIT, ModelState.FAILED)
                )
                if others + model.minimum > self.total:
                    raise BudgetTooSmall(self.total, others + model.minimum, name)
            if old is not None:
                del self._models[name]
            self._models[name] = model
            try:
                self.rebalance(self.total, reason=f"model {name} loaded")
            except PlanError:  # a plan could not be read: nothing was swapped, the model is not added
                del self._models[name]
                if old is not None:
                    self._models[name] = old
                raise
            self.events.publish(
                Event("model", f"{'reloaded' if old is not None else 'loaded'} from {source}", model=name)
            )
            return model

    def _package(self, source: Path, verify: bool, shapes: dict | None = None) -> Package:
        """The source's package; an import cache whose weights went bad is rebuilt from the .onnx."""
        packages = self.cache_dir / "packages"
        try:
            if not source.is_dir() and not (package_for_path(source, packages, shapes) / MANIFEST).is_file():
                in_child(
                    package_with_ladder, str(source), str(self.cache_dir), self.estimate, shapes
                )  # import in a child: see prepare.py
            return read_package(package_for(source, packages, input_shapes=shapes), verify=verify)
        except PackageError:
            if source.is_dir():
                raise  # the package is the source: only the operator can restore it
            cached = package_for(source, packages, input_shapes=shapes)
        log.warning("re-importing %s: the cached package %s no longer matches its manifest", source, cached)
        shutil.rmtree(cached)
        in_child(package_with_ladder, str(source), str(self.cache_dir), self.estimate, shapes)
        return read_package(package_for(source, packages, input_shapes=shapes), verify=True)

    def adopt_ladder(self, name: str, package_dir: Path) -> None:
        """Put the ladder planned again after calibration (NEXT_LADDER) in place of the model's
        estimated one, then rebalance: its plans are read under this lock, never half-replaced."""
        with self._lock:
            model = self.get(name)
            if model.package_dir != package_dir:  # reloaded from elsewhere meanwhile
                return
            os.replace(package_dir / NEXT_LADDER, package_dir / LADDER_FILE)
            (package_dir / PROVISIONAL).unlink(missing_ok=True)
            model.ladder = Ladder(model.package, stored_rungs(model.package))
            model.rungs = _rungs(model.ladder)
            self._rebalance_or_keep(f"model {name}'s ladder planned again with this machine's calibration")

    def unload(self, name: str) -> None:
        with self._lock:
            model = self.get(name)
            del self._models[name]
            model.close()
            self.events.publish(Event("model", "unloaded", model=name))
            self._rebalance_or_keep(f"model {name} unloaded")

    def close(self) -> None:
        with self._lock:
            for model in self.all():
                model.close()
            self._models.clear()

    def plan_split(self, total: int | None) -> tuple[dict[str, Rung], list[Model]]:
        """The split for `total`, dropping the most recently loaded models until the rest fit."""
        candidates = [m for m in self.all() if m.holds_memory]
        while candidates:
            chosen = split_budget({m.name: m.rungs for m in candidates}, total)
            if chosen is not None:
                return chosen, [m for m in self.all() if m.name not in chosen]
            candidates = candidates[:-1]
        return {}, self.all()

    def rebalance(self, total: int | None, reason: str = "") -> None:
        """Adopt the split for `total`: shrinking models first (frees memory), then growing ones.

        A growing model keeps serving on its old plan while the new arena loads when the old and
        new arenas fit the budget together; otherwise it waits for its inference in flight.
        A swap that fails with the old plan intact leaves the model ready on it (its reason says so)
        and is retried under another budget or at an operator's request; one that left no plan marks the model failed.
        Every plan to adopt is read first: if one cannot be, PlanError (naming the file) and
        nothing changes, the models serve on with their current plans.
        """
        with self._lock:
            chosen, left_out = self.plan_split(total)
            # A swap that failed under this budget waits for the budget to change: no retry every tick.
            chosen = {
                name: rung
                for name, rung in chosen.items()
                if not (m := self._models[name]).ready or m.failed_swap != (total, rung.entry.arena_bytes)
            }
            plans = self._read_plans(chosen)
            self.total = total
            for model in left_out:
                if model.state not in (ModelState.NO_FIT, ModelState.FAILED):
                    model.no_fit(
                        f"budget {total:,} bytes cannot hold it: it needs at least {model.minimum:,} bytes"
                        + (" beside the other models" if len(self._models) > 1 else "")
                    )
                    self.events.publish(Event("error", model.reason, model=model.name))

            def size(m: Model) -> int:
                return m.session.plan.arena_bytes if m.session and m.session.loaded else 0

            order = sorted(chosen, key=lambda n: chosen[n].entry.arena_bytes - size(self._models[n]))
            for name in order:
                self._adopt(self._models[name], chosen[name], plans.get(name), total, reason)

    def _rebalance_or_keep(self, reason: str) -> None:
        """Rebalance after a model left; a plan that cannot be read leaves the others as they are."""
        try:
            self.rebalance(self.total, reason=reason)
        except PlanError as e:
            log.warning("after %s the other models keep their plans: %s", reason, e)

    def _read_plans(self, chosen: Mapping[str, Rung]) -> dict[str, tuple[Plan, float]]:
        """The plan (and seconds its read took) of every model whose rung changes; PlanError, also
        published as an event once, when one of them cannot be read."""
        plans = {}
        for name, rung in chosen.items():
            model = self._models[name]
            session = model.session
            if session is not None and session.loaded and session.plan.arena_bytes == rung.entry.arena_bytes:
                continue
            start = time.perf_counter()
            try:
                plan = model.ladder.read(rung.entry)
            except PlanError as e:
                current = (
                    f"its {session.plan.arena_bytes:,}-byte plan" if session and session.loaded else "no plan"
                )
                error = PlanError(
                    f"model {name!r}: cannot read its {rung.entry.arena_bytes:,}-byte plan, so no model "
                    f"swapped ({name} keeps {current}): {e}"
                )
                # The main loop retries every tick: one event per new failure, not one per tick.
                if str(error) != self.plan_error:
                    self.plan_error = str(error)
                    self.events.publish(Event("error", str(error), model=name))
                raise error from None
            plans[name] = (plan, time.perf_counter() - start)
        self.plan_error = ""
        return plans

    def _adopt(
        self, model: Model, rung: Rung, read: tuple[Plan, float] | None, total: int | None, reason: str
    ) -> None:
        session = model.session
        if read is None:  # the rung it runs already
            model.kept(rung.cost)
            return
        plan, read_seconds = read
        start = time.perf_counter() - read_seconds
        try:
            if session is None:
                # The split chose the rung and its plan was read: the session starts on it.
                model.session = Session(
                    model.package, budget=rung.cost, threads=self.threads, ladder=model.ladder, plan=plan
                )
                _warm(model.session)
                before, overlapped = 0, False
            else:
                before = session.plan.arena_bytes if session.loaded else 0
                grow = plan.arena_bytes > before
                overlapped = grow and (total is None or self.committed + rung.cost <= total)
                session.adopt(plan, rung.cost, overlap=overlapped)
        except FlexnnError as e:
            self._adopt_failed(model, session, plan, total, e)
            return
        model.serving(rung.cost)
        seconds = time.perf_counter() - start
        if session is not None:
            self.swaps += 1
            model.stats.swapped(seconds)
        self.events.publish(
            Event(
                "swap",
                f"arena {before:,} → {plan.arena_bytes:,} bytes"
                + (" (old plan served meanwhile)" if overlapped else "")
                + (f": {reason}" if reason else ""),
                model=model.name,
                from_bytes=before,
                to_bytes=plan.arena_bytes,
                duration_s=seconds,
            )
        )

    def _adopt_failed(
        self, model: Model, session: Session | None, plan: Plan, total: int | None, error: FlexnnError
    ) -> None:
        """A failed adopt: the model serves on if `session` (the one it had) kept its plan, else it is failed."""
        if session is not None and session.loaded:  # an overlapped swap failed before switching
            kept = session.plan.arena_bytes
            model.swap_failed(
                total,
                plan.arena_bytes,
                f"swap {kept:,} → {plan.arena_bytes:,} bytes failed, the {kept:,}-byte plan serves on "
                f"(retried when the budget changes or is set again): {error}",
            )
        else:
            model.fail(
                f"adopting a {plan.arena_bytes:,}-byte plan failed and it has no plan to serve on: {error}; "
                f"reload it with flexnnctl load {model.name}"
            )
        if model.reason != model.swap_error:  # one event per distinct failure, not one per retry
            model.swap_error = model.reason
            self.events.publish(Event("error", model.reason, model=model.name))


def _rungs(ladder: Ladder) -> list[Rung]:
    """A ladder's rungs, each costing its arena plus one inference's output copies."""
    return [Rung(e.arena_bytes + ladder.output_bytes, e.predicted_seconds or 0.0, e) for e in ladder.index]


def _warm(session: Session) -> None:
    """One inference on zeros so the kernels are compiled (or loaded from numba's cache) before serving."""
    session.run({t.name: np.zeros(t.shape, dtype=t.dtype) for t in session.inputs})
