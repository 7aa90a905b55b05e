"""Inputs for any zoo model, read off its graph: an image, or token ids, token types and a mask."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto


def example_feeds(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    """Inputs a zoo model takes: a standard-normal image (or past keys and values), token ids drawn
    below the size of the table they index, a random 0/1 token type, a position inside the static
    cache, and an attention mask whose last quarter is padding."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            feeds[value.name] = rng.standard_normal(shape, dtype=np.float32)
        elif value.name == "cache_position":  # a position inside the static cache
            cache = next(i for i in model.graph.input if i.name.startswith("past_key_values"))
            feeds[value.name] = rng.integers(
                0, cache.type.tensor_type.shape.dim[2].dim_value, shape, dtype=np.int64
            )
        elif value.name == "attention_mask":
            mask = np.ones(shape, dtype=np.int64)
            mask[:, shape[1] * 3 // 4 :] = 0
            feeds[value.name] = mask
        else:
            feeds[value.name] = rng.integers(0, _table_rows(model, value.name), shape, dtype=np.int64)
    return feeds


def _table_rows(model: onnx.ModelProto, ids: str) -> int:
    """The rows of the embedding table that `ids` index, through the views between (as GPT-2's
    input_ids.view(-1, S))."""
    rows = {t.name: t.dims[0] for t in model.graph.initializer if t.dims}
    tensors = {ids}
    for node in model.graph.node:  # in topological order, as the zoo writes them
        if node.op_type == "Gather" and node.input[1] in tensors and node.input[0] in rows:
            return rows[node.input[0]]
        if node.op_type in ("Reshape", "Unsqueeze", "Squeeze") and node.input[0] in tensors:
            tensors.add(node.output[0])
    raise ValueError(f"no embedding table reads {ids!r}")
