"""ONNX in, a static IR graph plus its constants (in kernel layout) out."""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import logging
import os
from collections.abc import Container, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from flexnnd import progress
from flexnnd.errors import (
    DtypeRefused,
    MalformedGraph,
    ModelFormatError,
    ModelImportError,
    ShapeError,
    TensorTooLarge,
    UnsupportedOp,
    UnsupportedOps,
)
from flexnnd.graph import control_flow, passes
from flexnnd.graph.conv1d import conv1d_as_2d
from flexnnd.graph.fold import FOLDERS, SHAPE_FOLDERS, attribute_values, fold_output_elements
from flexnnd.graph.fuse_gelu import fuse_gelu
from flexnnd.graph.fuse_layernorm import fuse_layernorm
from flexnnd.graph.fuse_swish import fuse_swish
from flexnnd.graph.ir import Graph, Node, Shape, TensorInfo, runtime_dtype
from flexnnd.graph.limits import (
    DEFAULT_LIMITS,
    ImportLimits,
    all_tensor_protos,
    checked_nbytes,
    load_external_data,
    tensor_to_array,
    type_name,
)
from flexnnd.graph.memory_order import memory_order
from flexnnd.graph.package import Package, write_package
from flexnnd.ops import op_class, registered_ops

log = logging.getLogger("flexnnd.import")

MIN_OPSET = 7
MAX_OPSET = 28
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
# A graph input's element type as the runtime holds it: float inputs are float32 (fed so).
_T = onnx.TensorProto
# Float types held as float32 whose declared type the graph's inputs and outputs keep (ir.Graph.declared).
DECLARED_FLOATS = {_T.FLOAT16: "float16", _T.DOUBLE: "float64"}
INPUT_DTYPES = {
    **dict.fromkeys(FLOAT_TYPES, "float32"),
    _T.INT64: "int64",
    _T.INT32: "int32",
    _T.INT16: "int16",
    _T.INT8: "int8",
    _T.UINT16: "uint16",
    _T.UINT8: "uint8",
    _T.BOOL: "bool",
}


def load_onnx(path: str | os.PathLike, limits: ImportLimits = DEFAULT_LIMITS) -> onnx.ModelProto:
    """Read an ONNX file as protobuf only (whatever its name); external data must stay inside its folder."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such model file")
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise ModelFormatError(f"{path}: {size:,} bytes, above the limit of {limits.max_file_bytes:,} bytes")
    model = parse_onnx(path.read_bytes(), str(path))
    base = path.parent.resolve()
    for what, tensor in all_tensor_protos(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            load_external_data(tensor, base, f"{path}: {what}", limits)
    return model


def parse_onnx(data: bytes, label: str = "model") -> onnx.ModelProto:
    """Bytes to a ModelProto: a protobuf parse and nothing else (no format guessed from a file name)."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise ModelFormatError(f"{label}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not model.graph.node:
        raise ModelFormatError(f"{label}: not an ONNX model (no graph nodes; truncated or another format?)")
    return model


def _opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ModelFormatError("model imports no default-domain (ai.onnx) opset")
    opset = versions[0]
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelImportError(
            f"opset {opset} is not supported (flexnn reads opsets {MIN_OPSET}–{MAX_OPSET})"
        )
    return opset


def _static_input_shape(
    value: onnx.ValueInfoProto,
    override: Shape | None,
    limits: ImportLimits,
    dtype: str,
    unresolved: list[str],
) -> Shape | None:
    """The input's static shape: `override` where given (it must agree with the declared static
    dimensions), else the declared one with an unknown leading (batch) dimension set to 1. Unknown
    dimensions that remain are added to `unresolved` (one error names them all) and None returned."""
    declared = _declared_dims(value)
    if override is not None:
        shape = tuple(int(d) for d in override)
        if declared is not None and (
            len(declared) != len(shape)
            or any(d is not None and d != s for d, s in zip(declared, shape, strict=False))
        ):
            raise ShapeError(
                f"input {value.name!r}: input_shapes gives {list(shape)}, the model declares "
                f"{[d if d is not None else '?' for d in declared]}"
            )
    elif declared is None:
        unresolved.append(f"{value.name!r} has no declared shape")
        return None
    else:
        dims = list(declared)
        if dims and dims[0] is None:
            log.info("input %r: unknown batch dimension %s set to 1", value.name, _dim_label(value, 0))
            dims[0] = 1
        missing = [axis for axis, d in enumerate(dims) if d is None]
        if missing:
            labels = ", ".join(f"dimension {a} ({_dim_label(value, a)})" for a in missing)
            unresolved.append(f"{value.name!r} {labels}")
            return None
        shape = tuple(dims)
    if any(d <= 0 for d in shape):
        raise ShapeError(f"input {value.name!r}: shape {list(shape)[:8]}; zero-size tensors are refused")
    checked_nbytes(f"input {value.name!r}", shape, np.dtype(dtype).itemsize, limits)
    return shape


