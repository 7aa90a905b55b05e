"""Hugging Face's BertModel (bert-base-uncased's shape, with the pooler), as exported at opset 17.

Inputs are int64 [1, sequence]: `input_ids`, `attention_mask` and `token_type_ids` (an input, not
the model's zero buffer, so that the token type table stays a run-time Gather and a parameter).
The mask is extended as the exporter writes `(1.0 - mask[:, None, None, :].to(float)) * finfo.min`:
Unsqueeze/Cast/Sub/Mul, added to every layer's scores. Sizes are read off tensors (Shape, Gather,
Slice, Concat: shape arithmetic an importer folds), position ids sliced from their int64 buffer.
Eager attention: Linear layers as MatMul+Add, heads by Reshape/Transpose, scores divided by
sqrt(head width); GELU in its erf form; LayerNorm as LayerNormalization (eps 1e-12). Outputs: `last_hidden_state` and `pooler_output`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from flexnnd.zoo.builder import GraphBuilder


@dataclass(frozen=True)
class BertConfig:
    vocab: int
    positions: int
    type_vocab: int
    layers: int
    heads: int
    hidden: int
    intermediate: int
    sequence: int


BERT_BASE = BertConfig(
    vocab=30522, positions=512, type_vocab=2, layers=12, heads=12, hidden=768, intermediate=3072, sequence=128
)
# The same graph narrowed to run in milliseconds.
BERT_MINI = BertConfig(
    vocab=1000, positions=64, type_vocab=2, layers=2, heads=4, hidden=64, intermediate=256, sequence=16
)
EPS = 1e-12
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ("last_hidden_state", "pooler_output")


def extended_mask(b: GraphBuilder, mask: str) -> str:
    """get_extended_attention_mask: 0 where a key may be attended to, float32's lowest elsewhere."""
    scope = "bert"
    mask = b.node("Unsqueeze", [mask, b.int64s([1], scope)], scope)
    mask = b.node("Unsqueeze", [mask, b.int64s([2], scope)], scope)
    mask = b.node("Cast", [mask], scope, to=TensorProto.FLOAT)
    mask = b.node("Sub", [b.scalar(1.0, scope), mask], scope)
    return b.node("Mul", [mask, b.scalar(float(np.finfo(np.float32).min), scope)], scope)


def self_attention(b: GraphBuilder, x: str, mask: str, c: BertConfig, name: str) -> str:
    h = c.heads
    d = c.hidden // h

    def heads(projection: str, perm: tuple[int, ...]) -> str:
        # transpose_for_scores: view(size()[:-1] + (heads, d)).permute(0, 2, 1, 3); the key's extra
        # transpose(-1, -2) is merged into the same Transpose by the exporter.
        y = b.matmul_linear(x, c.hidden, c.hidden, f"{name}.{projection}")
        return b.transpose(b.view(y, [b.size_slice(y, 0, -1, name), [h, d]], name), perm, name)

    q = heads("query", (0, 2, 1, 3))
    k = heads("key", (0, 2, 3, 1))
    v = heads("value", (0, 2, 1, 3))
    scores = b.node("Div", [b.node("MatMul", [q, k], name), b.scalar(math.sqrt(d), name)], name)
    probs = b.node("Softmax", [b.node("Add", [scores, mask], name)], name, axis=-1)
    out = b.transpose(b.node("MatMul", [probs, v], name), (0, 2, 1, 3), name)
    return b.view(out, [b.size_slice(out, 0, -2, name), [c.hidden]], name)  # size()[:-2] + (width,)


def layer(b: GraphBuilder, x: str, mask: str, c: BertConfig, name: str) -> str:
    y = self_attention(b, x, mask, c, f"{name}.attention.self")
    y = b.matmul_linear(y, c.hidden, c.hidden, f"{name}.attention.output.dense")
    x = b.layer_norm(
        b.add(y, x, f"{name}.attention.output"), c.hidden, f"{name}.attention.output.LayerNorm", EPS
    )
    y = b.matmul_linear(x, c.hidden, c.intermediate, f"{name}.intermediate.dense")
    y = b.gelu_erf(y, f"{name}.intermediate.intermediate_act_fn")
    y = b.matmul_linear(y, c.intermediate, c.hidden, f"{name}.output.dense")
    return b.layer_norm(b.add(y, x, f"{name}.output"), c.hidden, f"{name}.output.LayerNorm", EPS)


def bert(c: BertConfig, graph_name: str, seed: int) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    ids, mask, types = INPUTS
    scope = "embeddings"
    words = b.parameter("embeddings.word_embeddings.weight", (c.vocab, c.hidden), 0.1)
    x = b.node("Gather", [words, ids], f"{scope}.word_embeddings", axis=0)
    table = b.parameter("embeddings.token_type_embeddings.weight", (c.type_vocab, c.hidden), 0.1)
    x = b.add(x, b.node("Gather", [table, types], f"{scope}.token_type_embeddings", axis=0), scope)
    # self.position_ids[:, 0:seq_length] of the buffer arange(positions)[None], S read off input_ids.
    table = b.parameter("embeddings.position_embeddings.weight", (c.positions, c.hidden), 0.1)
    buffer = b.initializer("embeddings.position_ids", np.arange(c.positions, dtype=np.int64)[None])
    bounds = [b.int64s([0], scope), b.size_dim(ids, 1, scope), b.int64s([1], scope), b.int64s([1], scope)]
    position_ids = b.node("Slice", [buffer, *bounds], scope)
    x = b.add(x, b.node("Gather", [table, position_ids], f"{scope}.position_embeddings", axis=0), scope)
    x = b.layer_norm(x, c.hidden, "embeddings.LayerNorm", EPS)
    additive_mask = extended_mask(b, mask)
    for i in range(c.layers):
        x = layer(b, x, additive_mask, c, f"encoder.layer.{i}")
    last_hidden_state = x
    pooled = b.node("Gather", [x, b.int64s(0, "pooler")], "pooler", axis=1)  # hidden_states[:, 0]
    pooled = b.node("Tanh", [b.linear(pooled, c.hidden, c.hidden, "pooler.dense")], "pooler.activation")
    return b.finish(
        graph_name,
        [(name, TensorProto.INT64, [1, c.sequence]) for name in INPUTS],
        [
            (last_hidden_state, OUTPUTS[0], TensorProto.FLOAT, [1, c.sequence, c.hidden]),
            (pooled, OUTPUTS[1], TensorProto.FLOAT, [1, c.hidden]),
        ],
        f"Hugging Face BertModel {graph_name} (sequence {c.sequence})",
    )


def bert_base(seed: int) -> onnx.ModelProto:
    return bert(BERT_BASE, "bert_base", seed)


def bert_mini(seed: int) -> onnx.ModelProto:
    return bert(BERT_MINI, "bert_mini", seed)
