"""Pad: modes constant, reflect, edge and wrap, any element type, negative pads cropping.

pads and the constant value are attributes before opset 11 and constant inputs since (with axes
since 18); they are absorbed into fields at import. The kernel is strided copies (ops/strided.py):
the kept part of the input into the middle of the output, then the borders one axis after another,
each read from the part already written (reflect: a reversed run, edge: one repeated element,
wrap: the far end, constant: one element repeated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import ShapeError, UnsupportedOp
from flexnnd.ops.base import Op, internal, register
from flexnnd.ops.slice import constant_ints
from flexnnd.ops.strided import Copy, flat_bits, run_all, same_dtype
from flexnnd.ops.tensor import normalize_axis

MODES = ("constant", "reflect", "edge", "wrap")


def _run(first: int, count: int, step: int = 1) -> slice:
    """`count` indices from `first` by `step`, as a slice (a reversed run may end before index 0)."""
    stop = first + count * step
    return slice(first, stop if stop >= 0 else None, step)


@register
@dataclass(frozen=True)
class Pad(Op):
    op_type = "Pad"
    const_inputs = (1, 2, 3)
    optional_inputs = (2, 3)
    mode: str = "constant"
    pads: tuple[int, ...] = ()  # begins of every axis, then ends (an input since opset 11)
    value: float = 0.0  # the constant (an input, constant_value, since opset 11)
    axes: tuple[int, ...] | None = internal(None)  # the axes `pads` is for (an input since opset 18)

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        attrs = dict(attrs)
        if opset >= 11:
            if set(attrs) - {"mode"}:
                raise UnsupportedOp(
                    cls.op_type, node, opset, f"attribute(s) {sorted(set(attrs) - {'mode'})} not supported"
                )
            pads = constant_ints(cls.op_type, node, opset, consts, 1, "pads")
            if pads is None:
                raise UnsupportedOp(cls.op_type, node, opset, "pads is missing")
            attrs["pads"] = pads
            if len(consts) > 2 and consts[2] is not None:
                value = np.asarray(consts[2]).reshape(-1)
                if value.size != 1:
                    raise UnsupportedOp(cls.op_type, node, opset, f"constant_value has {value.size} elements")
                attrs["value"] = value[0].item()
            axes = constant_ints(cls.op_type, node, opset, consts, 3, "axes", optional=True)
            op, _ = super().from_onnx(attrs, consts[:1], node, opset)
            op = cls(mode=op.mode, pads=op.pads, value=op.value, axes=axes)
        else:
            op, _ = super().from_onnx(attrs, consts[:1], node, opset)
        op.check(node, opset)
        return op, (0,)

    def check(self, node, opset):
        if self.mode not in MODES:
            raise UnsupportedOp(
                self.op_type, node, opset, f"mode {self.mode!r} (flexnn pads {', '.join(MODES)})"
            )
        if self.axes is not None and len(self.pads) != 2 * len(self.axes):
            raise UnsupportedOp(self.op_type, node, opset, f"{len(self.pads)} pads for axes {self.axes}")

    def output_dtypes(self, dtypes):
        return [same_dtype(self.op_type, dtypes)]

    def widths(self, shape) -> list[tuple[int, int]]:
        """(begin, end) per axis of `shape`; negative ones crop."""
        rank = len(shape)
        axes = (
            range(rank)
            if self.axes is None
            else [normalize_axis("Pad", a, rank, tuple(shape)) for a in self.axes]
        )
        if len(self.pads) != 2 * len(axes) or len(set(axes)) != len(axes):
            raise ShapeError(f"Pad: pads {self.pads} (axes {self.axes}) do not fit shape {tuple(shape)}")
        widths = [(0, 0)] * rank
        for i, a in enumerate(axes):
            widths[a] = (self.pads[i], self.pads[len(axes) + i])
        for a, (b, e) in enumerate(widths):
            kept = shape[a] + min(b, 0) + min(e, 0)
            limit = kept - 1 if self.mode == "reflect" else None  # as ONNX Runtime: no repeated reflection
            if kept <= 0:
                raise ShapeError(f"Pad: pads {self.pads} crop axis {a} of {tuple(shape)} to nothing")
            if limit is not None and max(b, e) > limit:
                raise ShapeError(
                    f"Pad: {self.mode} pads of {max(b, e)} on axis {a} of {tuple(shape)} exceed the {limit} "
                    "the kept input allows"
                )
        return widths

    def infer(self, shapes, consts):
        shape = tuple(shapes[0])
        return [tuple(n + b + e for n, (b, e) in zip(shape, self.widths(shape), strict=True))]

    def flops(self, shapes, out_shapes):
        return 0

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        x, y = ins[0], outs[0]
        widths = self.widths(x.shape)
        src, dst = flat_bits(x), flat_bits(y)
        out = dst.reshape(y.shape)
        kept = [slice(max(-b, 0), n - max(-e, 0)) for n, (b, e) in zip(x.shape, widths, strict=True)]
        inner = [slice(max(b, 0), m - max(e, 0)) for m, (b, e) in zip(y.shape, widths, strict=True)]
        copies = [Copy.between(src.reshape(x.shape)[tuple(kept)], src, out[tuple(inner)], dst)]
        # The value as its element's bits, held by the kernel; read with stride 0.
        value = flat_bits(np.array([self.value], dtype=x.dtype)) if self.mode == "constant" else None
        region = list(inner)
        for a, (b, e) in enumerate(widths):
            n, before, after = region[a].stop - region[a].start, max(b, 0), max(e, 0)
            start = region[a].start
            for count, where in ((before, 0), (after, start + n)):
                if self.mode == "wrap":  # chunks of at most n, each a copy of the n elements beside it
                    shift = n if where == 0 else -n  # where the chunk's source lies
                    edges = range(count, 0, -n) if where == 0 else range(where, where + count, n)
                    for edge in edges:  # nearest the kept part first: each reads what is written
                        lo, hi = (
                            (max(edge - n, 0), edge) if where == 0 else (edge, min(edge + n, where + count))
                        )
                        target = out[tuple([*region[:a], slice(lo, hi), *region[a + 1 :]])]
                        source = out[tuple([*region[:a], slice(lo + shift, hi + shift), *region[a + 1 :]])]
                        copies.append(Copy.between(source, dst, target, dst))
                    continue
                if not count:
                    continue
                region[a] = slice(where, where + count)
                target = out[tuple(region)]
                if self.mode == "constant":
                    source = np.lib.stride_tricks.as_strided(value, target.shape, (0,) * target.ndim)
                    base = value
                else:
                    if self.mode == "edge":
                        run = slice(start, start + 1) if where == 0 else slice(start + n - 1, start + n)
                    else:  # reflect
                        run = _run(start + count, count, -1) if where == 0 else _run(start + n - 2, count, -1)
                    region[a] = run
                    source = np.broadcast_to(out[tuple(region)], target.shape)
                    base = dst
                copies.append(Copy.between(source, base, target, dst))
            region[a] = slice(0, y.shape[a])
        return run_all(copies)

    def reference(self, ins):
        x = np.asarray(ins[0])
        widths = self.widths(x.shape)
        kept = x[tuple(slice(max(-b, 0), n - max(-e, 0)) for n, (b, e) in zip(x.shape, widths, strict=True))]
        pad_width = [(max(b, 0), max(e, 0)) for b, e in widths]
        if self.mode == "constant":
            return [np.pad(kept, pad_width, mode="constant", constant_values=np.asarray(self.value, x.dtype))]
        return [np.pad(kept, pad_width, mode=self.mode)]
