"""The LayerNorm that older exporters (torch before opset 17) write as up to nine nodes becomes one
LayerNormalization node:

    m = ReduceMean(x, trailing axes)    d = Sub(x, m)      q = Pow(d, 2) | Mul(d, d)
    v = ReduceMean(q, same axes)        e = Add(v, eps)
    n = Div(d, Sqrt(e)) | Mul(d, Reciprocal(Sqrt(e))) | Mul(d, Pow(e, -0.5))   (Pow(e, 0.5) = Sqrt)
    y = Add(Mul(n, scale), bias)        (scale and bias optional)

Only exactly that: every intermediate read by the next node alone and not a graph output, the
axes a trailing run of x's axes (keepdims), eps a constant scalar, scale and bias constants that
vary only along the normalized axes, and nothing broadcasting to another shape. Anything else is
left as it is. The fused node computes the same arithmetic (a mean of squared deviations), in one
pass over x instead of nine.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import numpy as np

from flexnnd.errors import ShapeError
from flexnnd.graph.ir import Node, Shape, TensorInfo
from flexnnd.graph.passes import Draft
from flexnnd.ops.normalization import LayerNormalization

# The attributes the pattern reads; every other field of a matched node must be its default.
_READ_FIELDS = {"Pow": ("exponent", "exponent_shape"), "ReduceMean": ("axes", "keepdims")}


def _plain(node: Node) -> bool:
    """No attribute but those the pattern reads, and no fused activation."""
    fields = _READ_FIELDS.get(node.op_type, ())
    try:
        return node.op == type(node.op)(**{f: getattr(node.op, f) for f in fields})
    except TypeError:  # an op with required attributes is no part of the pattern
        return False


def _exponent(node: Node) -> float | None:
    """A Pow's constant scalar exponent (absorbed at import), else None."""
    return getattr(node.op, "exponent", None) if node.op_type == "Pow" and len(node.inputs) == 1 else None


@dataclasses.dataclass
class _Chain:
    """A match in progress: the nodes taken so far, in graph order."""

    draft: Draft
    readers: dict[str, list[Node]]
    x: str
    nodes: list[Node] = dataclasses.field(default_factory=list)

    def shape(self, name: str) -> Shape:
        return self.draft.infos[name].shape

    def sole_reader(self, name: str, *op_types: str) -> Node | None:
        """The one node reading `name` if it is plain and of one of `op_types`, and `name` is not a
        graph output; else None."""
        readers = self.readers.get(name, [])
        if name in self.draft.outputs or len(readers) != 1:
            return None
        node = readers[0]
        return node if node.op_type in op_types and _plain(node) else None

    def take(self, node: Node | None, shape_of: str) -> Node | None:
        """`node` added to the chain, if its output has the shape of tensor `shape_of`."""
        if node is None or self.shape(node.outputs[0]) != self.shape(shape_of):
            return None
        self.nodes.append(node)
        return node

    def constant(self, node: Node, tensor: str) -> np.ndarray | None:
        """The constant that binary `node` combines with `tensor`, if it has one."""
        if len(node.inputs) != 2 or tensor not in node.inputs:
            return None
        other = node.inputs[1] if node.inputs[0] == tensor else node.inputs[0]
        return self.draft.consts.get(other)


def _trailing_mean(node: Node, shape: Shape) -> int | None:
    """The first reduced axis, if `node` is a plain ReduceMean (keepdims) over axes k..rank-1."""
    if node.op_type != "ReduceMean" or not _plain(node) or node.op.keepdims != 1 or not node.op.axes:
        return None
    try:
        axes = node.op.reduced_axes(shape)
    except ShapeError:
        return None
    first = len(shape) - len(axes)
    return first if tuple(axes) == tuple(range(first, len(shape))) else None


