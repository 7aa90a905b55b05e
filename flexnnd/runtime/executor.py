"""The executor: one plan bound to one arena; an inference walks its steps.

All shape work and view creation happen once, when the plan is adopted; `run` only copies the
inputs in, calls the bound kernels in order, and copies the outputs out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import numpy as np

from flexnnd.errors import FeedError, InputValueError, LoadError
from flexnnd.graph.ir import rows_of
from flexnnd.graph.package import Package
from flexnnd.ops.base import Kernel
from flexnnd.planner import scratch_name
from flexnnd.planner.plan import Plan
from flexnnd.planner.verify import operand_reuse
from flexnnd.runtime.arena import Arena
from flexnnd.runtime.loader import Checksum, Loader, PieceRead, open_weights, read_piece


class Executor:
    def __init__(self, package: Package, plan: Plan):
        self.package, self.plan = package, plan
        graph = package.graph
        self.arena = Arena(plan.arena_bytes)
        self.views: dict[str, np.ndarray] = {}
        for name, info in graph.tensors.items():
            if not graph.is_constant(name) and (name in plan.region or name in plan.aliases):
                self.views[name] = self.arena.view(plan.address(name), info.shape, info.dtype)
        for piece in plan.pieces.values():
            info = graph.tensors[piece.tensor]
            # A rank-0 constant is one piece of one row; its view keeps rank 0.
            shape = (piece.stop - piece.start, *info.shape[1:]) if info.shape else ()
            self.views[piece.name] = self.arena.view(plan.region[piece.name].offset, shape, info.dtype)
        by_weight = self._pieces_by_weight()
        self._load_resident(by_weight)
        nodes = {n.name: n for n in graph.nodes}
        reuse = operand_reuse(plan, graph)
        self.kernels: list[Kernel] = []
        for i, step in enumerate(plan.steps):
            node = nodes[step.node]
            pieces = iter(step.weights)
            ins = [
                None if not i else self.views[next(pieces) if graph.is_constant(i) else i]
                for i in node.inputs
            ]
            outs = [self.views[o] for o in node.outputs]
            region = plan.region.get(scratch_name(node.name))
            scratch = None if region is None else self.arena.view(region.offset, (region.nbytes // 4,))
            kernel = node.op.bind(ins, outs, scratch, step.part, reuse[i])
            self.kernels.append(_guarded(kernel, node.guard, self.views) if node.guard else kernel)
        kept = set(graph.state.values())
        self.inputs = [(t.name, self.views[t.name]) for t in graph.inputs if t.name not in kept]
        # Each output is copied out in its declared type (a float16 output is held as float32).
        self.outputs = [
            (t.name, self.views[t.name], graph.boundary_dtype(t.name))
            for t in graph.outputs
            if t.name not in graph.state
        ]
        # (state input, its view): planned live to the end, so a run leaves it for the next.
        self.state = [(inp, self.views[inp]) for inp in graph.state.values()]
        # Pairs updated in place share one region (planner.lifetimes.in_place_state): nothing to copy.
        self.state_copies = [
            (self.views[inp], self.views[out])
            for out, inp in graph.state.items()
            if plan.address(out) != plan.address(inp)
        ]
        # Only a double feed can overflow on its way into float32, only a float16 output on its way out.
        self.narrowed_inputs = any(graph.boundary_dtype(name) == "float64" for name, _ in self.inputs)
        self.narrowed_outputs = any(dtype == "float16" for _, _, dtype in self.outputs)
        self.loader: Loader | None = None
        self.stall_seconds = 0.0  # the last inference's wait for weights
        if plan.loads:
            reads = [
                PieceRead(
                    ld.piece,
                    memoryview(self.views[ld.piece]).cast("B"),
                    self.piece_range(ld.piece)[0],
                    ld.after_step,
                )
                for ld in plan.loads
            ]
            self.loader = Loader(str(package.weights_path), reads, checks=self._streamed_checks(by_weight))
        # Loads that must be in before each step (loads are in step order).
        self.loads_before = [sum(1 for ld in plan.loads if ld.step <= i) for i in range(len(plan.steps))]
        # Only steps that need a new load wait, and only steps that release one tell the loader:
        # two lock round trips per step were ~5% of a 350-step plan's time.
        self.waits = [n > (self.loads_before[i - 1] if i else 0) for i, n in enumerate(self.loads_before)]
        self.releases = [False] * len(plan.steps)
        for ld in plan.loads:
            if ld.after_step >= 0:
                self.releases[ld.after_step] = True

    def piece_range(self, name: str) -> tuple[int, int]:
        """(file offset, bytes) of a weight piece: its rows are contiguous in the weights file."""
        piece = self.plan.pieces[name]
        entry = self.package.weights[piece.tensor]
        row = entry.nbytes // rows_of(entry.shape)
        return entry.offset + piece.start * row, (piece.stop - piece.start) * row

    def _pieces_by_weight(self) -> dict[str, list[str]]:
        """Each weight's pieces in row order."""
        by_weight: dict[str, list[str]] = {}
        for name, piece in sorted(self.plan.pieces.items(), key=lambda item: item[1].start):
            by_weight.setdefault(piece.tensor, []).append(name)
        return by_weight

    def _checksum(self, tensor: str, pieces: list[str], load_of: Mapping[str, int]) -> Checksum:
        return Checksum(
            tensor,
            self.package.weights[tensor].crc32,
            [(memoryview(self.views[p]).cast("B"), load_of.get(p)) for p in pieces],
        )

    def _streamed_checks(self, by_weight: Mapping[str, list[str]]) -> list[Checksum]:
        """A checksum for every weight with a streamed piece, its resident pieces folded in place."""
        load_of = {ld.piece: k for k, ld in enumerate(self.plan.loads)}
        return [
            self._checksum(tensor, pieces, load_of)
            for tensor, pieces in by_weight.items()
            if any(p in load_of for p in pieces)
        ]

    def _load_resident(self, by_weight: Mapping[str, list[str]]) -> None:
        """Read every resident piece straight into its arena view; a weight all of whose pieces are
        resident checks its CRC (the others are checked as their streamed pieces arrive). Only here:
        the arena holds them from now on, so a later change to the file cannot reach them."""
        path = str(self.package.weights_path)
        try:
            fd, direct = open_weights(path)
        except OSError as e:
            raise LoadError(f"cannot open weights file {path}: {e}") from None
        try:
            for name in self.plan.resident:
                offset, _ = self.piece_range(name)
                read_piece(fd, memoryview(self.views[name]).cast("B"), offset, name, path, direct=direct)
        finally:
            os.close(fd)
            if direct is not None:
                os.close(direct)
        resident = set(self.plan.resident)
        for tensor, pieces in by_weight.items():
            if resident.issuperset(pieces) and not self._checksum(tensor, pieces, {}).arrived(-1):
                raise LoadError(
                    f"weight {tensor!r} in {path} fails its checksum: the file changed since import"
                )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.narrowed_inputs:
            self._copy_narrowed_in(feeds)
        else:
            for name, view in self.inputs:
                np.copyto(view, feeds[name])
        loader = self.loader
        i = 0
        try:
            if loader is None:
                for i, kernel in enumerate(self.kernels):  # noqa: B007 - i names the failing step
                    kernel()
            else:
                loader.begin()
                stalled = 0.0
                try:
                    for i, kernel in enumerate(self.kernels):
                        if self.waits[i]:
                            start = time.perf_counter()
                            loader.wait_for(self.loads_before[i])
                            stalled += time.perf_counter() - start
                        kernel()
                        if self.releases[i]:
                            loader.step_done(i)
                finally:
                    loader.end()
                    self.stall_seconds = stalled
        except InputValueError as e:  # a kernel knows its op, not its node: the step says which
            raise InputValueError(self.plan.steps[i].node, e.op_type, e.why) from None
        for kept, new in self.state_copies:  # within the arena, after a run that succeeded
            np.copyto(kept, new)
        if not self.narrowed_outputs:
            return {name: view.astype(dtype) for name, view, dtype in self.outputs}
        with np.errstate(over="ignore"):  # a float16 output beyond its range is inf, as in ORT
            return {name: view.astype(dtype) for name, view, dtype in self.outputs}

    def _copy_narrowed_in(self, feeds: Mapping[str, np.ndarray]) -> None:
        with np.errstate(over="raise"):  # a double feed beyond float32 would become inf unseen
            for name, view in self.inputs:
                try:
                    np.copyto(view, feeds[name])
                except FloatingPointError:
                    raise _beyond_float32(name, feeds[name]) from None

    def state_views(self) -> dict[str, np.ndarray]:
        """The state inputs' views of the arena, by name (what the next run reads)."""
        return dict(self.state)

    def evict_state(self) -> dict[str, np.ndarray]:
        """The state as heap copies, every other page of the arena returned first, so the copy adds
        nothing to the arena's peak: the executor is spent, to be closed next."""
        plan = self.plan
        self.arena.drop_pages_except([(plan.region[n].offset, plan.region[n].nbytes) for n, _ in self.state])
        return {name: kept.copy() for name, kept in self.state}

    def reset_state(self) -> None:
        for _, kept in self.state:
            kept.fill(0)

    def close(self) -> None:
        if self.loader is not None:
            self.loader.close()
            for read in self.loader.reads:
                read.view.release()
            for check in self.loader.checks:  # views of the arena too: it unmaps only once none is left
                for view, _ in check.parts:
                    view.release()
            self.loader = None
        self.kernels.clear()
        self.views.clear()
        self.inputs = self.outputs = self.state = self.state_copies = []
        self.arena.close()


