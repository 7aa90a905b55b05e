"""Graph passes run at import: drop identities, fold BatchNorm into Conv, fuse activations,
and rewrite weights into their kernels' layout.

They work on a `Draft` (mutable lists and dicts); the importer freezes the result into a Graph.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from flexnnd.graph.ir import Node, TensorInfo, runtime_dtype

FUSABLE_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Swish"}


@dataclass
class Draft:
    nodes: list[Node]
    consts: dict[str, np.ndarray]
    infos: dict[str, TensorInfo]
    inputs: list[str]
    outputs: list[str]
    log: list[str] = field(default_factory=list)

    def consumers(self) -> Counter[str]:
        return Counter(name for n in self.nodes for name in n.inputs if name)

    def fresh_name(self, base: str) -> str:
        name, k = base, 1
        while name in self.infos or name in self.consts:
            name, k = f"{base}.{k}", k + 1
        return name


def remove_identities(draft: Draft) -> None:
    """Identity and (inference) Dropout nodes disappear; their consumers read the source.

    One pass that records renames (a union-find forest), then one rewrite of every node: linear,
    whatever the number of identities.
    """
    renamed: dict[str, str] = {}

    def find(name: str) -> str:
        root = name
        while root in renamed:
            root = renamed[root]
        while name != root:  # path compression keeps long chains of identities linear
            renamed[name], name = root, renamed[name]
        return root

    removed: set[int] = set()
    for node in draft.nodes:
        if node.op_type not in ("Identity", "Dropout"):
            continue
        src, dst = find(node.inputs[0]), find(node.outputs[0])
        if src == dst:
            continue
        if dst in draft.outputs:
            if src in draft.outputs or src in draft.inputs or src in draft.consts:
                continue  # the graph output needs a tensor of its own: keep the alias node
            old, new = src, dst  # the producer writes the graph output directly
        else:
            old, new = dst, src
        renamed[old] = new
        if old in draft.infos and new not in draft.infos:
            draft.infos[new] = dataclasses.replace(draft.infos[old], name=new)
        removed.add(id(node))
        draft.log.append(f"removed {node.op_type} {node.name}")
    if not removed:
        return

    def sub(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(find(n) if n else n for n in names)

    draft.nodes = [
        dataclasses.replace(
            n, inputs=sub(n.inputs), outputs=sub(n.outputs), guard=tuple((find(c), b) for c, b in n.guard)
        )
        for n in draft.nodes
        if id(n) not in removed
    ]


def fold_batchnorm(draft: Draft) -> None:
    """Conv followed by inference BatchNorm becomes one Conv with rescaled weights and a bias."""
    uses = draft.consumers()
    producers = {o: n for n in draft.nodes for o in n.outputs}
    out: list[Node] = []
    folded_convs: dict[int, Node] = {}  # id(conv) -> its folded version, applied once at the end
    for node in draft.nodes:
        if node.op_type != "BatchNormalization" or getattr(node.op, "training_mode", 0):
            out.append(node)
            continue
        conv = producers.get(node.inputs[0])
        params = node.inputs[1:5]
        if (
            conv is None
            or conv.op_type != "Conv"
            or uses[node.inputs[0]] != 1
            or node.inputs[0] in draft.outputs
            or not all(p in draft.consts for p in params)
            or conv.inputs[1] not in draft.consts
        ):
            out.append(node)
            continue
        scale, shift, mean, var = (draft.consts[p].astype(np.float64) for p in params)
        factor = scale / np.sqrt(var + float(node.op.epsilon))
        weight = draft.consts[conv.inputs[1]].astype(np.float64)
        has_bias = len(conv.inputs) > 2 and conv.inputs[2]
        bias = draft.consts[conv.inputs[2]].astype(np.float64) if has_bias else np.zeros(weight.shape[0])
        w_name, b_name = draft.fresh_name(f"{conv.name}.weight"), draft.fresh_name(f"{conv.name}.bias")
        draft.consts[w_name] = (weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
        draft.consts[b_name] = ((bias - mean) * factor + shift).astype(np.float32)
        draft.infos[w_name] = TensorInfo(w_name, draft.consts[w_name].shape)
        draft.infos[b_name] = TensorInfo(b_name, draft.consts[b_name].shape)
        in_shapes = (*conv.in_shapes[:2], draft.consts[b_name].shape)
        folded = dataclasses.replace(
            conv, inputs=(conv.inputs[0], w_name, b_name), outputs=node.outputs, in_shapes=in_shapes
        )
        folded_convs[id(conv)] = folded
        draft.log.append(f"folded BatchNormalization {node.name} into Conv {conv.name}")
    draft.nodes = [folded_convs.get(id(n), n) for n in out]


def fuse_activations(draft: Draft) -> None:
    """An activation right after a Conv/Gemm/Add (its only consumer) runs in that op's epilogue."""
    uses = draft.consumers()
    producers = {o: n for n in draft.nodes for o in n.outputs}
    replaced: dict[str, Node] = {}
    removed: set[str] = set()
    for node in draft.nodes:
        if node.op_type not in FUSABLE_ACTIVATIONS:
            continue
        src = node.inputs[0]
        prod = producers.get(src)
        if prod is None or prod.name in removed or uses[src] != 1 or src in draft.outputs:
            continue
        prod = replaced.get(prod.name, prod)
        if not hasattr(prod.op, "activation") or prod.op.activation:
            continue
        name, alpha, beta = node.op.act()
        fused_op = dataclasses.replace(prod.op, activation=name, activation_alpha=alpha, activation_beta=beta)
        replaced[prod.name] = dataclasses.replace(prod, op=fused_op, outputs=node.outputs)
        removed.add(node.name)
        draft.log.append(f"fused {node.op_type} {node.name} into {prod.op_type} {prod.name}")
    draft.nodes = [replaced.get(n.name, n) for n in draft.nodes if n.name not in removed]


