"""Profile by arithmetic: each step's cost, priced by a `Machine` (the simulator is simulate.py).

Sizes come from shapes, not from a test run. Times come from a `Machine`: the rates of each
kernel path and of the storage the weights are read from, measured once per machine
(by calibration, above the planner) and passed in, so that everything here is a pure function.
"""

from __future__ import annotations

from dataclasses import dataclass

from flexnnd.graph.ir import Graph, Node
from flexnnd.ops.base import CostKind
from flexnnd.planner.lifetimes import lifetimes


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
    kind: CostKind  # the op's cost_kind
    weight_bytes: int
    input_bytes: int
    output_bytes: int
    scratch_bytes: int
    flops: int
    shared_bytes: int = 0  # the operand every channel part of this step reads in full
    # a depthwise conv's FLOPs were it stride 1: its kernel's time follows the input's pixels
    dense_flops: int = 0

    def __post_init__(self):
        object.__setattr__(self, "kind", CostKind(self.kind))

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
        if self.kind == CostKind.MEMORY:
            return (self.input_bytes + self.output_bytes) / machine.memory_bytes + machine.step_overhead
        if self.kind == CostKind.FC:
            streaming = self.weight_bytes / machine.fc_bytes if machine.fc_bytes else 0.0
            return max(self.flops / machine.gemm_flops, streaming) + machine.step_overhead
        if self.kind == CostKind.DEPTHWISE:
            return max(self.flops, self.dense_flops) / machine.depthwise_flops + machine.step_overhead
        rate = {CostKind.GEMM: machine.gemm_flops, CostKind.WINOGRAD: machine.winograd_flops}
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