def _guarded(kernel: Kernel, guard: tuple[tuple[str, bool], ...], views: Mapping[str, np.ndarray]) -> Kernel:
    """The step of a branch of an If decided at run time: it runs only when its conditions hold, so
    unguarded steps pay nothing. Its weights are still streamed (correct, if wasteful)."""
    conds = [(views[name].reshape(-1), branch) for name, branch in guard]

    def run() -> None:
        for cond, branch in conds:
            if bool(cond[0]) is not branch:
                return
        kernel()

    return run


def _beyond_float32(name: str, value: np.ndarray) -> FeedError:
    """A double feed's first finite value beyond float32's range (infinities pass as they are)."""
    flat = value.reshape(-1)
    top = float(np.finfo(np.float32).max)
    first = int(np.flatnonzero(np.isfinite(flat) & (np.abs(flat) > top))[0])
    return FeedError(
        f"input {name!r} holds {float(flat[first]):.6g} at flat index {first}, beyond float32's range "
        f"(±{top:.6g}): flexnn computes double models in float32"
    )


def check_feeds(feeds: Mapping[str, np.ndarray], expected: Mapping[str, tuple[tuple[int, ...], str]]) -> None:
    """Names, shapes and dtypes of the inputs, each mismatch named in the error."""
    if not isinstance(feeds, Mapping):
        raise FeedError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
    missing = [n for n in expected if n not in feeds]
    unknown = [n for n in feeds if n not in expected]
    if missing or unknown:
        raise FeedError(
            f"inputs do not match the model: missing {missing}, unknown {unknown}; the model takes {list(expected)}"
        )
    for name, (shape, dtype) in expected.items():
        value = feeds[name]
        if not isinstance(value, np.ndarray):
            raise FeedError(f"input {name!r} must be a numpy array, got {type(value).__name__}")
        if value.dtype != np.dtype(dtype):
            raise FeedError(f"input {name!r} has dtype {value.dtype}, the model expects {dtype}")
        if value.shape != tuple(shape):
            raise FeedError(f"input {name!r} has shape {value.shape}, the model expects {tuple(shape)}")
