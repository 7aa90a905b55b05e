"""Cast and CastLike: element type conversions, as ONNX and numpy define them.

flexnn holds every float tensor as float32 (float16 and double inputs and weights are widened; a
graph input or output keeps its declared type only at the boundary, ir.Graph.declared), so:
  - a Cast between two types flexnn holds alike (float32 -> float32, float16/double -> float32 or
    double, int64 -> int64) is an alias: it shares its input's memory and costs nothing;
  - to=FLOAT16 rounds every value to the nearest float16 (ties to even, overflow to inf), exactly as
    ONNX Runtime's float16 result, and holds it as float32;
  - to=DOUBLE holds float32: exact from a float, rounded to float32 from an integer above 2**24;
  - float -> integer truncates toward zero; NaN, infinities and values out of range give what
    numpy's and ONNX Runtime's C casts give on this machine (x86: INT_MIN of int32/int64, then the
    low bits for 8/16-bit types); integer -> integer wraps; anything -> bool is "!= 0".
Types flexnn does not hold (string, uint32/64, bfloat16, float8, 4-bit) are refused at import.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import Op, internal, register
from flexnnd.ops.buffers import reshape_view
from flexnnd.ops.gather import DATA_DTYPES


class T(enum.IntEnum):
    """ONNX's TensorProto.DataType values (fixed by the spec): the daemon serves packages without
    importing onnx, and ops are imported there too."""

    UNDEFINED, FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64, STRING, BOOL = range(10)
    FLOAT16, DOUBLE, UINT32, UINT64, COMPLEX64, COMPLEX128, BFLOAT16 = range(10, 17)
    FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ, UINT4, INT4, FLOAT4E2M1 = range(17, 24)


# ONNX element type -> the element type flexnn holds it as.
HELD = {
    T.FLOAT: "float32",
    T.FLOAT16: "float32",  # rounded through float16
    T.DOUBLE: "float32",
    T.INT64: "int64",
    T.INT32: "int32",
    T.INT16: "int16",
    T.INT8: "int8",
    T.UINT16: "uint16",
    T.UINT8: "uint8",
    T.BOOL: "bool",
}
_ONNX_OF = {
    np.dtype(d): t
    for t, d in {
        T.FLOAT: np.float32,
        T.FLOAT16: np.float16,
        T.DOUBLE: np.float64,
        T.INT64: np.int64,
        T.INT32: np.int32,
        T.INT16: np.int16,
        T.INT8: np.int8,
        T.UINT16: np.uint16,
        T.UINT8: np.uint8,
        T.BOOL: np.bool_,
    }.items()
}


def _type_name(to: int) -> str:
    try:
        return T(to).name
    except ValueError:
        return f"element type {to}"


def _noop() -> None:
    pass


@register
@dataclass(frozen=True)
class Cast(Op):
    op_type = "Cast"
    to: int = 0
    saturate: int = 1  # float8 targets only (refused)
    round_mode: str = "up"  # float8e8m0 targets only (refused)
    # The element type of the input as flexnn holds it, set by typed() at import: it decides whether
    # the Cast is an alias.
    source: str = internal("")
    # The input is a constant (CastLike's with a run-time target_type): the output needs memory of
    # its own, since a constant lives with the weights, not in the arena's tensors.
    constant_input: bool = internal(False)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        op, kept = super().from_onnx(attrs, consts, node, opset)
        return dataclasses.replace(op, constant_input=consts[0] is not None), kept

    def check(self, node, opset):
        if self.to not in HELD:
            raise UnsupportedOp(
                self.op_type,
                node,
                opset,
                f"to {_type_name(self.to)}: flexnn holds {sorted(set(HELD.values()))}",
            )

    @property
    def alias(self) -> bool:  # type: ignore[override]
        """Output and input are held alike: no kernel, the output shares the input's memory."""
        return self.to != T.FLOAT16 and self.source == HELD.get(self.to) and not self.constant_input

    @property
    def target(self) -> str:
        return HELD[self.to]

    def typed(self, dtypes):
        return dataclasses.replace(self, source=dtypes[0] or "")

    def output_dtypes(self, dtypes):
        if dtypes[0] not in DATA_DTYPES:
            raise DtypeRefused(f"{self.op_type}: input is {dtypes[0]}; flexnn casts {sorted(DATA_DTYPES)}")
        return [self.target]

    def infer(self, shapes, consts):
        if shapes[0] is None:
            raise ShapeError(f"{self.op_type}: input shape unknown")
        return [tuple(shapes[0])]

    def scratch_bytes(self, shapes, part=None):
        if self.to != T.FLOAT16:
            return 0
        return -(-int(np.prod(shapes[0], dtype=np.int64)) * 2 // 4) * 4  # the float16 values

    def flops(self, shapes, out_shapes):
        return 0 if self.alias else int(np.prod(shapes[0], dtype=np.int64))

    def slice_axes(self, shapes, out_shapes):
        return ()  # no weights: it runs whole

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"{self.op_type}.bind: {self.op_type} is not sliced, got part {part}")
        x, y = ins[0], outs[0]
        if x.shape != y.shape or y.dtype != np.dtype(self.target) or x.dtype.name not in DATA_DTYPES:
            raise ShapeError(f"{self.op_type}.bind: input {x.shape} {x.dtype}, output {y.shape} {y.dtype}")
        src, dst = reshape_view(x, (-1,)), reshape_view(y, (-1,))
        if x.dtype == y.dtype and self.to != T.FLOAT16:
            if np.may_share_memory(x, y):
                return _noop  # the alias the planner made
            return lambda: np.copyto(dst, src)  # the output has memory of its own (a graph output)
        if self.to == T.FLOAT16:
            have = 0 if scratch is None else scratch.nbytes
            if have < src.size * 2:
                raise ValueError(f"Cast.bind: scratch of {have} bytes, need {src.size * 2}")
            half = reshape_view(scratch, (-1,)).view(np.float16)[: src.size]

            def run_cast_float16():
                with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf, as ONNX Runtime
                    np.copyto(half, src, casting="unsafe")
                np.copyto(dst, half)

            return run_cast_float16

        def run_cast():
            with np.errstate(over="ignore", invalid="ignore"):  # NaN/out of range: the C cast's value
                np.copyto(dst, src, casting="unsafe")

        return run_cast

    def reference(self, ins):
        x = np.asarray(ins[0])
        with np.errstate(over="ignore", invalid="ignore"):
            if self.to == T.FLOAT16:
                return [x.astype(np.float16).astype(np.float32)]
            return [x.astype(self.target)]


