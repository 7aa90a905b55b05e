"""A 1-D convolution runs as the 2-D one of height 1 (issue 17: "Conv/Pool in 1-D where the 2-D
kernels generalise"): audio, voice-activity and OCR sequence models write Conv over [N, C, L].

At import, each Conv whose weight is a 3-D constant (an initializer, or a Constant node's value)
becomes Unsqueeze(axis 2) -> Conv with [1, k] kernel attributes and a [M, C/g, 1, K] weight (a
view of the same array) -> Squeeze(axis 2).
Unsqueeze and Squeeze share their input's memory, so the rewrite adds no copy and no pass over the
data. A 1-D Conv whose weight is computed at run time is left as it is, and the import refuses it
saying why. The caller's ModelProto is not changed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

_SPATIAL = ("kernel_shape", "strides", "dilations", "pads")


def _spatial_2d(attr: onnx.AttributeProto) -> onnx.AttributeProto | None:
    """The attribute for height 1: kernel_shape/strides/dilations get a leading 1, pads a 0 at each
    end; None for a spatial attribute that is not 1-D."""
    values = list(attr.ints)
    if attr.name in _SPATIAL[:3]:
        return helper.make_attribute(attr.name, [1, *values]) if len(values) == 1 else None
    if attr.name == "pads":
        return helper.make_attribute(attr.name, [0, values[0], 0, values[1]]) if len(values) == 2 else None
    return attr


def conv1d_as_2d(
    nodes: Sequence[onnx.NodeProto], consts: dict[str, np.ndarray], taken: set[str], opset: int
) -> list[onnx.NodeProto] | None:
    """The nodes with every 1-D Conv of a constant weight rewritten (new weights and axes added to
    `consts`, new names to `taken`); None when there is none."""

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}.{k}", k + 1
        taken.add(name)
        return name

    out: list[onnx.NodeProto] = []
    axes_name = None
    count = 0
    literals = _constant_node_values(nodes)
    for index, node in enumerate(nodes):
        weight = None
        if node.op_type == "Conv" and len(node.input) > 1:
            weight = consts.get(node.input[1], literals.get(node.input[1]))
        attrs = [_spatial_2d(a) for a in node.attribute]
        if weight is None or weight.ndim != 3 or node.domain not in ("", "ai.onnx") or None in attrs:
            out.append(node)
            continue
        w4 = fresh(f"{node.input[1]}@2d")
        consts[w4] = weight.reshape(weight.shape[0], weight.shape[1], 1, weight.shape[2])  # a view
        if opset >= 13 and axes_name is None:
            axes_name = fresh("conv1d_axes")
            consts[axes_name] = np.array([2], dtype=np.int64)
        base = node.name or f"Conv_{index}"
        x4, y4 = fresh(f"{base}:in2d"), fresh(f"{base}:out2d")
        axes = {} if opset >= 13 else {"axes": [2]}
        extra = [axes_name] if opset >= 13 else []
        out.append(
            helper.make_node(
                "Unsqueeze", [node.input[0], *extra], [x4], name=fresh(f"{base}:unsqueeze"), **axes
            )
        )
        conv = helper.make_node("Conv", [x4, w4, *node.input[2:]], [y4], name=node.name)
        conv.attribute.extend(attrs)
        out.append(conv)
        out.append(
            helper.make_node(
                "Squeeze", [y4, *extra], list(node.output), name=fresh(f"{base}:squeeze"), **axes
            )
        )
        count += 1
    return out if count else None


def _constant_node_values(nodes: Sequence[onnx.NodeProto]) -> dict[str, np.ndarray]:
    """The 3-D tensors Constant nodes hold (some exporters write Conv weights so, e.g. OpenVINO's)."""
    values = {}
    for node in nodes:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and len(attr.t.dims) == 3:
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values
