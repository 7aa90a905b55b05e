"""Constant folding of shape subgraphs: numpy evaluations of the ops exporters use on shapes.

These ops never run at inference; they exist only to turn Shape→Gather→Unsqueeze→Concat→Reshape
chains (and the like) into constants at import. Each function takes the node's input values (None
for an absent optional input), its attributes and the opset, and returns the output values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from flexnnd.graph.limits import DEFAULT_LIMITS, ImportLimits, tensor_to_array
from flexnnd.ops import tensor as ops_tensor

Values = Sequence[np.ndarray | None]


def _axes(ins: Values, attrs: dict[str, Any], pos: int) -> list[int] | None:
    if len(ins) > pos and ins[pos] is not None:
        return [int(a) for a in np.asarray(ins[pos]).reshape(-1)]
    return list(attrs["axes"]) if "axes" in attrs else None


def Shape(ins, attrs, opset, in_shape=None):
    shape = np.array(in_shape, dtype=np.int64)
    start, end = attrs.get("start", 0), attrs.get("end", None)
    return [shape[start:end]]


def Size(ins, attrs, opset, in_shape=None):
    return [np.array(int(np.prod(in_shape)), dtype=np.int64)]


def Gather(ins, attrs, opset):
    return [np.take(ins[0], ins[1], axis=attrs.get("axis", 0))]


def Unsqueeze(ins, attrs, opset):
    x, axes = ins[0], _axes(ins, attrs, 1)
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        x = np.expand_dims(x, a)
    return [x]


def Squeeze(ins, attrs, opset):
    axes = _axes(ins, attrs, 1)
    return [np.squeeze(ins[0], axis=None if axes is None else tuple(axes))]


def Concat(ins, attrs, opset):
    return [np.concatenate([v for v in ins if v is not None], axis=attrs["axis"])]


def Slice(ins, attrs, opset):
    x = ins[0]
    if opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes = attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = ins[1].tolist(), ins[2].tolist()
        axes = ins[3].tolist() if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = ins[4].tolist() if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        index[a] = slice(s, e, st)
    return [x[tuple(index)]]


def Cast(ins, attrs, opset):
    return [ins[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))]


def _reshape(ins, attrs, opset):
    """Reshape of a constant: the target shape by the op's own rule (ops.tensor.Reshape)."""
    x, shape = ins[0], tuple(int(d) for d in ins[1])
    (target,) = ops_tensor.Reshape(allowzero=int(attrs.get("allowzero", 0)), shape=shape).infer([x.shape], {})
    return [x.reshape(target)]


def Constant(ins, attrs, opset):
    (key, value), *_ = attrs.items()
    if key == "value":
        return [value]
    if key in ("value_float", "value_int"):
        return [np.array(value, dtype=np.float32 if key == "value_float" else np.int64)]
    if key in ("value_floats", "value_ints"):
        return [np.array(value, dtype=np.float32 if key == "value_floats" else np.int64)]
    raise NotImplementedError(f"Constant with {key}")


def ConstantOfShape(ins, attrs, opset):
    value = attrs.get("value", np.zeros(1, dtype=np.float32))
    return [np.full([int(d) for d in ins[0]], value.reshape(-1)[0], dtype=value.dtype)]


def _range_length(start, limit, delta) -> int:
    """Range's element count as ONNX Runtime computes it: (limit - start) / delta in the type for
    floats (float32 0.1..100 by 0.1 is 999, not 1000), in double for integers."""
    with np.errstate(all="ignore"):
        span = np.asarray(limit - start)
        quotient = (
            span / np.asarray(delta, span.dtype) if span.dtype.kind == "f" else float(span) / float(delta)
        )
        return max(math.ceil(float(quotient)), 0)


def Range(ins, attrs, opset):
    start, limit, delta = (np.asarray(v).reshape(()) for v in ins[:3])
    n = _range_length(start, limit, delta)
    # start, start + delta, ... added up in the type, as ONNX Runtime does (floats drift alike)
    steps = np.full(n, delta, dtype=start.dtype)
    if n:
        steps[0] = start
    return [np.cumsum(steps, dtype=start.dtype)]


def NonZero(ins, attrs, opset):
    x = np.asarray(ins[0])
    return [
        np.array(np.nonzero(x.reshape(-1) if x.ndim == 0 else x), dtype=np.int64).reshape(max(x.ndim, 1), -1)
    ]


def Expand(ins, attrs, opset):
    shape = np.broadcast_shapes(ins[0].shape, tuple(int(d) for d in ins[1]))
    return [np.broadcast_to(ins[0], shape).copy()]