def _normalized(chain: _Chain, mean: Node) -> tuple[int, float, str] | None:
    """Match `mean` .. (x - mean) / sqrt(var + eps); returns (axis, eps, that tensor's name)."""
    x, draft = chain.x, chain.draft
    if x in draft.consts or x not in draft.infos or draft.infos[x].dtype != "float32":
        return None
    axis = _trailing_mean(mean, chain.shape(x))
    if axis is None:
        return None
    chain.nodes.append(mean)
    sub = chain.take(chain.sole_reader(mean.outputs[0], "Sub"), x)
    if sub is None or sub.inputs != (x, mean.outputs[0]) or sub.outputs[0] in draft.outputs:
        return None
    d = sub.outputs[0]  # read by the square and by the division, nothing else
    readers = chain.readers[d]
    squares = [n for n in readers if _exponent(n) == 2.0 or (n.op_type == "Mul" and n.inputs == (d, d))]
    if len(readers) != 2 or len(squares) != 1 or not _plain(squares[0]):
        return None
    square = chain.take(squares[0], x)
    divide = readers[1] if readers[0] is square else readers[0]
    var = chain.sole_reader(square.outputs[0], "ReduceMean") if square else None
    if var is None or _trailing_mean(var, chain.shape(x)) != axis:
        return None
    v = var.outputs[0]
    chain.nodes.append(var)
    add = chain.take(chain.sole_reader(v, "Add"), v)
    eps = chain.constant(add, v) if add else None
    if eps is None or np.size(eps) != 1 or not math.isfinite(float(np.asarray(eps).reshape(-1)[0])):
        return None
    root = chain.take(chain.sole_reader(add.outputs[0], "Sqrt", "Pow"), v)
    if root is None or (root.op_type == "Pow" and _exponent(root) not in (0.5, -0.5)):
        return None
    if _exponent(root) == -0.5:
        inverse = root.outputs[0]
    else:
        after = chain.sole_reader(root.outputs[0], "Div", "Reciprocal")
        if after is None:
            return None
        if after.op_type == "Div":
            if divide.inputs != (d, root.outputs[0]):
                return None
            inverse = None
        elif chain.take(after, v):
            inverse = after.outputs[0]
        else:
            return None
    if inverse is not None and (
        divide.op_type != "Mul"
        or chain.sole_reader(inverse, "Mul") is not divide
        or set(divide.inputs) != {d, inverse}
    ):
        return None
    if not _plain(divide) or not chain.take(divide, x):
        return None
    return axis, float(np.asarray(eps).reshape(-1)[0]), divide.outputs[0]


def _affine(chain: _Chain, out: str, axis: int, op_type: str) -> tuple[Node, np.ndarray] | None:
    """The Mul (scale) or Add (bias) reading `out` with a constant LayerNormalization can take."""
    node = chain.sole_reader(out, op_type)
    value = chain.constant(node, out) if node else None
    if (
        value is None
        or not np.issubdtype(value.dtype, np.floating)
        or chain.shape(node.outputs[0]) != chain.shape(chain.x)
    ):
        return None
    try:
        LayerNormalization(axis=axis).infer([chain.shape(chain.x), np.shape(value)], [None, value])
    except ShapeError:
        return None
    return node, value


def _match(draft: Draft, mean: Node, readers: dict[str, list[Node]]) -> tuple[Node, list[Node]] | None:
    """The fused node and the nodes it replaces, if `mean` starts a LayerNorm decomposition."""
    chain = _Chain(draft, readers, mean.inputs[0])
    found = _normalized(chain, mean)
    if found is None:
        return None
    axis, epsilon, out = found
    scale = _affine(chain, out, axis, "Mul")
    if scale is not None:
        chain.take(scale[0], chain.x)
        out = scale[0].outputs[0]
    bias = _affine(chain, out, axis, "Add")
    if bias is not None:
        chain.take(bias[0], chain.x)
        out = bias[0].outputs[0]
    last = chain.nodes[-1]
    x_shape = chain.shape(chain.x)
    if scale is None:
        scale_name = draft.fresh_name(f"{last.name}.scale")
        draft.consts[scale_name] = np.ones(x_shape[-1], np.float32)
        draft.infos[scale_name] = TensorInfo(scale_name, (x_shape[-1],))
    else:
        scale_name = next(n for n in scale[0].inputs if n in draft.consts)
    inputs = [chain.x, scale_name]
    if bias is not None:
        inputs.append(next(n for n in bias[0].inputs if n in draft.consts))
    op = LayerNormalization(axis=axis - len(x_shape), epsilon=epsilon)
    in_shapes = tuple(x_shape if n == chain.x else tuple(draft.consts[n].shape) for n in inputs)
    return Node(last.name, op, tuple(inputs), (out,), in_shapes, guard=last.guard), chain.nodes


def fuse_layernorm(draft: Draft) -> None:
    """Each LayerNorm decomposition in `draft` becomes one LayerNormalization node (see above)."""
    readers: dict[str, list[Node]] = defaultdict(list)
    for node in draft.nodes:
        for name in dict.fromkeys(n for n in node.inputs if n):
            readers[name].append(node)
    fused: dict[str, Node] = {}  # the last node of each match -> the LayerNormalization
    removed: set[str] = set()
    for node in draft.nodes:
        if node.op_type != "ReduceMean" or node.name in removed:
            continue
        match = _match(draft, node, readers)
        if match is None:
            continue
        layer_norm, replaced = match
        fused[layer_norm.name] = layer_norm
        removed.update(n.name for n in replaced if n.name != layer_norm.name)
        draft.log.append(
            f"fused {len(replaced)} nodes {replaced[0].name}..{replaced[-1].name} into LayerNormalization "
            f"(axis {layer_norm.op.axis}, epsilon {layer_norm.op.epsilon:g})"
        )
    draft.nodes = [fused.get(n.name, n) for n in draft.nodes if n.name not in removed]
