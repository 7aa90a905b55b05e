"""The intermediate representation: frozen dataclasses, shapes fully static."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flexnnd.ops.base import Op

Shape = tuple[int, ...]


def nbytes_of(shape: Shape, dtype: str = "float32") -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def rows_of(shape: Shape) -> int:
    """The rows a weight is cut and streamed by: its first dimension; a rank-0 tensor is one row."""
    return int(shape[0]) if shape else 1


def runtime_dtype(value: np.ndarray) -> str:
    """The element type a constant is stored and read as: floats as float32, others as they are."""
    return "float32" if np.issubdtype(value.dtype, np.floating) else str(value.dtype)


# ONNX float element types held as float32 (computed in float32) but kept at the graph's boundary.
WIDENED = frozenset({"float16", "float64"})


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: Shape
    dtype: str = "float32"

    @cached_property
    def nbytes(self) -> int:
        return nbytes_of(self.shape, self.dtype)


@dataclass(frozen=True)
class Node:
    """One op application. `in_shapes` are the ONNX-layout shapes of the inputs (None where an
    optional input is absent), which is what Op.infer/scratch_bytes/flops take; constants are
    stored in their prepared layout, whose shapes may differ."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    in_shapes: tuple[Shape | None, ...] = ()
    # (condition tensor, branch) pairs: the node runs only when each bool condition equals its
    # branch (a step inside an If whose condition is known only at run time); () = always runs.
    guard: tuple[tuple[str, bool], ...] = ()

    @property
    def op_type(self) -> str:
        return self.op.op_type

    @property
    def reads(self) -> tuple[str, ...]:
        """The tensors the node needs before it runs: its inputs and its guard's conditions."""
        return (*self.inputs, *(cond for cond, _ in self.guard)) if self.guard else self.inputs


@dataclass(frozen=True)
class Graph:
    """A model ready to plan: nodes in execution order, every shape static.

    `constants` are the weights, already in the layout their kernel wants; their values live in
    the model package (or, during import, in a separate dict), never in the graph.
    """

    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    nodes: tuple[Node, ...]
    tensors: Mapping[str, TensorInfo] = field(repr=False)
    constants: tuple[str, ...] = ()
    opset: int = 13
    # A graph input's or output's ONNX element type where it differs from the type held (float16 and
    # double are held as float32): the caller feeds and gets this type; the arena holds the other.
    declared: Mapping[str, str] = field(default_factory=dict, repr=False)
    # State kept in the arena across runs (a decoder's key/value cache): graph output -> the graph
    # input it becomes on the next run. The caller neither feeds those inputs nor gets those outputs.
    state: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.tensors, MappingProxyType):
            object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))
        if not isinstance(self.declared, MappingProxyType):
            object.__setattr__(self, "declared", MappingProxyType(dict(self.declared)))
        if not isinstance(self.state, MappingProxyType):
            object.__setattr__(self, "state", MappingProxyType(dict(self.state)))

    def state_problem(self) -> str | None:
        """Why `state` is not a set of (graph output, graph input) pairs of one shape and type, or None."""
        inputs, outputs = {t.name for t in self.inputs}, {t.name for t in self.outputs}
        if len(set(self.state.values())) != len(self.state):
            return f"state pairs {dict(self.state)} feed some input twice"
        for out, inp in self.state.items():
            if out not in outputs or inp not in inputs:
                return (
                    f"state pair {out!r} -> {inp!r} must name a graph output and a graph input; "
                    f"outputs {sorted(outputs)[:8]}, inputs {sorted(inputs)[:8]}"
                )
            a, b = self.tensors[out], self.tensors[inp]
            if (a.shape, self.boundary_dtype(out)) != (b.shape, self.boundary_dtype(inp)):
                return (
                    f"state pair {out!r} -> {inp!r}: {self.boundary_dtype(out)} {list(a.shape)} "
                    f"cannot become {self.boundary_dtype(inp)} {list(b.shape)}"
                )
        return None

    def boundary_dtype(self, name: str) -> str:
        """The element type a caller feeds or gets for graph input or output `name`."""
        return self.declared.get(name, self.tensors[name].dtype)

    @cached_property
    def _constant_set(self) -> frozenset[str]:
        return frozenset(self.constants)

    def is_constant(self, name: str) -> bool:
        return name in self._constant_set

    def shape(self, name: str) -> Shape:
        return self.tensors[name].shape