def Transpose(ins, attrs, opset):
    return [np.transpose(ins[0], attrs.get("perm"))]


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    return lambda ins, attrs, opset: [np.asarray(fn(ins[0], ins[1])).astype(ins[0].dtype)]


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX's Div: integers truncate toward zero (numpy's // floors); a zero divisor is an error."""
    if not np.issubdtype(a.dtype, np.integer):
        return a / b
    if np.any(np.asarray(b) == 0):
        raise ZeroDivisionError(
            f"integer Div by zero on constants ({int(np.count_nonzero(np.asarray(b) == 0))} zero divisors)"
        )
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q)


FOLDERS: dict[str, Callable[..., list[np.ndarray]]] = {
    "Shape": Shape,
    "Size": Size,
    "Gather": Gather,
    "Unsqueeze": Unsqueeze,
    "Squeeze": Squeeze,
    "Concat": Concat,
    "Slice": Slice,
    "Cast": Cast,
    "Reshape": _reshape,
    "Constant": Constant,
    "ConstantOfShape": ConstantOfShape,
    "Range": Range,
    "NonZero": NonZero,
    "Expand": Expand,
    "Transpose": Transpose,
    "Identity": lambda ins, attrs, opset: [ins[0]],
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(_div),
    "Floor": lambda ins, attrs, opset: [np.floor(ins[0])],
    "Ceil": lambda ins, attrs, opset: [np.ceil(ins[0])],
    "Equal": lambda ins, attrs, opset: [np.equal(ins[0], ins[1])],
    "Where": lambda ins, attrs, opset: [np.where(ins[0], ins[1], ins[2])],
}

# Folders that need only the (static) shape of their input, not its value.
SHAPE_FOLDERS = {"Shape", "Size"}


def attribute_values(
    node: onnx.NodeProto, label: str = "", limits: ImportLimits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """ONNX attributes as plain Python values (tensors as numpy arrays, strings as str).

    A tensor attribute's declared size is checked before it becomes an array (a Constant node can
    declare any shape).
    """
    out: dict[str, Any] = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, onnx.TensorProto):
            value = tensor_to_array(value, f"node {label or node.name!r} attribute {attr.name!r}", limits)
        elif isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        out[attr.name] = value
    return out


def _elements(shape) -> int:
    return math.prod(int(d) for d in shape)


def fold_output_elements(op_type: str, ins: Values, attrs: dict[str, Any]) -> int:
    """An upper bound on the elements a folder's output holds, computed without running it.

    Folders that only view, slice or map their input never produce more than their largest input;
    the others (which can grow a tiny input into a huge one) are bounded from their arguments.
    """
    present = [np.asarray(v) for v in ins if v is not None]
    largest = max((v.size for v in present), default=1)
    if op_type == "ConstantOfShape":
        dims = [int(d) for d in np.asarray(ins[0]).reshape(-1)]
        if any(d < 0 for d in dims):
            raise ValueError(f"ConstantOfShape to shape {dims[:8]} with a negative dimension")
        return _elements(dims)
    if op_type == "Expand":
        dims = [int(d) for d in np.asarray(ins[1]).reshape(-1)]
        if any(d < 0 for d in dims):
            raise ValueError(f"Expand to shape {dims[:8]} with a negative dimension")
        return _elements(_broadcast((np.shape(ins[0]), dims)))
    if op_type == "Range":
        start, limit, delta = (np.asarray(v).reshape(-1)[0] for v in ins[:3])
        if delta == 0 or not all(math.isfinite(float(x)) for x in (start, limit, delta)):
            raise ValueError(f"Range({start}, {limit}, {delta}) has no finite length")
        return _range_length(start, limit, delta)
    if op_type == "NonZero":  # int64 indices, counted in elements of the input's width
        data = np.asarray(ins[0])
        return data.size * max(data.ndim, 1) * (8 // data.itemsize)
    if op_type == "Concat":
        return sum(v.size for v in present)
    if op_type == "Gather":
        data, indices = np.asarray(ins[0]), np.asarray(ins[1])
        return (data.size // max(data.shape[attrs.get("axis", 0)], 1) if data.ndim else 1) * max(
            indices.size, 1
        )
    if op_type in ("Add", "Sub", "Mul", "Div", "Equal", "Where"):
        return _elements(_broadcast([v.shape for v in present]))
    return largest


def _broadcast(shapes) -> tuple[int, ...]:
    """numpy's broadcast rule on Python ints (np.broadcast_shapes refuses sizes above intp)."""
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for shape in shapes:
        for axis, d in enumerate((1,) * (rank - len(shape)) + tuple(int(x) for x in shape)):
            if d != 1:
                if out[axis] not in (1, d):
                    raise ValueError(f"shapes {[list(s)[:8] for s in shapes]} do not broadcast")
                out[axis] = d
    return tuple(out)
