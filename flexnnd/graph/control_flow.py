"""ONNX If and Loop, taken apart at import: flexnn plans static graphs, so a subgraph's nodes join
the main graph.

- If whose condition is known at import (a constant, or folded from constants and input shapes):
  the taken branch's nodes are inlined; the other branch is never imported.
- If whose condition is known only at run time: both branches are imported, each node guarded
  by (condition, branch) (`ir.Node.guard`: the executor skips it when the condition says so),
  and one `flexnn.IfSelect` step copies the taken branch's outputs into the If's. The arena holds
  both branches (conservative). A branch that cannot be imported for the model's input shapes
  (a ShapeError) is left out, and selecting it fails the request (InputValueError).
- Loop with a trip count and condition known at import: unrolled, iteration i's nodes named
  `<loop>/<i>/<node>`, scan outputs stacked by Unsqueeze + Concat; any other Loop is refused.

Subgraph tensors get global names `<node>/<branch or iteration>/<name>`; a name a subgraph does
not define is looked up in the scopes around it, as ONNX scoping says (`Scope.resolve`).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from flexnnd.errors import DtypeRefused, MalformedGraph, ModelImportError, ShapeError, UnsupportedOp
from flexnnd.graph.conv1d import conv1d_as_2d
from flexnnd.graph.ir import Node, TensorInfo, runtime_dtype
from flexnnd.graph.limits import checked_nbytes, tensor_to_array
from flexnnd.ops.control_flow import IfSelect

if TYPE_CHECKING:
    from flexnnd.graph.onnx_import import _Importer

OPS = frozenset({"If", "Loop"})
MAX_NESTING = 16  # subgraphs inside subgraphs: deeper is refused (real models nest 2-4 deep)
MAX_TRIP_COUNT = 4096  # iterations a Loop is unrolled into at most
MAX_UNROLLED_NODES = 100_000  # nodes all inlined branches and unrolled iterations add, at most
RUN_TIME_TRIP_COUNT = "trip count known only at run time; flexnn plans static shapes"


@dataclass(frozen=True)
class Scope:
    """A subgraph's names: its own (inputs, initializers, node outputs) mapped to global names;
    the others are its parent's. The main graph is TOP, whose names are global already."""

    names: dict[str, str]
    parent: Scope | None
    prefix: str  # of its nodes' names
    depth: int

    def resolve(self, name: str) -> str:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        return name


TOP = Scope({}, None, "", 0)


def _graphs(proto: onnx.NodeProto) -> dict[str, onnx.GraphProto]:
    return {a.name: a.g for a in proto.attribute if a.type == onnx.AttributeProto.GRAPH}


def _check_depth(depth: int, node: str) -> None:
    if depth > MAX_NESTING:
        raise ModelImportError(
            f"node {node!r}: subgraphs nested {depth} deep, above the limit of {MAX_NESTING} (If/Loop inside If/Loop)"
        )


def free_names(graph: onnx.GraphProto, depth: int, label: str) -> set[str]:
    """The names `graph` (and the subgraphs inside it) reads but does not define: its outer reads."""
    _check_depth(depth, label)
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined.update(o for n in graph.node for o in n.output if o)
    reads = {o.name for o in graph.output}
    for n in graph.node:
        reads.update(i for i in n.input if i)
        for g in _graphs(n).values():
            reads |= free_names(g, depth + 1, f"{label}/{n.name or n.op_type}")
    return reads - defined


def outer_reads(proto: onnx.NodeProto, scope: Scope) -> list[str]:
    """The global names an If's or Loop's subgraphs read from the scopes around the node."""
    label = f"{scope.prefix}{proto.name or proto.op_type}"
    names: set[str] = set()
    for g in _graphs(proto).values():
        names |= free_names(g, scope.depth + 1, label)
    return sorted({scope.resolve(n) for n in names}, key=str)  # a name upb cannot decode is bytes


def literal_conditions(nodes: Sequence[onnx.NodeProto]) -> dict[str, bool]:
    """Outputs of Constant nodes holding one element, as bools: If conditions the pre-scan can read."""
    literals = {}
    for proto in nodes:
        if proto.op_type != "Constant" or len(proto.output) != 1:
            continue
        for a in proto.attribute:
            if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and list(a.t.dims) in ([], [1]):
                # unreadable here: the import says what is wrong with it
                with contextlib.suppress(ValueError, TypeError, IndexError):
                    literals[proto.output[0]] = bool(numpy_helper.to_array(a.t).reshape(-1)[0])
    return literals