@register
@dataclass(frozen=True)
class CastLike(Cast):
    """CastLike (opsets 15+): Cast to target_type's element type. A constant target_type is dropped
    at import; a run-time one is kept as an input the kernel does not read, and its type as flexnn
    holds it (a float16 activation is float32) decides."""

    op_type = "CastLike"
    to: int = internal(0)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        unknown = set(attrs) - cls.onnx_attribute_names()
        if unknown:
            raise UnsupportedOp(cls.op_type, node, opset, f"attribute(s) {sorted(unknown)} not supported")
        if len(consts) < 2:
            raise UnsupportedOp(cls.op_type, node, opset, "target_type is missing")
        like = consts[1]
        if like is None:
            # `to` is the run-time input's type: output_dtypes sets it
            return cls(**attrs, constant_input=consts[0] is not None), (0, 1)
        to = _ONNX_OF.get(np.asarray(like).dtype)
        if to is None:
            raise UnsupportedOp(cls.op_type, node, opset, f"target_type is {np.asarray(like).dtype}")
        op = cls(to=to, **attrs, constant_input=consts[0] is not None)
        op.check(node, opset)
        return op, (0,)

    def typed(self, dtypes):
        op = self
        if len(dtypes) > 1:  # a run-time target_type: its held type is the target
            like = dtypes[1]
            if like not in DATA_DTYPES:
                raise DtypeRefused(f"CastLike: target_type is {like}")
            op = dataclasses.replace(self, to=_ONNX_OF[np.dtype(like)])
        return Cast.typed(op, dtypes[:1])

    def output_dtypes(self, dtypes):
        return super().output_dtypes(dtypes[:1])

    def infer(self, shapes, consts):
        return super().infer(shapes[:1], consts[:1])
