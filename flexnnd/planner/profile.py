"""Profile by arithmetic, and a latency simulator of one loader and one compute thread.

Sizes come from shapes, not from a test run. Times come from a `Machine`: the rates of each
kernel path and of the storage the weights are read from, measured once per machine
(`flexnnd.runtime.calibrate`) and passed in, so that everything here is a pure function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flexnnd.graph.ir import Graph, Node
from flexnnd.ops.base import COST_DEPTHWISE, COST_FC, COST_GEMM, COST_MEMORY, COST_WINOGRAD
from flexnnd.planner.lifetimes import lifetimes
from flexnnd.planner.plan import Plan
from flexnnd.weights_file import BUNDLE_BYTES

MIN_SPEED = 0.1  # of the compute thread while a read is in flight, however costly reads are


@dataclass(frozen=True)
class Machine:
    gemm_flops: float  # FLOP/s of BLAS-backed convolutions and fully connected layers
    winograd_flops: float  # direct-convolution-equivalent FLOP/s of the Winograd path
    depthwise_flops: float
    memory_bytes: float  # bytes/s moved by memory-bound kernels
    read_bytes: float  # bytes/s read from the weights file's storage
    step_overhead: float = 2e-6  # seconds of Python dispatch per step
    read_latency: float = 0.0  # seconds each read costs on top of its bytes / read_bytes
    # bytes/s at which each channel part of a sliced GEMM re-reads the operand all parts share
    # (its im2col or transformed input); 0: parts cost nothing beyond their share
    part_bytes: float = 0.0
    # bytes/s of weights a fully connected layer streams from memory (one input row: GEMV, bound
    # by its weights, not its FLOPs); 0: priced by FLOPs alone
    fc_bytes: float = 0.0
    # compute seconds lost per byte the loader reads meanwhile (here the hypervisor's copy into
    # guest memory; on a DMA device, memory-bus contention); 0: reads are free to the compute thread
    read_cpu: float = 0.0


@dataclass(frozen=True)
class StepCost:
    node: str
    kind: str  # the op's cost_kind: one of ops.base.COST_*
    weight_bytes: int
    input_bytes: int
    output_bytes: int
    scratch_bytes: int
    flops: int
    shared_bytes: int = 0  # the operand every channel part of this step reads in full
    # a depthwise conv's FLOPs were it stride 1: its kernel's time follows the input's pixels
    dense_flops: int = 0

    def part_seconds(self, machine: Machine, parts: int, channels: bool) -> float:
        """One of `parts` parts of this step: its share of the work, its own dispatch and, for
        channel parts, reading the operand they all share."""
        if parts <= 1:
            return self.compute_seconds(machine)
        share = self.compute_seconds(machine) / parts + machine.step_overhead
        if channels and machine.part_bytes:
            share += self.shared_bytes / machine.part_bytes
        return share

    def compute_seconds(self, machine: Machine) -> float:
        if self.kind == COST_MEMORY:
            return (self.input_bytes + self.output_bytes) / machine.memory_bytes + machine.step_overhead
        if self.kind == COST_FC:
            streaming = self.weight_bytes / machine.fc_bytes if machine.fc_bytes else 0.0
            return max(self.flops / machine.gemm_flops, streaming) + machine.step_overhead
        if self.kind == COST_DEPTHWISE:
            return max(self.flops, self.dense_flops) / machine.depthwise_flops + machine.step_overhead
        rate = {COST_GEMM: machine.gemm_flops, COST_WINOGRAD: machine.winograd_flops}
        return self.flops / rate[self.kind] + machine.step_overhead


def shared_bytes(node: Node) -> int:
    """Bytes of the operand each output-channel part of `node` reads whole (its op says which)."""
    return node.op.shared_bytes(node.in_shapes)


def step_costs(graph: Graph) -> list[StepCost]:
    """One cost per step of an unsliced plan (alias and elided nodes do not run)."""
    costs = []
    for node in lifetimes(graph).steps:
        weights = sum(graph.tensors[i].nbytes for i in node.inputs if i and graph.is_constant(i))
        inputs = sum(graph.tensors[i].nbytes for i in node.inputs if i and not graph.is_constant(i))
        outputs = sum(graph.tensors[o].nbytes for o in node.outputs)
        out_shapes = [graph.shape(o) for o in node.outputs]
        costs.append(
            StepCost(
                node=node.name,
                kind=node.op.cost_kind(node.in_shapes),
                weight_bytes=weights,
                input_bytes=inputs,
                output_bytes=outputs,
                scratch_bytes=node.op.scratch_bytes(node.in_shapes),
                flops=node.op.flops(node.in_shapes, out_shapes),
                shared_bytes=shared_bytes(node),
                dense_flops=node.op.dense_flops(node.in_shapes, out_shapes),
            )
        )
    return costs


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
