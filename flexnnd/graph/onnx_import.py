"""ONNX in, a static IR graph plus its constants (in kernel layout) out."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper

from flexnnd.errors import ModelFormatError, ModelImportError, ShapeError, UnsupportedOp
from flexnnd.graph import passes
from flexnnd.graph.fold import FOLDERS, SHAPE_FOLDERS, attribute_values
from flexnnd.graph.ir import Graph, Node, Shape, TensorInfo
from flexnnd.graph.package import write_package
from flexnnd.ops import op_class

log = logging.getLogger("flexnnd.import")

MIN_OPSET = 7
MAX_OPSET = 28
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file; external data must stay inside the model's folder."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as e:
        raise ModelFormatError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not model.graph.node:
        raise ModelFormatError(f"{path}: not an ONNX model (no graph nodes; truncated or another format?)")
    base = path.parent.resolve()
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if not location or not target.is_relative_to(base) or not target.is_file():
            raise ModelFormatError(
                f"{path}: tensor {tensor.name!r} has external data {location!r} "
                f"outside the model's folder or missing"
            )
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{path}: cannot read external data: {e}") from None
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


def _static_input_shape(value: onnx.ValueInfoProto, override: Shape | None) -> Shape:
    if override is not None:
        return tuple(int(d) for d in override)
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        raise ShapeError(f"input {value.name!r} has no shape; pass input_shapes={{{value.name!r}: (...)}}")
    dims = []
    for axis, dim in enumerate(value.type.tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            if dim.dim_value <= 0:
                raise ShapeError(
                    f"input {value.name!r}: dimension {axis} is {dim.dim_value}; zero-size tensors are refused"
                )
            dims.append(int(dim.dim_value))
        elif axis == 0:
            label = dim.dim_param or "?"
            log.info("input %r: symbolic batch dimension %r set to 1", value.name, label)
            dims.append(1)
        else:
            raise ShapeError(
                f"input {value.name!r}: dimension {axis} is symbolic ({dim.dim_param or '?'!r}); flexnn needs "
                f"static shapes: pass input_shapes={{{value.name!r}: (...)}}"
            )
    return tuple(dims)


def import_onnx(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Shape] | None = None,
    name: str | None = None,
) -> tuple[Graph, dict[str, np.ndarray]]:
    """Import a loaded ONNX model: returns the graph and its constants in kernel layout."""
    graph_name = name or model.graph.name or "model"
    opset = _opset(model)
    g = model.graph
    input_shapes = dict(input_shapes or {})
    consts: dict[str, np.ndarray] = {}
    for init in g.initializer:
        try:
            consts[init.name] = numpy_helper.to_array(init)
        except (ValueError, TypeError) as e:
            raise ModelFormatError(f"initializer {init.name!r} cannot be read: {e}") from None
    infos: dict[str, TensorInfo] = {}
    inputs: list[str] = []
    for value in g.input:
        if value.name in consts:
            continue
        elem = value.type.tensor_type.elem_type
        if elem not in FLOAT_TYPES:
            raise ModelImportError(
                f"input {value.name!r} has type {onnx.TensorProto.DataType.Name(elem)}; flexnn runs float models"
            )
        infos[value.name] = TensorInfo(
            value.name, _static_input_shape(value, input_shapes.pop(value.name, None))
        )
        inputs.append(value.name)
    if input_shapes:
        raise ShapeError(f"input_shapes names {sorted(input_shapes)}, which are not model inputs ({inputs})")

    nodes: list[Node] = []
    names_seen: set[str] = set()
    for index, proto in enumerate(g.node):
        node_name = proto.name or f"{proto.op_type}_{index}"
        if node_name in names_seen:
            node_name = f"{node_name}_{index}"
        names_seen.add(node_name)
        if proto.domain not in ("", "ai.onnx"):
            raise UnsupportedOp(f"{proto.domain}.{proto.op_type}", node_name, opset, "custom domain")
        for name in proto.input:
            if name and name not in consts and name not in infos:
                raise ModelImportError(
                    f"node {node_name!r} ({proto.op_type}) reads {name!r}, which no earlier node produces "
                    f"and no initializer holds (a cycle, an unsorted graph, or a missing initializer)"
                )
        attrs = attribute_values(proto)
        values = [consts.get(n) if n else None for n in proto.input]
        all_const = all(v is not None for n, v in zip(proto.input, values, strict=True) if n)

        if proto.op_type in FOLDERS and (all_const or proto.op_type in SHAPE_FOLDERS):
            fold = FOLDERS[proto.op_type]
            if proto.op_type in SHAPE_FOLDERS:
                results = fold(values, attrs, opset, in_shape=_shape_of(proto.input[0], consts, infos))
            else:
                results = fold(values, attrs, opset)
            for out_name, value in zip(proto.output, results, strict=False):
                if out_name:
                    consts[out_name] = np.asarray(value)
            continue

        try:
            cls = op_class(proto.op_type, node_name, opset)
        except UnsupportedOp:
            if proto.op_type in FOLDERS:
                raise UnsupportedOp(
                    proto.op_type, node_name, opset, "supported only on constant inputs (shape computations)"
                ) from None
            raise
        if len([o for o in proto.output if o]) > 1:
            raise UnsupportedOp(
                proto.op_type, node_name, opset, f"only one output is supported, got {list(proto.output)}"
            )
        op, kept = cls.from_onnx(attrs, values, node_name, opset)
        for pos, name in enumerate(proto.input):
            if name and pos not in kept and values[pos] is None:
                raise UnsupportedOp(
                    proto.op_type, node_name, opset, f"input {pos} ({name!r}) must be a constant"
                )
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
        if all(v is not None for n, v in zip(kept_names, kept_values, strict=True) if n):
            results = op.reference([v.astype(np.float32) if v is not None else None for v in kept_values])
            consts[proto.output[0]] = np.asarray(results[0])
            continue
        for n in kept_names:
            if n and n in infos and infos[n].dtype != "float32":
                raise ModelImportError(
                    f"node {node_name!r} reads {n!r} of type {infos[n].dtype}; flexnn runs float32"
                )
        in_shapes = tuple(_shape_of(n, consts, infos) if n else None for n in kept_names)
        try:
            out_shapes = op.infer(in_shapes, kept_values)
        except ShapeError as e:
            raise ShapeError(f"node {node_name!r} ({proto.op_type}): {e}") from None
        for shape in out_shapes:
            if any(d <= 0 for d in shape):
                raise ShapeError(
                    f"node {node_name!r} ({proto.op_type}) produces an empty tensor of shape {shape}"
                )
        out_name = proto.output[0]
        infos[out_name] = TensorInfo(out_name, tuple(int(d) for d in out_shapes[0]))
        for n, v in zip(kept_names, kept_values, strict=True):
            if n and v is not None and n not in infos:
                infos[n] = TensorInfo(n, tuple(v.shape), "float32")
        nodes.append(Node(node_name, op, tuple(kept_names), (out_name,), in_shapes))

    outputs = [o.name for o in g.output]
    for o in outputs:
        if o in consts:
            raise ModelImportError(f"output {o!r} is a constant; flexnn needs outputs computed from inputs")
        if o not in infos:
            raise ModelImportError(f"output {o!r} is produced by no node")

    draft = passes.Draft(nodes, {k: v for k, v in consts.items()}, infos, inputs, outputs)
    passes.remove_identities(draft)
    passes.fold_batchnorm(draft)
    passes.fuse_activations(draft)
    passes.fuse_residual_adds(draft)
    passes.drop_unused(draft)
    passes.prepare_constants(draft)
    passes.drop_unused(draft)
    for line in draft.log:
        log.debug(line)

    used_order: list[str] = []
    for node in draft.nodes:
        used_order.extend(i for i in node.inputs if i in draft.consts and i not in used_order)
    graph = Graph(
        name=graph_name,
        inputs=tuple(draft.infos[i] for i in draft.inputs),
        outputs=tuple(draft.infos[o] for o in draft.outputs),
        nodes=tuple(draft.nodes),
        tensors=draft.infos,
        constants=tuple(used_order),
        opset=opset,
    )
    return graph, draft.consts


def _shape_of(name: str, consts: Mapping[str, np.ndarray], infos: Mapping[str, TensorInfo]) -> Shape:
    if name in consts:
        return tuple(int(d) for d in consts[name].shape)
    return infos[name].shape


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def import_model(
    onnx_path: str | os.PathLike,
    package_dir: str | os.PathLike,
    input_shapes: Mapping[str, Shape] | None = None,
    *,
    ladder: bool = True,
    calibration_dir: str | os.PathLike | None = None,
) -> Path:
    """Import an ONNX file into a model package folder; returns the folder.

    With `ladder` (the default) the plans of every budget are built too and stored with the
    package, with this machine's rates (measured once, cached in `calibration_dir`, by default
    ~/.cache/flexnn), so a session or the daemon only reads them.
    """
    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path)
    graph, consts = import_onnx(model, input_shapes, name=onnx_path.stem)
    del model  # the weights are in `consts` now; planning needs neither
    source = {"onnx": str(onnx_path.resolve()), "sha256": file_sha256(onnx_path), "opset": graph.opset}
    package = write_package(graph, consts, package_dir, source)
    log.info(
        "imported %s into %s: %d nodes, %d weights", onnx_path, package_dir, len(graph.nodes), len(consts)
    )
    del consts
    if ladder:
        from flexnnd.planner.calibrate import default_cache_dir
        from flexnnd.planner.ladder import build_and_store

        start = time.perf_counter()
        plans = build_and_store(package, calibration_dir or default_cache_dir())
        log.info("planned the ladder of %s: %d plans in %.2f s", graph.name, len(plans), time.perf_counter() - start)
    return Path(package_dir)
