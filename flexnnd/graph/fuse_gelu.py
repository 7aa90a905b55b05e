"""GELU written out in elementwise ops becomes one Gelu node (issue 17's fusions).

Exporters before opset 20 write GELU as arithmetic. The exact form is
x * 0.5 * (1 + erf(x / sqrt(2))), with x / sqrt(2) also written x * (1 / sqrt(2)). The tanh form is
0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))), with x^3 written Pow(x, 3) or
x * x * x. Either way, the three products of x, 0.5 and (1 + ...) may be associated in any order.
Five to nine memory-bound passes over the tensor, and their intermediates, become one.

A chain is fused only when each intermediate feeds only the next node and is no graph output, the
constants are scalars of the right values, and nothing broadcasts x to another shape.
"""

from __future__ import annotations

import math

from flexnnd.graph.ir import Node
from flexnnd.graph.passes import Draft
from flexnnd.ops.base import op_class

SQRT2, TANH_SCALE, CUBIC = math.sqrt(2.0), math.sqrt(2.0 / math.pi), 0.044715


class _Graph:
    def __init__(self, draft: Draft):
        self.draft = draft
        self.uses = draft.consumers()
        self.producer = {o: n for n in draft.nodes for o in n.outputs}
        self.readers: dict[str, list[Node]] = {}
        for n in draft.nodes:
            for i in n.inputs:
                self.readers.setdefault(i, []).append(n)

    def scalar(self, name: str, value: float) -> bool:
        const = self.draft.consts.get(name)
        return (
            const is not None
            and const.size == 1
            and math.isclose(float(const.reshape(())), value, rel_tol=1e-4)
        )

    def only_reader(self, name: str, op_type: str) -> Node | None:
        """The one node reading `name`, if it is a plain `op_type` and `name` is no graph output."""
        if self.uses[name] != 1 or name in self.draft.outputs:
            return None
        node = self.readers[name][0]
        plain = not getattr(node.op, "activation", "")
        return node if node.op_type == op_type and plain and len(node.inputs) == 2 else None

    def other(self, node: Node, name: str) -> str | None:
        """The input of the binary `node` that is not `name`."""
        a, b = node.inputs
        return b if a == name else a if b == name else None

    def made_by(self, name: str, op_type: str) -> Node | None:
        node = self.producer.get(name)
        plain = node is not None and not getattr(node.op, "activation", "")
        return node if plain and node.op_type == op_type and len(node.inputs) == 2 else None


def _scaled_input(g: _Graph, name: str, op_type: str, value: float) -> str | None:
    """x where `name` = x op value (Mul by either side, Div by the right)."""
    node = g.made_by(name, op_type)
    if node is None or g.uses[name] != 1:
        return None
    a, b = node.inputs
    if g.scalar(b, value) and a not in g.draft.consts:
        return a
    if op_type == "Mul" and g.scalar(a, value) and b not in g.draft.consts:
        return b
    return None


def _erf_argument(g: _Graph, u: str) -> str | None:
    return _scaled_input(g, u, "Div", SQRT2) or _scaled_input(g, u, "Mul", 1.0 / SQRT2)


def _cube_of(g: _Graph, name: str) -> str | None:
    """x where `name` = x^3: Pow(x, 3), or x * x * x in either association."""
    pow_node = g.producer.get(name)
    if pow_node is not None and pow_node.op_type == "Pow":
        absorbed = getattr(pow_node.op, "exponent", None)  # a constant exponent lives in the op
        if len(pow_node.inputs) == 1 and absorbed is not None and math.isclose(absorbed, 3.0):
            return pow_node.inputs[0]
        if len(pow_node.inputs) == 2 and g.scalar(pow_node.inputs[1], 3.0):
            return pow_node.inputs[0]
    outer = g.made_by(name, "Mul")
    if outer is None:
        return None
    for square, x in (outer.inputs, outer.inputs[::-1]):
        inner = g.made_by(square, "Mul")
        if inner is not None and g.uses[square] == 1 and inner.inputs == (x, x):
            return x
    return None