def fuse_residual_adds(draft: Draft) -> None:
    """Add(conv_out, r) [+Relu] becomes the Conv's epilogue: y = act(conv + bias + r).

    Only for a dense Conv whose output the Add alone reads, a residual `r` of the same shape that
    is computed before the Conv runs, and no activation or Relu after the Add.
    """
    uses = draft.consumers()
    position = {o: i for i, n in enumerate(draft.nodes) for o in n.outputs}
    position.update({name: -1 for name in draft.inputs})
    producers = {o: n for n in draft.nodes for o in n.outputs}
    replaced: dict[str, Node] = {}
    removed: set[str] = set()
    for node in draft.nodes:
        if (
            node.op_type != "Add"
            or getattr(node.op, "activation", "") not in ("", "Relu")
            or len(node.inputs) != 2
        ):
            continue
        out_shape = draft.infos[node.outputs[0]].shape
        # Host the residual in the later of the two Convs, so the other is already computed.
        for host_name, residual in sorted(
            (node.inputs, node.inputs[::-1]), key=lambda pair: -position.get(pair[0], -1)
        ):
            conv = producers.get(host_name)
            if (
                conv is None
                or conv.op_type != "Conv"
                or conv.name in replaced
                or conv.op.activation
                or conv.op.group != 1
                or uses[host_name] != 1
                or host_name in draft.outputs
                or residual in draft.consts
                or residual not in position
                or position[residual] >= position[host_name]
                or draft.infos[residual].shape != out_shape
                or draft.infos[host_name].shape != out_shape
            ):
                continue
            inputs = (*conv.inputs, *[""] * (3 - len(conv.inputs)), residual)
            in_shapes = (*conv.in_shapes, *[None] * (3 - len(conv.in_shapes)), out_shape)
            fused_op = dataclasses.replace(conv.op, residual=True, activation=node.op.activation)
            replaced[conv.name] = dataclasses.replace(
                conv, op=fused_op, inputs=inputs, outputs=node.outputs, in_shapes=in_shapes
            )
            removed.add(node.name)
            draft.log.append(f"fused residual Add {node.name} into Conv {conv.name}")
            break
    draft.nodes = [replaced.get(n.name, n) for n in draft.nodes if n.name not in removed]


def prepare_constants(draft: Draft) -> None:
    """Rewrite each node's constant inputs into its kernel's layout (a copy per node when shared)."""
    uses = draft.consumers()
    prepared: dict[str, np.ndarray] = {}
    nodes: list[Node] = []
    for node in draft.nodes:
        values = [draft.consts.get(name) if name else None for name in node.inputs]
        if all(v is None for v in values):
            nodes.append(node)
            continue
        new_values = node.op.prepare(values)
        names = list(node.inputs)
        for pos, (name, value) in enumerate(zip(node.inputs, new_values, strict=True)):
            if not name or name not in draft.consts or value is None:
                continue
            value = np.asarray(value, dtype=runtime_dtype(value), order="C")  # rank 0 stays rank 0
            if name in prepared or uses[name] > 1:
                name = draft.fresh_name(f"{name}@{node.name}")
                names[pos] = name
            prepared[name] = value
        nodes.append(dataclasses.replace(node, inputs=tuple(names)))
    draft.nodes = nodes
    draft.consts = prepared
    draft.infos = {k: v for k, v in draft.infos.items() if k not in draft.consts}
    for name, value in prepared.items():
        draft.infos[name] = TensorInfo(name, tuple(int(d) for d in value.shape), str(value.dtype))


def drop_unused(draft: Draft) -> None:
    used = set(draft.outputs) | {i for n in draft.nodes for i in n.inputs if i}
    draft.consts = {k: v for k, v in draft.consts.items() if k in used}
    produced = set(draft.inputs) | {o for n in draft.nodes for o in n.outputs}
    draft.infos = {k: v for k, v in draft.infos.items() if k in used or k in produced or k in draft.consts}
