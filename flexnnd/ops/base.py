"""The op contract: one frozen dataclass per ONNX op type, registered by that name.

The dataclass fields are the ONNX attributes with the spec's defaults, so `Conv(group=32)` reads
like the ONNX node it came from. Fields marked `internal()` are flexnn's own (set by graph passes,
such as a fused activation) and are not accepted from an ONNX file.

An op knows its shapes, its memory profile, how its weights are laid out for its kernel, how to
bind its kernel to buffers it is given (never allocating), and a plain numpy reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.graph.ir import Shape

_REGISTRY: dict[str, type[Op]] = {}

Kernel = Callable[[], None]


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: make `cls` the implementation of ONNX op `cls.op_type`."""
    if cls.op_type in _REGISTRY:
        raise RuntimeError(f"op {cls.op_type} registered twice")
    _REGISTRY[cls.op_type] = cls
    return cls


def op_class(op_type: str, node: str = "?", opset: int | None = None) -> type[Op]:
    try:
        return _REGISTRY[op_type]
    except KeyError:
        raise UnsupportedOp(op_type, node, opset) from None


def registered_ops() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def internal(default: Any) -> Any:
    """A field that is flexnn's own, not an ONNX attribute (e.g. a fused activation)."""
    return field(default=default, metadata={"internal": True})


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


class Axis(StrEnum):
    """What a Part cuts (str-valued: plan files hold the value)."""

    ROWS = "rows"
    CHANNELS = "channels"


@dataclass(frozen=True)
class Part:
    """One slice of a sliced step (the planner's unit), or None for the whole op.

    axis "rows": output rows [start, stop) of every output channel (conv input slicing: scratch
    shrinks with the band). axis "channels": output channels [start, stop) (conv or Gemm weight
    slicing); the op is then bound to the weight/bias slice of those channels only, and writes
    just its part of the full output tensor.
    """

    axis: Axis
    start: int
    stop: int

    def __post_init__(self):
        object.__setattr__(self, "axis", Axis(self.axis))  # "rows" from a plan file or a test


@dataclass(frozen=True)
class SliceAxis:
    """One axis an op may be cut into parts along (Part.axis = `name`), as the op declares it.

    "channels": part [a, b) computes output channels [a, b) and reads only rows [a, b) of every
    weight (the weight is cut with it). "rows": part [a, b) computes output rows [a, b) of every
    channel and reads every weight whole. Parts cut [0, `extent`); one unit along the axis is
    `unit_pixels` output pixels (a row band's GEMM columns per row; 1 for channels).
    """

    name: Axis
    extent: int
    unit_pixels: int = 1

    def __post_init__(self):
        object.__setattr__(self, "name", Axis(self.name))

    @property
    def cuts_weights(self) -> bool:
        return self.name is Axis.CHANNELS


class CostKind(StrEnum):
    """The simulator's cost kinds (profile.StepCost.kind): which Machine rate prices a step."""

    MEMORY = "memory"  # bound by the bytes it moves (memory_bytes)
    FC = "fc"  # a fully connected layer: FLOPs at gemm_flops, or streaming its weights (fc_bytes)
    GEMM = "gemm"  # BLAS-backed: FLOPs at gemm_flops
    WINOGRAD = "winograd"  # FLOPs (of the direct convolution) at winograd_flops
    DEPTHWISE = "depthwise"  # FLOPs, or dense_flops if more, at depthwise_flops


COST_MEMORY, COST_FC, COST_GEMM = CostKind.MEMORY, CostKind.FC, CostKind.GEMM
COST_WINOGRAD, COST_DEPTHWISE = CostKind.WINOGRAD, CostKind.DEPTHWISE