def subgraph_refusals(
    proto: onnx.NodeProto,
    label: str,
    literals: dict[str, bool],
    depth: int,
    judge: Callable[..., list[UnsupportedOp]],
    opset: int,
    runtime: set[str] | None = None,
) -> list[UnsupportedOp]:
    """The pre-scan's refusals inside an If's or Loop's subgraphs (`judge` is
    refusals_before_weights). A Loop's body is always imported, so its refusals count. So are both
    branches of an If whose condition depends on a run-time value (in `runtime`). A branch is
    dropped when the condition is known at import, which the pre-scan cannot evaluate unless it is
    a literal: there, only the taken branch counts; for any other condition the If is refused only
    when both branches are (the import names the rest once it knows the condition)."""
    _check_depth(depth + 1, label)
    graphs = _graphs(proto)
    if proto.op_type == "Loop":
        body = graphs.get("body")
        if body is None:
            return []
        inner = None
        if runtime is not None:  # a loop-carried value starts as its initial value
            initial = list(proto.input[2:])
            inner = runtime | {v.name for v, i in zip(body.input[2:], initial, strict=False) if i in runtime}
        return judge(body.node, opset, f"{label}/body/", depth + 1, inner)
    found = {
        key: judge(
            g.node,
            opset,
            f"{label}/{key.removesuffix('_branch')}/",
            depth + 1,
            None if runtime is None else set(runtime),
        )
        for key, g in graphs.items()
        if key in ("then_branch", "else_branch")
    }
    then, other = found.get("then_branch", []), found.get("else_branch", [])
    cond = proto.input[0] if proto.input else ""
    if runtime is not None and cond in runtime:
        return then + other
    if cond in literals:
        return then if literals[cond] else other
    return then + other if then and other else []


def mark_runtime(proto: onnx.NodeProto, runtime: set[str], depth: int, label: str) -> None:
    """Add `proto`'s outputs to `runtime` when it reads a value known only at run time (Shape and
    Size read only a shape, which is static). A file out of dependency order leaves some out: the
    pre-scan then refuses less, never more."""
    if proto.op_type in ("Shape", "Size"):
        return
    reads = set(proto.input)
    for g in _graphs(proto).values():
        reads |= free_names(g, depth + 1, label)
    if not runtime.isdisjoint(reads):
        runtime.update(o for o in proto.output if o)


# ---- the import ---------------------------------------------------------------------------------


def expand(im: _Importer, proto: onnx.NodeProto, node_name: str, scope: Scope, guard) -> None:
    """Import an If or Loop node (its inputs and outputs named globally) as main-graph nodes."""
    _check_depth(scope.depth + 1, node_name)
    allowed = {"If": {"then_branch", "else_branch"}, "Loop": {"body"}}[proto.op_type]
    unknown = {a.name for a in proto.attribute} - allowed
    if unknown:
        raise UnsupportedOp(
            proto.op_type, node_name, im.opset, f"attribute(s) {sorted(unknown)} not supported"
        )
    graphs = _graphs(proto)
    missing = sorted(allowed - set(graphs))
    if missing:
        raise MalformedGraph(f"node {node_name!r} ({proto.op_type}) has no subgraph attribute {missing}")
    if proto.op_type == "If":
        _expand_if(im, proto, node_name, scope, guard, graphs["then_branch"], graphs["else_branch"])
    else:
        _expand_loop(im, proto, node_name, scope, guard, graphs["body"])


def _fresh(im: _Importer, base: str, taken: set[str]) -> str:
    name, k = base, 1
    while im.known(name) or name in taken:
        name, k = f"{base}.{k}", k + 1
    taken.add(name)
    return name


def _initializers(im: _Importer, graph: onnx.GraphProto, label: str, node_name: str) -> dict[str, str]:
    """A subgraph's initializers as constants under global names (read once per subgraph)."""
    if len(graph.sparse_initializer):
        raise UnsupportedOp(
            "If/Loop", node_name, im.opset, "sparse initializers in a subgraph are not supported"
        )
    names: dict[str, str] = {}
    taken: set[str] = set()
    for init in graph.initializer:
        what = f"initializer {init.name!r} of {label}"
        try:
            value = tensor_to_array(init, what, im.limits)
        except (ValueError, TypeError) as e:
            raise MalformedGraph(f"{what} cannot be read: {e}") from None
        im.held.add(what, value.nbytes)
        if init.name in names:
            raise MalformedGraph(f"{label}: initializer {init.name!r} is declared twice")
        names[init.name] = _fresh(im, f"{label}/{init.name}", taken)
        im.consts[names[init.name]] = value
    return names


