"""x * Sigmoid(x) becomes Swish (SiLU), and x * HardSigmoid(x) with the hard-swish constants
becomes HardSwish (issue 17's fusions): EfficientNet, YOLOv5/v8 and MobileNetV3 write one after
nearly every convolution, and exporters before opset 24 (Swish) or 14 (HardSwish) spell them out.

One pass over the tensor instead of two and no intermediate; and since the activation is then a
single op, fuse_activations moves it into the producing Conv's epilogue. Fused only when the
Sigmoid's output feeds the Mul alone, is no graph output, and x is not broadcast.
"""

from __future__ import annotations

import math

from flexnnd.graph.ir import Node
from flexnnd.graph.passes import Draft
from flexnnd.ops.base import op_class

HARD_SWISH_ALPHA, HARD_SWISH_BETA = 1.0 / 6.0, 0.5


def _gate(node: Node) -> str | None:
    """The activation `x * node(x)` is, for a Sigmoid or a hard-swish HardSigmoid; else None."""
    if node.op_type == "Sigmoid":
        return "Swish"
    if node.op_type == "HardSigmoid":
        alpha, beta = float(node.op.alpha), float(node.op.beta)
        if math.isclose(alpha, HARD_SWISH_ALPHA, rel_tol=1e-6) and math.isclose(beta, HARD_SWISH_BETA):
            return "HardSwish"
    return None


def fuse_swish(draft: Draft) -> None:
    uses = draft.consumers()
    readers: dict[str, list[Node]] = {}
    for n in draft.nodes:
        for i in n.inputs:
            readers.setdefault(i, []).append(n)
    removed: set[str] = set()
    replacement: dict[str, Node] = {}
    for gate in draft.nodes:
        kind = _gate(gate)
        gated = gate.outputs[0]
        if kind is None or gate.name in removed or uses[gated] != 1 or gated in draft.outputs:
            continue
        mul = readers[gated][0]
        x = gate.inputs[0]
        if (
            mul.op_type != "Mul"
            or getattr(mul.op, "activation", "")
            or sorted(mul.inputs) != sorted((x, gated))
        ):
            continue
        y = mul.outputs[0]
        if draft.infos[y].shape != draft.infos[x].shape or mul.name in removed:
            continue
        op = op_class(kind)()
        replacement[mul.name] = Node(mul.name, op, (x,), (y,), (draft.infos[x].shape,), guard=mul.guard)
        removed.update((gate.name, mul.name))
        draft.log.append(f"fused {gate.op_type} {gate.name} and Mul {mul.name} into {kind}")
    if removed:
        draft.nodes = [
            replacement.get(n.name, n) for n in draft.nodes if n.name not in removed or n.name in replacement
        ]