@dataclass(frozen=True)
class Op:
    """Every `shapes` argument below holds the ONNX-layout shapes of the node's inputs (None for
    an absent optional input), even after constants were rewritten by prepare()."""

    op_type: ClassVar[str] = ""
    # Output 0 is input 0 with another shape: no kernel, shares the input's memory.
    alias: ClassVar[bool] = False
    # Output 0 may share input 0's storage (a state updated in place, planner/lifetimes.py): the
    # kernel copies input 0 whole into output 0 (a no-op then) before it reads anything else.
    in_place: ClassVar[bool] = False
    # Input positions that must be constants known at import (weights, biases).
    const_inputs: ClassVar[tuple[int, ...]] = ()
    # Input positions that are optional in ONNX (may be given as "").
    optional_inputs: ClassVar[tuple[int, ...]] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _freeze(getattr(self, f.name)))

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def onnx_attribute_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls) if not f.metadata.get("internal"))

    @classmethod
    def accepted_attributes(cls, opset: int) -> frozenset[str]:
        """The attribute names a node of this op may carry at `opset` (the importer refuses others,
        also before any weight is read): its ONNX fields, and whatever from_onnx absorbs besides."""
        return cls.onnx_attribute_names()

    @classmethod
    def from_onnx(
        cls,
        attrs: Mapping[str, Any],
        consts: Sequence[np.ndarray | None],
        node: str,
        opset: int,
    ) -> tuple[Op, tuple[int, ...]]:
        """Build the op from an ONNX node's attributes.

        `consts` holds, per input, its value when it is a constant known at import, else None.
        Returns the op and the input positions the runtime node keeps; an op may absorb constant
        parameter inputs (Clip's min/max, Reshape's shape) into its attributes and drop them.
        """
        unknown = set(attrs) - cls.accepted_attributes(opset)
        if unknown:
            raise UnsupportedOp(cls.op_type, node, opset, f"attribute(s) {sorted(unknown)} not supported")
        op = cls(**attrs)
        op.check(node, opset)
        return op, tuple(range(len(consts)))

    def check(self, node: str, opset: int) -> None:
        """Reject attribute values the kernels do not support (raise UnsupportedOp)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Op:
        return cls(**d)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    def for_outputs(self, count: int) -> Op:
        """The op for a node that names `count` outputs (up to its last named one), called at import
        right after from_onnx: Split without sizes splits equally among them. The default: the op
        itself."""
        return self

    # ---- element types --------------------------------------------------------------------
    def typed(self, dtypes: Sequence[str | None]) -> Op:
        """The op for inputs of these element types (as output_dtypes gets them), called once at
        import before output_dtypes: an op whose attributes depend on its input's type (Cast is an
        alias when nothing changes) returns a replaced copy. The default: the op itself."""
        return self

    def output_dtypes(self, dtypes: Sequence[str | None]) -> list[str]:
        """The outputs' element types (numpy names) from the inputs' (None where an input is absent);
        raise DtypeRefused(reason) for types the kernels do not take. Constant float inputs count as
        float32 (they are stored so). The default: every input float32, one float32 output."""
        for pos, dtype in enumerate(dtypes):
            if dtype is not None and dtype != "float32":
                raise DtypeRefused(f"input {pos} is {dtype}; {self.op_type} runs on float32")
        return ["float32"]

    # ---- shapes and memory --------------------------------------------------------------
    def infer(self, shapes: Sequence[Shape | None], consts: Sequence[np.ndarray | None]) -> list[Shape]:
        """Output shapes from input shapes (ONNX layout); `consts` as in from_onnx."""
        raise NotImplementedError

    def prepare(self, consts: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
        """Constant inputs rewritten into the layout the kernel wants (done once, at import)."""
        return list(consts)

    def scratch_bytes(self, shapes: Sequence[Shape | None], part: Part | None = None) -> int:
        """Bytes of scratch space one execution (of `part`) needs (im2col buffers and the like)."""
        return 0

    def flops(self, shapes: Sequence[Shape | None], out_shapes: Sequence[Shape]) -> int:
        """Floating point operations of one execution (an estimate for the planner)."""
        return sum(int(np.prod(s)) for s in out_shapes)

    # ---- what the planner and the simulator ask ----------------------------------------
    def slice_axes(
        self, shapes: Sequence[Shape | None], out_shapes: Sequence[Shape]
    ) -> tuple[SliceAxis, ...]:
        """The axes along which a node of these shapes may be cut into parts; () = never sliced,
        it runs whole. The op says what a part computes and reads (SliceAxis); the planner decides
        how many parts, each at least its MIN_CHANNELS_PER_PART or MIN_PIXELS_PER_BAND."""
        return ()

    def shares_operand(self, shapes: Sequence[Shape | None], part: Part | None) -> bool:
        """Whether `part` is one of channel parts that share an operand in their scratch (a conv's
        im2col): the node's part at channel 0 computes it and the later ones only read it, so the
        plan must run the node's parts one after another, in order, with one scratch for them all
        (planner.verify checks it, and bind() is told which parts reuse: see its `reuse`)."""
        return False

    def cost_kind(self, shapes: Sequence[Shape | None]) -> str:
        """Which rate prices this op in the simulator: a CostKind."""
        return COST_MEMORY

    def shared_bytes(self, shapes: Sequence[Shape | None]) -> int:
        """Bytes of the operand each output-channel part reads whole (0 when parts share nothing)."""
        return 0

    def dense_flops(self, shapes: Sequence[Shape | None], out_shapes: Sequence[Shape]) -> int:
        """FLOPs were the op dense at stride 1, when its kernel's time follows those (else 0)."""
        return 0

    def concat_axis(self) -> int | None:
        """The axis along which the output is the inputs laid end to end (Concat), else None: where
        those slices are contiguous, the planner has the producers write straight into them."""
        return None

    # ---- execution ----------------------------------------------------------------------
    def bind(
        self,
        ins: Sequence[np.ndarray | None],
        outs: Sequence[np.ndarray],
        scratch: np.ndarray | None,
        part: Part | None = None,
        reuse: bool = False,
    ) -> Kernel:
        """A callable that computes `outs` from `ins` in place, allocating nothing.

        `ins` are arena views: activations in ONNX layout, constants in the prepared layout
        (for a "channels" part: only that part's slice of each constant); `scratch` is a float32
        view of at least `scratch_bytes` bytes (None when 0). With `reuse` (only for a part that
        shares_operand and is not the first), the operand is in `scratch` already, left there by
        the node's previous part: the plan guarantees it (planner.verify.operand_reuse). All
        shape work happens here, once; the returned callable only calls kernels.
        """
        raise NotImplementedError

    def reference(self, ins: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        """The same op in plain numpy, on ONNX-layout inputs: the kernels' oracle."""
        raise NotImplementedError


def require_rank(op: str, shape: Shape | None, ranks: Sequence[int], what: str = "input") -> Shape:
    if shape is None or len(shape) not in ranks:
        raise ShapeError(f"{op}: {what} must have rank {'/'.join(map(str, ranks))}, got shape {shape}")
    return shape


def broadcast_shapes(op: str, *shapes: Shape) -> Shape:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(f"{op}: shapes {list(shapes)} do not broadcast") from None