def _import_subgraph(
    im: _Importer,
    graph: onnx.GraphProto,
    label: str,
    scope: Scope,
    guard,
    bound: dict[str, str],
) -> list[str]:
    """Import `graph`'s nodes under `label`; `bound` gives its inputs' and initializers' global
    names. Returns the global names of its outputs."""
    names = dict(bound)
    taken: set[str] = set()
    for n in graph.node:
        for o in n.output:
            if not o:
                continue
            if o in names:
                raise MalformedGraph(
                    f"{label}: node {n.name or n.op_type!r} writes {o!r}, which the subgraph has already "
                    "(an input, an initializer or another node's output)"
                )
            names[o] = _fresh(im, f"{label}/{o}", taken)
    im.expanded += len(graph.node)
    if im.expanded > MAX_UNROLLED_NODES:
        raise ModelImportError(
            f"{label}: inlining and unrolling If/Loop subgraphs adds {im.expanded:,} nodes, above the "
            f"limit of {MAX_UNROLLED_NODES:,}"
        )
    child = Scope(names, scope, f"{label}/", scope.depth + 1)
    protos = []
    for n in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        del copy.input[:]
        copy.input.extend(child.resolve(i) if i else "" for i in n.input)
        del copy.output[:]
        copy.output.extend(names[o] if o else "" for o in n.output)
        protos.append(copy)
    rewritten = conv1d_as_2d(protos, im.consts, _Taken(im), im.opset)  # as the main graph's are
    im.import_nodes(protos if rewritten is None else rewritten, child, guard)
    return [child.resolve(o.name) for o in graph.output]


class _Taken:
    """The names in use, for conv1d_as_2d's fresh names: the importer's and those it adds."""

    def __init__(self, im: _Importer):
        self.im, self.added = im, set()

    def __contains__(self, name: object) -> bool:
        return name in self.added or (isinstance(name, str) and self.im.known(name))

    def add(self, name: str) -> None:
        self.added.add(name)


def _identity(im: _Importer, source: str, target: str, node_name: str, scope: Scope, guard) -> None:
    """`target` becomes `source` (a constant, or an Identity node the passes remove)."""
    proto = onnx.helper.make_node("Identity", [source], [target])
    im.import_one(proto, node_name, scope, guard)


def _dtype_shape(im: _Importer, name: str) -> tuple[str, tuple[int, ...]]:
    if name in im.consts:
        value = im.consts[name]
        return runtime_dtype(value), tuple(int(d) for d in value.shape)
    info = im.infos[name]
    return info.dtype, info.shape


def _expand_if(im, proto, node_name, scope, guard, then_g, else_g) -> None:
    outs = list(proto.output)
    if not proto.input or not proto.input[0]:
        raise MalformedGraph(f"node {node_name!r} (If) has no condition input")
    for key, g in (("then", then_g), ("else", else_g)):
        if len(g.output) != len(outs):
            raise MalformedGraph(
                f"node {node_name!r} (If): the {key} branch has {len(g.output)} outputs, the node {len(outs)}"
            )
        if len(g.input):
            raise MalformedGraph(
                f"node {node_name!r} (If): the {key} branch declares inputs; If branches take none"
            )
    cond = proto.input[0]
    if cond in im.consts:
        value = np.asarray(im.consts[cond])
        if value.size != 1:
            raise ShapeError(
                f"node {node_name!r} (If): the condition has shape {list(value.shape)}; it must hold one element"
            )
        taken = bool(value.reshape(-1)[0])
        key, g = ("then", then_g) if taken else ("else", else_g)
        label = f"{node_name}/{key}"
        results = _import_subgraph(im, g, label, scope, guard, _initializers(im, g, label, node_name))
        for i, (source, target) in enumerate(zip(results, outs, strict=True)):
            if target:
                _identity(im, source, target, f"{label}/output{i}", scope, guard)
        return

    dtype, shape = _dtype_shape(im, cond)
    if dtype != "bool":
        raise UnsupportedOp(
            "If", node_name, im.opset, f"the condition {cond!r} is {dtype}; If takes a bool condition"
        )
    if int(np.prod(shape)) != 1:
        raise ShapeError(
            f"node {node_name!r} (If): the condition {cond!r} has shape {list(shape)}; it must hold one element"
        )
    results: dict[str, list[str]] = {}
    why: dict[str, str] = {}
    for key, g, taken in (("then", then_g, True), ("else", else_g, False)):
        mark = (len(im.nodes), len(im.refusals), len(im.consts), len(im.infos), set(im.unknown))
        label = f"{node_name}/{key}"
        try:
            bound = _initializers(im, g, label, node_name)
            results[key] = _import_subgraph(im, g, label, scope, (*guard, (cond, taken)), bound)
        except ShapeError as e:  # this branch cannot run with these input shapes: it stays out
            _roll_back(im, mark)
            why[key] = str(e)
    if not results:
        raise ShapeError(
            f"node {node_name!r} (If): neither branch can be imported for these input shapes: "
            f"then: {why['then']}; else: {why['else']}"
        )
    if any(name in im.unknown for names in results.values() for name in names):
        im.unknown.update(o for o in outs if o)  # refused inside: the refusals say why
        return
    _select(im, node_name, cond, outs, results, why, guard)