def _tanh_argument(g: _Graph, v: str) -> str | None:
    w = _scaled_input(g, v, "Mul", TANH_SCALE)
    add = g.made_by(w, "Add") if w is not None and g.uses[w] == 1 else None
    if add is None:
        return None
    for x, p in (add.inputs, add.inputs[::-1]):
        if g.uses[p] != 1:
            continue
        cube = _scaled_input(g, p, "Mul", CUBIC)
        if cube is not None and g.uses[cube] == 1 and _cube_of(g, cube) == x:
            return x
    return None


def _product_with_x_and_half(g: _Graph, a: str, x: str) -> tuple[str, list[Node]] | None:
    """The output y = 0.5 * x * a in any association, and the nodes computing it from `a`."""
    first = g.only_reader(a, "Mul")
    if first is None:
        return None
    rest = g.other(first, a)
    out = first.outputs[0]
    if rest == x or g.scalar(rest, 0.5):  # (a * x) * 0.5 or (a * 0.5) * x
        second = g.only_reader(out, "Mul")
        want = 0.5 if rest == x else None
        if second is None:
            return None
        last = g.other(second, out)
        if (want is not None and g.scalar(last, want)) or (want is None and last == x):
            return second.outputs[0], [first, second]
        return None
    half = g.made_by(rest, "Mul")  # a * (x * 0.5)
    if (
        half is not None
        and g.uses[rest] == 1
        and g.other(half, x) is not None
        and g.scalar(g.other(half, x), 0.5)
    ):
        return out, [half, first]
    return None


def fuse_gelu(draft: Draft) -> None:
    """Replace every GELU chain (erf or tanh form) by a Gelu node; see the module's docstring."""
    gelu = op_class("Gelu")
    g = _Graph(draft)
    removed: set[str] = set()
    replacement: dict[str, Node] = {}
    for node in draft.nodes:
        if node.op_type not in ("Erf", "Tanh") or node.name in removed:
            continue
        t = node.inputs[0]
        x = _erf_argument(g, t) if node.op_type == "Erf" else _tanh_argument(g, t)
        if x is None or x not in draft.infos:
            continue
        plus = g.only_reader(node.outputs[0], "Add")
        if plus is None or not g.scalar(g.other(plus, node.outputs[0]) or "", 1.0):
            continue
        found = _product_with_x_and_half(g, plus.outputs[0], x)
        if found is None:
            continue
        y, tail = found
        if draft.infos[y].shape != draft.infos[x].shape:
            continue
        chain = [*_chain(g, t, x), node, plus, *tail]
        if any(n.name in removed for n in chain):
            continue
        approximate = "none" if node.op_type == "Erf" else "tanh"
        op = gelu(approximate=approximate)
        fused = Node(tail[-1].name, op, (x,), (y,), (draft.infos[x].shape,), guard=tail[-1].guard)
        removed.update(n.name for n in chain)
        replacement[tail[-1].name] = fused
        draft.log.append(f"fused {len(chain)} nodes into Gelu({approximate}) {fused.name}")
    if removed:
        draft.nodes = [
            replacement.get(n.name, n) for n in draft.nodes if n.name not in removed or n.name in replacement
        ]
        used = {i for n in draft.nodes for i in n.inputs} | set(draft.outputs)
        draft.consts = {k: v for k, v in draft.consts.items() if k in used}


def _chain(g: _Graph, start: str, x: str) -> list[Node]:
    """The nodes from x up to `start` (the Erf's or Tanh's input): all but x's own producer."""
    nodes, stack, seen = [], [start], set()
    while stack:
        name = stack.pop()
        if name == x or name in seen or name in g.draft.consts:
            continue
        seen.add(name)
        node = g.producer.get(name)
        if node is None:
            continue
        nodes.append(node)
        stack.extend(i for i in node.inputs if i)
    return nodes
