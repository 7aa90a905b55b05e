"""What `flexnnctl check model.onnx` reports: the model's inputs and outputs as declared, its ops
with how flexnn takes each, and every node refused for its op alone, all without reading a weight.

A clean check does not promise an import: attribute values, shapes and element types are judged
when the model is imported, and that import names every node it refuses too.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any

import numpy as np
import onnx

from flexnnd.graph.fold import FOLDERS
from flexnnd.graph.onnx_import import refusals_before_weights
from flexnnd.graph.onnx_scan import scan_onnx
from flexnnd.ops import registered_ops
from flexnnd.ops.value_sized import CONSTANT_ONLY

SUPPORTED, FOLDED, REFUSED = "supported", "constant inputs only", "refused"


def _dtype_name(data_type: int) -> str:
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)))
    except (KeyError, TypeError, ValueError):
        return (
            onnx.TensorProto.DataType.Name(data_type)
            if data_type in onnx.TensorProto.DataType.values()
            else "?"
        )


def _tensor(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    shape: list[int | str] | None = None
    if tensor.HasField("shape"):
        shape = [
            int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim
        ]
    return {"name": value.name, "dtype": _dtype_name(tensor.elem_type), "shape": shape}


def check_model(path: str | os.PathLike) -> dict[str, Any]:
    """The report as a dict (JSON-ready); raises ModelFormatError for a file that is not ONNX."""
    scan = scan_onnx(path)
    opset = scan.opset
    runtime = {v.name for v in scan.inputs if v.name not in scan.initializers}  # as the importer's pre-scan
    refusals = refusals_before_weights(scan.nodes, opset, runtime=runtime) if opset is not None else []
    refused_by_op: dict[str, str] = {}
    for r in refusals:
        refused_by_op.setdefault(r.op_type, r.why or "not an op flexnn has")
    registered = set(registered_ops())
    ops = []
    counts = Counter(
        f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in scan.nodes
    )
    for op, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if op in refused_by_op:
            status, why = REFUSED, refused_by_op[op]
        elif op in registered and op not in CONSTANT_ONLY:
            status, why = SUPPORTED, ""
        elif op in FOLDERS:
            status, why = FOLDED, "computed at import when its inputs are constants (shape arithmetic)"
        else:
            status, why = REFUSED, "not an op flexnn has"
        ops.append({"op": op, "count": count, "status": status, "reason": why})
    inits = scan.initializers.values()
    graph_inputs = [v for v in scan.inputs if v.name not in scan.initializers]
    return {
        "model": str(path),
        "graph": scan.graph_name,
        "ir_version": scan.ir_version,
        "opset": opset,
        "inputs": [_tensor(v) for v in graph_inputs],
        "outputs": [_tensor(v) for v in scan.outputs],
        "nodes": len(scan.nodes),
        "initializers": len(scan.initializers),
        "initializer_bytes": sum(
            math.prod(i.dims) * _itemsize(i.data_type) for i in inits if all(d >= 0 for d in i.dims)
        ),
        "ops": ops,
        "refused": [
            {"node": r.node, "op": r.op_type, "reason": r.why or "not an op flexnn has"} for r in refusals
        ],
    }


def _itemsize(data_type: int) -> int:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 0