def _roll_back(im: _Importer, mark) -> None:
    nodes, refusals, consts, infos, unknown = mark
    del im.nodes[nodes:]
    del im.refusals[refusals:]
    for d, n in ((im.consts, consts), (im.infos, infos)):
        for key in list(itertools.islice(reversed(d), len(d) - n)):
            del d[key]
    im.unknown &= unknown


def _select(im, node_name, cond, outs, results, why, guard) -> None:
    """The If's outputs from the branch the condition takes: one IfSelect step."""
    then, other = results.get("then"), results.get("else")
    if then is not None and other is not None:
        for i, (a, b) in enumerate(zip(then, other, strict=True)):
            (ta, sa), (tb, sb) = _dtype_shape(im, a), _dtype_shape(im, b)
            if (ta, sa) != (tb, sb):
                raise UnsupportedOp(
                    "If",
                    node_name,
                    im.opset,
                    f"output {i} ({outs[i]!r}) is {ta} {list(sa)} in the then branch and {tb} {list(sb)} in the "
                    "else branch; flexnn plans static shapes, so both branches must give the same shape and type",
                )
    unreachable = "; ".join(f"{k}: {v}" for k, v in why.items())
    op = IfSelect(
        outputs=len(outs),
        then_reachable=then is not None,
        else_reachable=other is not None,
        unreachable_why=unreachable[:500],
    )
    ins = [cond, *(then or []), *(other or [])]
    typed = [_dtype_shape(im, n) for n in ins]
    try:
        out_dtypes = op.output_dtypes([t for t, _ in typed])
    except DtypeRefused as e:
        raise UnsupportedOp("If", node_name, im.opset, e.why) from None
    in_shapes = tuple(s for _, s in typed)
    out_shapes = op.infer(in_shapes, [None] * len(ins))
    out_names = [o or f"{node_name}:output{i}" for i, o in enumerate(outs)]
    for name, shape, dtype in zip(out_names, out_shapes, out_dtypes, strict=True):
        if im.known(name):
            raise MalformedGraph(f"node {node_name!r} (If) writes {name!r}, which exists already")
        checked_nbytes(f"node {node_name!r} (If) output {name!r}", shape, np.dtype(dtype).itemsize, im.limits)
        im.infos[name] = TensorInfo(name, tuple(shape), dtype)
    for name, (dtype, shape) in zip(ins, typed, strict=True):
        if name in im.consts and name not in im.infos:
            im.infos[name] = TensorInfo(name, shape, dtype)
    im.nodes.append(Node(node_name, op, tuple(ins), tuple(out_names), in_shapes, tuple(guard)))


def _scalar(im: _Importer, name: str, node_name: str, what: str) -> np.ndarray:
    value = im.consts.get(name)
    if value is None:
        raise UnsupportedOp(
            "Loop", node_name, im.opset, f"{RUN_TIME_TRIP_COUNT} ({what} {name!r} is computed at run time)"
        )
    value = np.asarray(value)
    if value.size != 1:
        raise ShapeError(
            f"node {node_name!r} (Loop): {what} {name!r} has shape {list(value.shape)}; it must hold one element"
        )
    return value.reshape(-1)[0]


