"""A latency simulator of one loader and one compute thread, running a plan at a `Machine`'s rates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flexnnd.planner.plan import Plan
from flexnnd.planner.profile import Machine
from flexnnd.weights_file import BUNDLE_BYTES

MIN_SPEED = 0.1  # of the compute thread while a read is in flight, however costly reads are


@dataclass(frozen=True)
class Timeline:
    seconds: float  # end of the last step
    compute_start: tuple[float, ...]
    compute_end: tuple[float, ...]
    load_start: tuple[float, ...]
    load_end: tuple[float, ...]

    @property
    def stall_seconds(self) -> float:
        """Time the compute thread waited for weights."""
        busy = sum(e - s for s, e in zip(self.compute_start, self.compute_end, strict=True))
        return self.seconds - busy


def simulate(
    plan: Plan,
    step_seconds: Sequence[float],
    load_bytes: Mapping[str, int],
    machine: Machine,
    joins: Sequence[bool] | None = None,
) -> Timeline:
    """Predicted latency of one inference under `plan`.

    `step_seconds[i]` is step i's compute time; `load_bytes[piece]` the size of each streamed
    piece. The loader reads the plan's loads one after another, each no earlier than the end of
    the step that releases it; a step starts when the previous one ended and its pieces are in.
    As the loader does, a read takes along the loads after it that continue it in the file
    (`joins[k]`: load k continues load k-1) and are released by then, up to BUNDLE_BYTES.
    Compute runs slower while a read is in flight: `machine.read_cpu` seconds per byte read.
    """
    n, loads = len(plan.steps), plan.loads
    if joins is None:
        joins = [False] * len(loads)
    loads_of_step: dict[int, list[int]] = {}
    for k, load in enumerate(loads):
        loads_of_step.setdefault(load.step, []).append(k)
    load_start = [0.0] * len(loads)
    load_end = [0.0] * len(loads)
    compute_start = [0.0] * n
    compute_end = [0.0] * n
    loader_free, next_load, clock = 0.0, 0, 0.0
    reads: list[tuple[float, float, float]] = []  # (start, finish, compute speed) per preadv
    first_read = 0

    def released(k: int) -> float:
        return 0.0 if loads[k].after_step < 0 else compute_end[loads[k].after_step]

    for i in range(n):
        # The loader runs every load released by steps before i (their end times are known).
        while next_load < len(loads) and loads[next_load].after_step < i:
            start = max(loader_free, released(next_load))
            end, nbytes = next_load + 1, load_bytes[loads[next_load].piece]
            while (
                end < len(loads)
                and joins[end]
                and loads[end].after_step < i
                and released(end) <= start
                and nbytes + load_bytes[loads[end].piece] <= BUNDLE_BYTES
            ):
                nbytes += load_bytes[loads[end].piece]
                end += 1
            finish = start + machine.read_latency + nbytes / machine.read_bytes
            for k in range(next_load, end):
                load_start[k], load_end[k] = start, finish
            loader_free, next_load = finish, end
            if machine.read_cpu > 0 and finish > start:
                # the compute thread's speed meanwhile: over a whole read it loses read_cpu s/byte
                speed = max(1 - machine.read_cpu * nbytes / (finish - start), MIN_SPEED)
                reads.append((start, finish, speed))
        ready = max((load_end[k] for k in loads_of_step.get(i, ())), default=0.0)
        compute_start[i] = max(clock, ready)
        if reads:
            while first_read < len(reads) and reads[first_read][1] <= compute_start[i]:
                first_read += 1  # steps start in order: a read over by now slows no later step
            compute_end[i] = _slowed(compute_start[i], step_seconds[i], reads, first_read)
        else:
            compute_end[i] = compute_start[i] + step_seconds[i]
        clock = compute_end[i]
    return Timeline(clock, tuple(compute_start), tuple(compute_end), tuple(load_start), tuple(load_end))


def _slowed(start: float, work: float, reads: Sequence[tuple[float, float, float]], first: int) -> float:
    """When `work` seconds of compute begun at `start` end, running at `speed` (< 1) while each
    read (start, finish, speed) is in flight; reads are disjoint and in order (one loader)."""
    t = start
    for j in range(first, len(reads)):  # not a slice: steps are many, and most end in the first read
        begin, finish, speed = reads[j]
        if begin > t:  # compute alone until the read starts
            if work <= begin - t:
                return t + work
            work -= begin - t
            t = begin
        if work <= (finish - t) * speed:
            return t + work / speed
        work -= (finish - t) * speed
        t = finish
    return t + work
