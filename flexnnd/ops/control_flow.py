"""If and Loop, which the importer takes apart (graph/control_flow.py), and IfSelect, the one step
an If decided at run time leaves: it copies the taken branch's outputs into the If's outputs.

If and Loop are registered so that the pre-scan and `flexnnctl check` know them (their attribute
names are checked like any op's); the importer never makes a node of either. IfSelect is flexnn's
own op: an ONNX file that names it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flexnnd.errors import DtypeRefused, InputValueError, ShapeError, UnsupportedOp
from flexnnd.ops.base import Op, internal, register
from flexnnd.ops.buffers import reshape_view


class _Expanded(Op):
    """An op the importer expands into the nodes of its subgraphs: never a node of its own."""

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        raise UnsupportedOp(
            cls.op_type, node, opset, "expanded by the importer (graph/control_flow.py), not run"
        )


@register
@dataclass(frozen=True)
class If(_Expanded):
    op_type = "If"
    then_branch: object = None
    else_branch: object = None


@register
@dataclass(frozen=True)
class Loop(_Expanded):
    op_type = "Loop"
    body: object = None


@register
@dataclass(frozen=True)
class IfSelect(Op):
    """Inputs: the condition, then each reachable branch's outputs (then's first). Outputs: the If's.
    A branch that could not be imported for the model's input shapes is unreachable: selecting it
    fails the request with `unreachable_why`."""

    op_type = "flexnn.IfSelect"
    outputs: int = internal(1)
    then_reachable: bool = internal(True)
    else_reachable: bool = internal(True)
    unreachable_why: str = internal("")

    @classmethod
    def from_onnx(cls, attrs, consts, node, opset):
        raise UnsupportedOp(
            cls.op_type, node, opset, "flexnn's own op (an If's branch select), not an ONNX op"
        )

    def _branches(self, items):
        """(then's, else's) slices of `items` after the condition; None for an unreachable branch."""
        n, rest = self.outputs, list(items[1:])
        then = rest[:n] if self.then_reachable else None
        other = rest[n if self.then_reachable else 0 :][:n] if self.else_reachable else None
        return then, other

    def _taken(self, items):
        then, other = self._branches(items)
        return then if then is not None else other

    def output_dtypes(self, dtypes):
        if dtypes[0] != "bool":
            raise DtypeRefused(f"If: the condition is {dtypes[0]}; it must be bool")
        then, other = self._branches(dtypes)
        if then is not None and other is not None and then != other:
            raise DtypeRefused(f"If: the branches' outputs are {then} and {other}; they must be alike")
        return list(self._taken(dtypes))

    def infer(self, shapes, consts):
        if shapes[0] is None or int(np.prod(shapes[0])) != 1:
            raise ShapeError(f"If: the condition has shape {shapes[0]}; it must hold one element")
        then, other = self._branches(shapes)
        if then is not None and other is not None and [tuple(s) for s in then] != [tuple(s) for s in other]:
            raise ShapeError(f"If: then branch outputs {then}, else branch outputs {other}")
        return [tuple(s) for s in self._taken(shapes)]

    def flops(self, shapes, out_shapes):
        return 0

    def slice_axes(self, shapes, out_shapes):
        return ()  # a copy: it runs whole

    def bind(self, ins, outs, scratch, part=None, reuse=False):
        if part is not None or reuse:
            raise ValueError(f"IfSelect.bind: not sliced, got part {part}")
        cond = reshape_view(ins[0], (-1,))
        then, other = self._branches(ins)
        flat_outs = [reshape_view(o, (-1,)) for o in outs]

        def views(branch):
            if branch is None:
                return None
            for src, dst in zip(branch, outs, strict=True):
                if src.size != dst.size or src.dtype != dst.dtype:
                    raise ShapeError(
                        f"IfSelect.bind: branch output {src.shape} {src.dtype}, If output {dst.shape} {dst.dtype}"
                    )
            return [reshape_view(src, (-1,)) for src in branch]

        then_views, else_views = views(then), views(other)
        why = self.unreachable_why

        def run_select():
            taken = bool(cond[0])
            sources = then_views if taken else else_views
            if sources is None:
                branch = "then" if taken else "else"
                raise InputValueError(
                    "",
                    "If",
                    f"the condition selects the {branch} branch, which flexnn could not import: {why}",
                )
            for src, dst in zip(sources, flat_outs, strict=True):
                np.copyto(dst, src)

        return run_select

    def reference(self, ins):
        taken = bool(np.asarray(ins[0]).reshape(-1)[0])
        then, other = self._branches(ins)
        sources = then if taken else other
        if sources is None:
            raise InputValueError(
                "", "If", f"the condition selects an unreachable branch: {self.unreachable_why}"
            )
        return [np.array(s, copy=True) for s in sources]