def _declared_dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """The declared dimensions, None for each unknown one (symbolic, missing, or negative as some
    exporters write it); None when no shape is declared."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    dims: list[int | None] = []
    for axis, dim in enumerate(value.type.tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value >= 0:
            if dim.dim_value == 0:
                raise ShapeError(
                    f"input {value.name!r}: dimension {axis} is 0; zero-size tensors are refused"
                )
            dims.append(int(dim.dim_value))
        else:
            dims.append(None)
    return dims


def _dim_label(value: onnx.ValueInfoProto, axis: int) -> str:
    dim = value.type.tensor_type.shape.dim[axis]
    if dim.HasField("dim_value"):
        return str(dim.dim_value)
    return repr(dim.dim_param) if dim.dim_param else "unnamed"


# What a hostile graph makes numpy, the folders or an op's shape code raise: wrapped into an import
# error that names the node (the original stays chained as the cause).
_DATA_ERRORS = (
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    ArithmeticError,
    AttributeError,
    NotImplementedError,
)


# NaN/Inf/overflow while folding constants or rescaling weights means a broken model: an error that
# names the node (FloatingPointError is an ArithmeticError), not a warning and garbage weights.
def _float_errors_raise() -> np.errstate:
    return np.errstate(over="raise", divide="raise", invalid="raise")


# Folders whose output element may be wider than their inputs' (8 bytes: int64/float64 at most).
_WIDENING_FOLDERS = {"Cast", "ConstantOfShape", "Range", "Shape", "Size"}


def import_onnx(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Shape] | None = None,
    name: str | None = None,
    limits: ImportLimits = DEFAULT_LIMITS,
) -> tuple[Graph, dict[str, np.ndarray]]:
    """Import a loaded ONNX model: returns the graph and its constants in kernel layout.

    Any malformed model raises a ModelImportError naming the node, tensor and numbers; every size is
    checked against `limits` before it is allocated.
    """
    graph_name = name or model.graph.name or "model"
    opset = _opset(model)
    g = model.graph
    input_shapes = dict(input_shapes or {})
    consts: dict[str, np.ndarray] = {}
    held = _Held(limits)
    for init in g.initializer:
        what = f"initializer {init.name!r}"
        try:
            value = tensor_to_array(init, what, limits)
        except _DATA_ERRORS as e:
            raise ModelFormatError(f"{what} cannot be read: {e}") from None
        held.add(what, value.nbytes)
        consts[init.name] = value
    infos: dict[str, TensorInfo] = {}
    inputs: list[str] = []
    declared: dict[str, str] = {}
    unresolved: list[str] = []
    for value in g.input:
        if value.name in consts:
            continue
        if value.name in infos:
            raise MalformedGraph(f"input {value.name!r} is declared twice")
        elem = value.type.tensor_type.elem_type
        if elem not in INPUT_DTYPES:
            raise ModelImportError(
                f"input {value.name!r} has type {type_name(elem)}; flexnn takes float, integer and bool "
                "tensors as inputs"
            )
        dtype = INPUT_DTYPES[elem]
        if elem in DECLARED_FLOATS:
            declared[value.name] = DECLARED_FLOATS[elem]
        shape = _static_input_shape(value, input_shapes.pop(value.name, None), limits, dtype, unresolved)
        if shape is not None:
            infos[value.name] = TensorInfo(value.name, shape, dtype)
        inputs.append(value.name)
    if input_shapes:
        raise ShapeError(f"input_shapes names {sorted(input_shapes)}, which are not model inputs ({inputs})")
    if unresolved:
        example = ", ".join(f"{n!r}: (...)" for n in inputs if n not in infos)
        raise ShapeError(
            "flexnn needs static shapes; unknown: "
            + "; ".join(unresolved)
            + f". Pass input_shapes={{{example}}} "
            "(flexnnctl import --input-shape NAME=D,D,...)"
        )

    taken = {*consts, *infos, *(o for n in g.node for o in n.output), *(n.name for n in g.node)}
    rewritten = conv1d_as_2d(g.node, consts, taken, opset)
    if rewritten is not None:  # the caller's model stays as it was: a graph of the new nodes
        g = onnx.GraphProto(name=g.name, node=rewritten, input=g.input, output=g.output)
    importer = _Importer(opset, consts, infos, held, limits)
    importer.import_nodes(g.node, control_flow.TOP, (), set(consts) | set(infos))
    nodes, refusals = importer.nodes, importer.refusals

    if len(refusals) == 1:
        raise refusals[0]
    if refusals:
        raise UnsupportedOps(refusals)
    outputs = [o.name for o in g.output]
    if not outputs:
        raise MalformedGraph("the graph declares no outputs")
    for o in outputs:
        if o in consts:
            raise ModelImportError(f"output {o!r} is a constant; flexnn needs outputs computed from inputs")
        if o not in infos:
            raise ModelImportError(f"output {o!r} is produced by no node")
    if len(set(outputs)) != len(outputs):
        raise MalformedGraph(f"outputs {outputs[:8]} name a tensor twice")
    for o in g.output:  # a float16/double output is computed as float32 and returned as declared
        if o.type.tensor_type.elem_type in DECLARED_FLOATS and infos[o.name].dtype == "float32":
            declared[o.name] = DECLARED_FLOATS[o.type.tensor_type.elem_type]

    draft = passes.Draft(nodes, {k: v for k, v in consts.items()}, infos, inputs, outputs)
    try:
        with _float_errors_raise():
            passes.remove_identities(draft)
            fuse_gelu(draft)
            fuse_layernorm(draft)
            fuse_swish(draft)
            passes.fold_batchnorm(draft)
            passes.fuse_activations(draft)
            passes.fuse_residual_adds(draft)
            passes.drop_unused(draft)
            passes.prepare_constants(draft)
            passes.drop_unused(draft)
    except _DATA_ERRORS as e:
        raise ModelImportError(f"graph {graph_name!r}: a pass failed on it: {type(e).__name__}: {e}") from e
    for line in draft.log:
        log.debug(line)

    graph = _freeze(graph_name, draft, tuple(draft.nodes), opset, declared)
    # Branches run in the order that keeps each step's memory low; the weights file follows it.
    return _freeze(graph_name, draft, memory_order(graph), opset, declared), draft.consts


def _freeze(
    name: str, draft: passes.Draft, nodes: tuple[Node, ...], opset: int, declared: Mapping[str, str]
) -> Graph:
    """The graph of `draft` with `nodes` in this order, its constants in the order they are read."""
    used = {i: None for node in nodes for i in node.inputs if i in draft.consts}
    return Graph(
        name=name,
        inputs=tuple(draft.infos[i] for i in draft.inputs),
        outputs=tuple(draft.infos[o] for o in draft.outputs),
        nodes=nodes,
        tensors=draft.infos,
        constants=tuple(used),
        opset=opset,
        declared={n: d for n, d in declared.items() if n in draft.inputs or n in draft.outputs},
    )


class _Held:
    """Bytes of constants materialized so far: folding can multiply a small file into many GiB."""

    def __init__(self, limits: ImportLimits):
        self.limits, self.total = limits, 0

    def add(self, what: str, nbytes: int) -> None:
        self.total += nbytes
        if self.total > self.limits.max_total_bytes:
            raise TensorTooLarge(
                what,
                (),
                self.total,
                self.limits.max_total_bytes,
                f"{what} ({nbytes:,} bytes) brings the constants held during import to {self.total:,} bytes, "
                f"above the limit of {self.limits.max_total_bytes:,} bytes",
            )


class _Importer:
    """The import of a graph's nodes, shared by the graph and the subgraphs of its If and Loop
    nodes (graph/control_flow.py), which are imported into the same lists and dicts."""

    def __init__(self, opset: int, consts: dict, infos: dict, held: _Held, limits: ImportLimits):
        self.opset, self.consts, self.infos, self.held, self.limits = opset, consts, infos, held, limits
        self.nodes: list[Node] = []
        self.names_seen: set[str] = set()
        self.refusals: list[UnsupportedOp] = []
        self.unknown: set[str] = set()  # outputs of refused nodes: their readers are only checked for support
        self.expanded = 0  # nodes added by unrolling loops and inlining branches (control_flow's cap)

    def known(self, name: str) -> bool:
        return name in self.consts or name in self.infos or name in self.unknown

    def import_nodes(
        self,
        protos: Sequence[onnx.NodeProto],
        scope: control_flow.Scope,
        guard: tuple[tuple[str, bool], ...],
        available: Container[str] | None = None,
    ) -> None:
        """Import `protos` (a graph's or subgraph's nodes, their names already global) in dependency
        order; an If or Loop among them reads the outer names its subgraphs use, so it waits for them."""
        implicit = {
            i: control_flow.outer_reads(p, scope)
            for i, p in enumerate(protos)
            if p.op_type in control_flow.OPS
        }
        available = _Known(self) if available is None else available
        for index in _topological_order(protos, available, implicit):
            self.import_one(
                protos[index],
                f"{scope.prefix}{protos[index].name or f'{protos[index].op_type}_{index}'}",
                scope,
                guard,
                index,
                implicit.get(index, ()),
            )

    def import_one(
        self,
        proto: onnx.NodeProto,
        base: str,
        scope: control_flow.Scope,
        guard: tuple[tuple[str, bool], ...],
        suffix: int = 0,
        implicit: Sequence[str] = (),
    ) -> None:
        opset, node_name = self.opset, base
        while node_name in self.names_seen:  # passes key nodes by name: a duplicate would fuse the wrong one
            node_name, suffix = f"{base}_{suffix}", suffix + 1
        self.names_seen.add(node_name)
        if self.unknown.intersection(proto.input) or self.unknown.intersection(implicit):
            refusal = _support_refusal(proto, node_name, opset)
            if refusal is not None:
                self.refusals.append(refusal)
            self.unknown.update(o for o in proto.output if o)
            return
        try:
            if proto.domain not in ("", "ai.onnx") and _op_name(proto) not in registered_ops():
                raise UnsupportedOp(f"{proto.domain}.{proto.op_type}", node_name, opset, "custom domain")
            if proto.op_type in control_flow.OPS and proto.domain in ("", "ai.onnx"):
                control_flow.expand(self, proto, node_name, scope, guard)
                return
            with _float_errors_raise():
                node = _import_node(proto, node_name, opset, self.consts, self.infos, self.held, self.limits)
        except UnsupportedOp as e:  # the rest of the graph is still checked: one error lists them all
            self.refusals.append(e)
            self.unknown.update(o for o in proto.output if o)
            return
        except ModelImportError:
            raise
        except _DATA_ERRORS as e:  # numpy's AxisError is a ValueError and an IndexError
            raise ModelImportError(
                f"node {node_name!r} ({proto.op_type}) is malformed: {type(e).__name__}: {str(e)[:300]}"
            ) from e
        if node is not None:
            self.nodes.append(dataclasses.replace(node, guard=guard) if guard else node)


class _Known:
    """The names an importer knows so far, as a container (no copy of its dicts per subgraph)."""

    def __init__(self, importer: _Importer):
        self.importer = importer

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.importer.known(name)


def _topological_order(
    nodes: Sequence[onnx.NodeProto],
    available: Container[str],
    implicit: Mapping[int, Sequence[str]] | None = None,
) -> list[int]:
    """Node indices in dependency order (the file's order when it is already one), in O(n log n).
    `implicit` adds, per node index, the outer names an If's or Loop's subgraphs read.

    Refuses a tensor produced twice, an input nobody produces, and cycles, naming node and tensor.
    """
    implicit = implicit or {}
    producer: dict[str, int] = {}
    for index, proto in enumerate(nodes):
        label = proto.name or f"{proto.op_type}_{index}"
        if not any(proto.output):
            raise MalformedGraph(f"node {label!r} ({proto.op_type}) has no outputs")
        for out in proto.output:
            if not out:
                continue
            if out in available:
                raise MalformedGraph(
                    f"node {label!r} ({proto.op_type}) writes {out!r}, which is already a graph input or initializer"
                )
            if out in producer:
                other = nodes[producer[out]]
                raise MalformedGraph(
                    f"tensor {out!r} is produced twice: by node {other.name or other.op_type!r} "
                    f"and by node {label!r}"
                )
            producer[out] = index
    waiting = [0] * len(nodes)
    consumers: dict[int, list[int]] = {}
    for index, proto in enumerate(nodes):
        label = proto.name or f"{proto.op_type}_{index}"
        for name in {*proto.input, *implicit.get(index, ())}:
            if not name or name in available:
                continue
            if name not in producer:
                raise MalformedGraph(
                    f"node {label!r} ({proto.op_type}) reads {name!r}, which no node produces, no initializer "
                    "holds and is not a graph input (a missing initializer?)"
                )
            waiting[index] += 1
            consumers.setdefault(producer[name], []).append(index)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for c in consumers.get(index, ()):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, c)
    if len(order) < len(nodes):
        stuck = next(i for i, w in enumerate(waiting) if w)
        proto = nodes[stuck]
        blocked = next(
            n for n in (*proto.input, *implicit.get(stuck, ())) if n in producer and waiting[producer[n]]
        )
        source = nodes[producer[blocked]]
        raise MalformedGraph(
            f"the graph has a cycle: node {proto.name or proto.op_type!r} reads {blocked!r}, which node "
            f"{source.name or source.op_type!r} produces from a value that depends on it "
            f"({len(nodes) - len(order)} node(s) on or after cycles)"
        )
    return order


def _import_node(
    proto: onnx.NodeProto,
    node_name: str,
    opset: int,
    consts: dict[str, np.ndarray],
    infos: dict[str, TensorInfo],
    held: _Held,
    limits: ImportLimits,
) -> Node | None:
    """One node: folded into `consts` (returns None) or imported as a Node with static shapes."""
    attrs = attribute_values(proto, node_name, limits)
    values = [consts.get(n) if n else None for n in proto.input]
    all_const = all(v is not None for n, v in zip(proto.input, values, strict=True) if n)

    if _op_name(proto) in FOLDERS and (all_const or proto.op_type in SHAPE_FOLDERS):
        fold = FOLDERS[proto.op_type]
        if proto.op_type in SHAPE_FOLDERS:
            if not proto.input or not proto.input[0]:
                raise MalformedGraph(f"node {node_name!r} ({proto.op_type}) has no input")
            results = fold(values, attrs, opset, in_shape=_shape_of(proto.input[0], consts, infos))
        else:
            elements = fold_output_elements(proto.op_type, values, attrs)
            widest = (
                8
                if proto.op_type in _WIDENING_FOLDERS
                else max((np.asarray(v).itemsize for v in values if v is not None), default=8)
            )
            checked_nbytes(
                f"node {node_name!r} ({proto.op_type}) output {proto.output[0]!r}",
                (elements,),
                widest,
                limits,
            )
            results = fold(values, attrs, opset)
        for out_name, value in zip(proto.output, results, strict=False):
            if out_name:
                value = np.asarray(value)
                what = f"node {node_name!r} ({proto.op_type}) output {out_name!r}"
                held.add(what, checked_nbytes(what, value.shape, value.itemsize, limits))
                consts[out_name] = value
        return None

    try:
        cls = op_class(_op_name(proto), node_name, opset)
    except UnsupportedOp:
        if proto.op_type in FOLDERS:
            raise UnsupportedOp(
                proto.op_type, node_name, opset, "supported only on constant inputs (shape computations)"
            ) from None
        raise
    wanted = list(proto.output)
    while wanted and not wanted[-1]:  # trailing optional outputs left out
        wanted.pop()
    if not wanted:
        raise MalformedGraph(f"node {node_name!r} ({proto.op_type}) has no output")
    op, kept = cls.from_onnx(attrs, values, node_name, opset)
    op = op.for_outputs(len(wanted))
    for pos, name in enumerate(proto.input):
        if name and pos not in kept and values[pos] is None:
            raise UnsupportedOp(proto.op_type, node_name, opset, f"input {pos} ({name!r}) must be a constant")
    for pos in cls.const_inputs:
        if pos in kept and pos < len(proto.input) and proto.input[pos] and values[pos] is None:
            raise UnsupportedOp(
                proto.op_type,
                node_name,
                opset,
                f"input {pos} ({proto.input[pos]!r}) must be a constant (weights)",
            )
    kept_names = [proto.input[p] for p in kept if p < len(proto.input)]
    kept_values = [values[p] for p in kept if p < len(proto.input)]
    in_dtypes = [
        None if not n else runtime_dtype(v) if v is not None else infos[n].dtype
        for n, v in zip(kept_names, kept_values, strict=True)
    ]
    try:
        op = op.typed(in_dtypes)
        out_dtypes = op.output_dtypes(in_dtypes)
    except DtypeRefused as e:
        raise UnsupportedOp(proto.op_type, node_name, opset, e.why) from None
    in_shapes = tuple(_shape_of(n, consts, infos) if n else None for n in kept_names)
    try:
        out_shapes = op.infer(in_shapes, kept_values)
    except ShapeError as e:
        raise ShapeError(f"node {node_name!r} ({proto.op_type}): {e}") from None
    if len(wanted) > min(len(out_shapes), len(out_dtypes)):
        raise UnsupportedOp(
            proto.op_type,
            node_name,
            opset,
            f"output {len(out_shapes)} ({wanted[len(out_shapes)]!r}) is not supported: "
            f"flexnn computes the first {len(out_shapes)} of {proto.op_type}'s outputs",
        )
    # An optional output left out before one that is used still gets a tensor (written, not read).
    out_names = [o or f"{node_name}:output{i}" for i, o in enumerate(wanted)]
    for out_name, shape, dtype in zip(out_names, out_shapes, out_dtypes, strict=False):
        if any(int(d) <= 0 for d in shape):
            raise ShapeError(
                f"node {node_name!r} ({proto.op_type}) produces an empty tensor of shape {shape}"
            )
        checked_nbytes(
            f"node {node_name!r} ({proto.op_type}) output {out_name!r}",
            shape,
            np.dtype(dtype).itemsize,
            limits,
        )
    if all(v is not None for n, v in zip(kept_names, kept_values, strict=True) if n):
        # Every input is known: computed now, with its output size already checked above.
        scratch = op.scratch_bytes(in_shapes)
        checked_nbytes(f"node {node_name!r} ({proto.op_type}) scratch", (scratch,), 1, limits)
        flops = op.flops(in_shapes, out_shapes)
        if flops > limits.max_fold_flops:
            raise ModelImportError(
                f"node {node_name!r} ({proto.op_type}) on constant inputs would take {flops:,} FLOPs to fold, "
                f"above the limit of {limits.max_fold_flops:,}"
            )
        results = op.reference(
            [v.astype(runtime_dtype(v), copy=False) if v is not None else None for v in kept_values]
        )
        for out_name, result in zip(out_names, results, strict=False):
            value = np.asarray(result)
            what = f"node {node_name!r} ({proto.op_type}) output {out_name!r}"
            held.add(what, checked_nbytes(what, value.shape, value.itemsize, limits))
            consts[out_name] = value
        return None
    for out_name, shape, dtype in zip(out_names, out_shapes, out_dtypes, strict=False):
        if out_name in infos or out_name in consts:
            raise MalformedGraph(
                f"node {node_name!r} ({proto.op_type}) writes {out_name!r}, which exists already"
            )
        infos[out_name] = TensorInfo(out_name, tuple(int(d) for d in shape), dtype)
    for n, v in zip(kept_names, kept_values, strict=True):
        if n and v is not None and n not in infos:
            infos[n] = TensorInfo(n, tuple(v.shape), runtime_dtype(v))
    return Node(node_name, op, tuple(kept_names), tuple(out_names), in_shapes)


def refusals_before_weights(
    nodes: Sequence[onnx.NodeProto],
    opset: int,
    prefix: str = "",
    depth: int = 0,
    runtime: set[str] | None = None,
) -> list[UnsupportedOp]:
    """The nodes refused for their op alone (unknown op, custom domain, unknown attribute names),
    judged from the graph's nodes without any weight: see graph/onnx_scan.py. The nodes of If and
    Loop subgraphs are judged too, named with their nesting (`if/then/node`; see control_flow).
    `runtime`: the names whose values are known only at run time (the graph's inputs, and what the
    nodes compute from them, added here), which tells an If that imports both branches."""
    refusals = []
    literals = control_flow.literal_conditions(nodes)
    for index, proto in enumerate(nodes):
        label = prefix + (proto.name or f"{proto.op_type}_{index}")
        refusal = _support_refusal(proto, label, opset)
        if refusal is not None:
            refusals.append(refusal)
        elif proto.op_type in control_flow.OPS and proto.domain in ("", "ai.onnx"):
            refusals.extend(
                control_flow.subgraph_refusals(
                    proto, label, literals, depth, refusals_before_weights, opset, runtime
                )
            )
        if runtime is not None:
            control_flow.mark_runtime(proto, runtime, depth, label)
    return refusals


def _support_refusal(proto: onnx.NodeProto, node_name: str, opset: int) -> UnsupportedOp | None:
    """For a node whose inputs are unknown (downstream of a refused one, or before any weight is
    read): whether its op and attribute names are supported at all, as an UnsupportedOp, else None.
    Attribute values and constant inputs are judged only once the node's inputs are known."""
    if proto.domain not in ("", "ai.onnx") and _op_name(proto) not in registered_ops():
        return UnsupportedOp(f"{proto.domain}.{proto.op_type}", node_name, opset, "custom domain")
    if _op_name(proto) in FOLDERS:
        return None  # a shape computation: folded or refused once its inputs are known
    try:
        cls = op_class(_op_name(proto), node_name, opset)
    except UnsupportedOp as e:
        return e
    unknown = {a.name for a in proto.attribute} - cls.accepted_attributes(opset)
    if unknown:
        return UnsupportedOp(proto.op_type, node_name, opset, f"attribute(s) {sorted(unknown)} not supported")
    return None


def _op_name(proto: onnx.NodeProto) -> str:
    """The name a node's op is registered under: its op_type, prefixed by a domain other than
    the default one (an op of ONNX Runtime's contrib domain registers as "com.microsoft.X")."""
    # protobuf hands over a name that is not UTF-8 as bytes
    op_type, domain = (
        v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v
        for v in (proto.op_type, proto.domain)
    )
    if domain not in ("", "ai.onnx"):
        return f"{domain}.{op_type}"
    return f"ai.onnx.{op_type}" if "." in op_type else op_type  # not another domain's


def _shape_of(name: str, consts: Mapping[str, np.ndarray], infos: Mapping[str, TensorInfo]) -> Shape:
    if name in consts:
        return tuple(int(d) for d in consts[name].shape)
    return infos[name].shape


def check_ops_before_weights(path: str | os.PathLike) -> None:
    """Refuse a model whose ops flexnn does not have before reading its weights (every such node in
    one error); a file too broken to scan is left to load_onnx, which says what is wrong."""
    from flexnnd.graph.onnx_scan import scan_onnx

    try:
        scan = scan_onnx(path)
    except (ModelFormatError, OSError):
        return
    opset = scan.opset
    if opset is None:
        return
    runtime = {v.name for v in scan.inputs if v.name not in scan.initializers}
    refusals = refusals_before_weights(scan.nodes, opset, runtime=runtime)
    if len(refusals) == 1:
        raise refusals[0]
    if refusals:
        raise UnsupportedOps(refusals)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def import_to_package(
    onnx_path: str | os.PathLike,
    package_dir: str | os.PathLike,
    input_shapes: Mapping[str, Shape] | None = None,
    limits: ImportLimits = DEFAULT_LIMITS,
    state: Mapping[str, str] | None = None,
) -> Package:
    """Import an ONNX file into a model package folder, without its ladder (which
    `flexnnd.import_model` plans next, with this machine's rates). `state`: graph output -> graph
    input fed from it on the next run (`Graph.state`), kept in the arena."""
    onnx_path = Path(onnx_path)
    with progress.task(f"importing {onnx_path.name}", total=3, detail="reading the file") as task:
        check_ops_before_weights(onnx_path)
        model = load_onnx(onnx_path, limits)
        task.advance(detail="converting and folding")
        graph, consts = import_onnx(model, input_shapes, name=onnx_path.stem, limits=limits)
        if state:
            graph = dataclasses.replace(graph, state=dict(state))
            if problem := graph.state_problem():
                raise ModelImportError(f"{onnx_path}: {problem}")
        del model  # the weights are in `consts` now; planning needs neither
        task.advance(detail="writing the weights")
        source = {"onnx": str(onnx_path.resolve()), "sha256": file_sha256(onnx_path), "opset": graph.opset}
        package = write_package(graph, consts, package_dir, source)
        task.advance()
    log.info(
        "imported %s into %s: %d nodes, %d weights", onnx_path, package_dir, len(graph.nodes), len(consts)
    )
    return package