def _expand_loop(im, proto, node_name, scope, guard, body) -> None:
    inputs = list(proto.input) + [""] * max(0, 2 - len(proto.input))
    trip_name, cond_name, initial = inputs[0], inputs[1], inputs[2:]
    carried_count = len(initial)
    if len(body.input) != 2 + carried_count:
        raise MalformedGraph(
            f"node {node_name!r} (Loop): the body takes {len(body.input)} inputs; it must take 2 + "
            f"{carried_count} (iteration, condition, the loop-carried values)"
        )
    scan_count = len(body.output) - 1 - carried_count
    if scan_count < 0:
        raise MalformedGraph(
            f"node {node_name!r} (Loop): the body gives {len(body.output)} outputs; it must give at least 1 + "
            f"{carried_count} (condition, the loop-carried values)"
        )
    if len(proto.output) > carried_count + scan_count:
        raise MalformedGraph(
            f"node {node_name!r} (Loop) names {len(proto.output)} outputs; its body gives "
            f"{carried_count} loop-carried values and {scan_count} scan outputs"
        )
    trips = int(_scalar(im, trip_name, node_name, "trip count M")) if trip_name else None
    going = bool(_scalar(im, cond_name, node_name, "condition")) if cond_name else True
    if trips is None and not cond_name:
        raise UnsupportedOp(
            "Loop", node_name, im.opset, "neither a trip count nor a condition: the loop never ends"
        )
    if not cond_name and trips > MAX_TRIP_COUNT:
        raise UnsupportedOp(
            "Loop",
            node_name,
            im.opset,
            f"trip count {trips:,} is above the {MAX_TRIP_COUNT:,} iterations flexnn unrolls",
        )
    if not cond_name and im.expanded + trips * len(body.node) > MAX_UNROLLED_NODES:
        raise ModelImportError(
            f"node {node_name!r} (Loop): unrolling {trips:,} iterations of {len(body.node)} nodes would add "
            f"{trips * len(body.node):,} nodes to the {im.expanded:,} inlined so far, above the limit of "
            f"{MAX_UNROLLED_NODES:,}"
        )
    label = f"{node_name}/body"
    constants = _initializers(im, body, label, node_name)
    carried = list(initial)
    scans: list[list[str]] = [[] for _ in range(scan_count)]
    taken: set[str] = set()
    iteration = 0
    while going and (trips is None or iteration < trips):
        if iteration >= MAX_TRIP_COUNT:
            raise UnsupportedOp(
                "Loop",
                node_name,
                im.opset,
                f"still running after {MAX_TRIP_COUNT:,} iterations (trip count {trips}), the most flexnn unrolls",
            )
        prefix = f"{node_name}/{iteration}"
        bound = dict(constants)
        for value, given in (
            (body.input[0].name, np.array(iteration, dtype=np.int64)),
            (body.input[1].name, np.array(going, dtype=np.bool_)),
        ):
            if value:
                bound[value] = _fresh(im, f"{prefix}/{value}", taken)
                im.consts[bound[value]] = given
        for v, name in zip(body.input[2:], carried, strict=True):
            bound[v.name] = name
        refused = len(im.refusals)
        results = _import_subgraph(im, body, prefix, scope, guard, bound)
        if len(im.refusals) > refused or any(r in im.unknown for r in results):
            im.unknown.update(o for o in proto.output if o)  # refused inside: said once, not per iteration
            return
        if cond_name:
            going = bool(_scalar(im, results[0], node_name, "the body's condition output"))
        carried = results[1 : 1 + carried_count]
        for scan, name in zip(scans, results[1 + carried_count :], strict=True):
            scan.append(name)
        iteration += 1
    for k, (source, target) in enumerate(zip(carried, proto.output, strict=False)):
        if target:
            _identity(im, source, target, f"{node_name}/output{k}", scope, guard)
    for j, target in enumerate(proto.output[carried_count:]):
        if target:
            _stack(im, scans[j], target, f"{node_name}/scan{j}", scope, guard)


def _stack(im, parts: list[str], target: str, label: str, scope: Scope, guard) -> None:
    """A scan output: each iteration's value with a new leading axis, concatenated along it."""
    if not parts:
        raise ShapeError(
            f"{label}: the Loop runs 0 times, so this scan output is empty; zero-size tensors are refused"
        )
    if im.opset >= 13:
        axes = _fresh(im, f"{label}/axes", set())
        im.consts[axes] = np.array([0], dtype=np.int64)
        unsqueeze = [
            onnx.helper.make_node("Unsqueeze", [p, axes], [f"{label}/{i}"]) for i, p in enumerate(parts)
        ]
    else:
        unsqueeze = [
            onnx.helper.make_node("Unsqueeze", [p], [f"{label}/{i}"], axes=[0]) for i, p in enumerate(parts)
        ]
    if len(parts) == 1:
        unsqueeze[0].output[0] = target
    stacked = []
    for i, node in enumerate(unsqueeze):
        if node.output[0] != target:
            node.output[0] = _fresh(im, node.output[0], set())
        im.import_one(node, f"{label}/unsqueeze{i}", scope, guard)
        stacked.append(node.output[0])
    if len(parts) > 1:
        im.import_one(
            onnx.helper.make_node("Concat", stacked, [target], axis=0), f"{label}/concat", scope, guard
        )
