"""Hugging Face's GPT2LMHeadModel (gpt2, 124 M parameters), one step without a cache, at opset 17.

Input `input_ids` int64 [1, S]; output `logits` [1, S, vocab]. As the exporter writes the eager
model: sizes read off tensors by Shape/Gather/Slice/Concat (shape arithmetic an importer folds),
position ids by Range, Conv1D as Reshape/Gemm/Reshape, the packed q/k/v split by Split, heads by
Reshape/Transpose, scores divided by sqrt(head width), the causal mask two Slices of each layer's
lower-triangular bool buffer [1, 1, positions, positions] applied by Where with float32's lowest,
gelu_new in its tanh form, LayerNorm as LayerNormalization (eps 1e-5). The LM head is tied: MatMul by Transpose(wte).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from flexnnd.zoo.builder import OUTPUT, GraphBuilder


@dataclass(frozen=True)
class Gpt2Config:
    vocab: int
    positions: int
    layers: int
    heads: int
    hidden: int
    sequence: int


GPT2 = Gpt2Config(vocab=50257, positions=1024, layers=12, heads=12, hidden=768, sequence=8)
# The same graph narrowed to run in milliseconds.
GPT2_MINI = Gpt2Config(vocab=1000, positions=64, layers=2, heads=4, hidden=64, sequence=8)
EPS = 1e-5
INPUT_IDS = "input_ids"


def conv1d(b: GraphBuilder, x: str, nx: int, nf: int, name: str) -> str:
    """transformers' Conv1D: addmm(bias, x.view(-1, nx), weight).view(size()[:-1] + (nf,)); weight [nx, nf]."""
    weight = b.parameter(f"{name}.weight", (nx, nf), nx**-0.5)
    bias = b.parameter(f"{name}.bias", (nf,), 0.02)
    size_out = b.size_slice(x, 0, -1, name)
    x = b.view(x, [[-1], b.size_dim(x, -1, name)], name)
    x = b.node("Gemm", [x, weight, bias], name, alpha=1.0, beta=1.0)
    return b.view(x, [size_out, [nf]], name)


def attention(b: GraphBuilder, x: str, c: Gpt2Config, name: str) -> str:
    h = c.heads
    d = c.hidden // h
    qkv = conv1d(b, x, c.hidden, 3 * c.hidden, f"{name}.c_attn")
    q, k, v = b.node_outputs("Split", [qkv, b.int64s([c.hidden] * 3, name)], 3, name, axis=2)
    # _split_heads: view(size()[:-1] + (heads, d)).permute(0, 2, 1, 3); the exporter merges the
    # key's transpose(-1, -2) into its permute.
    q, k, v = (b.view(t, [b.size_slice(t, 0, -1, name), [h, d]], name) for t in (q, k, v))
    query_length, key_length = b.size_dim(q, -3, name), b.size_dim(k, -3, name)
    q = b.transpose(q, (0, 2, 1, 3), name)
    k = b.transpose(k, (0, 2, 3, 1), name)
    v = b.transpose(v, (0, 2, 1, 3), name)
    scores = b.node("Div", [b.node("MatMul", [q, k], name), b.scalar(math.sqrt(d), name)], name)
    # self.bias[:, :, key_length - query_length : key_length, :key_length] of a buffer per layer.
    tril = np.tril(np.ones((c.positions, c.positions), dtype=bool))[None, None]
    causal = b.initializer(f"{name}.bias", tril)
    first = b.node("Sub", [key_length, query_length], name)
    causal = b.node("Slice", [causal, first, key_length, b.int64s([2], name), b.int64s([1], name)], name)
    causal = b.node(
        "Slice", [causal, b.int64s([0], name), key_length, b.int64s([3], name), b.int64s([1], name)], name
    )
    scores = b.node("Where", [causal, scores, b.scalar(float(np.finfo(np.float32).min), name)], name)
    probs = b.node("Softmax", [scores], name, axis=-1)
    out = b.transpose(b.node("MatMul", [probs, v], name), (0, 2, 1, 3), name)
    out = b.view(out, [b.size_slice(out, 0, -2, name), [c.hidden]], name)  # _merge_heads
    return conv1d(b, out, c.hidden, c.hidden, f"{name}.c_proj")


def block(b: GraphBuilder, x: str, c: Gpt2Config, name: str) -> str:
    y = attention(b, b.layer_norm(x, c.hidden, f"{name}.ln_1", EPS), c, f"{name}.attn")
    x = b.add(y, x, name)
    y = b.layer_norm(x, c.hidden, f"{name}.ln_2", EPS)
    y = conv1d(b, y, c.hidden, 4 * c.hidden, f"{name}.mlp.c_fc")
    y = conv1d(b, b.gelu_tanh(y, f"{name}.mlp.act"), 4 * c.hidden, c.hidden, f"{name}.mlp.c_proj")
    return b.add(x, y, name)


def gpt2_lm(c: Gpt2Config, graph_name: str, seed: int) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    scope = "transformer"
    # input_shape = input_ids.size(); input_ids = input_ids.view(-1, input_shape[-1])
    input_shape = b.node("Shape", [INPUT_IDS], scope)
    length = b.size_dim(INPUT_IDS, -1, scope)
    ids = b.view(INPUT_IDS, [[-1], length], scope)
    wte = b.parameter("transformer.wte.weight", (c.vocab, c.hidden), 0.1)
    x = b.node("Gather", [wte, ids], "transformer.wte", axis=0)
    # position_ids = torch.arange(0, input_shape[-1]).unsqueeze(0): a Range over a size.
    limit = b.node("Squeeze", [length, b.int64s([0], scope)], scope)
    position_ids = b.node("Range", [b.int64s(0, scope), limit, b.int64s(1, scope)], scope)
    position_ids = b.node("Unsqueeze", [position_ids, b.int64s([0], scope)], scope)
    wpe = b.parameter("transformer.wpe.weight", (c.positions, c.hidden), 0.02)
    x = b.add(x, b.node("Gather", [wpe, position_ids], "transformer.wpe", axis=0), scope)
    for i in range(c.layers):
        x = block(b, x, c, f"transformer.h.{i}")
    x = b.layer_norm(x, c.hidden, "transformer.ln_f", EPS)
    x = b.view(x, [input_shape, b.size_dim(x, -1, scope)], scope)  # view(input_shape + (hidden,))
    # lm_head shares wte: Linear(hidden, vocab, bias=False) is x @ wte^T.
    x = b.node("MatMul", [x, b.transpose(wte, (1, 0), "lm_head")], "lm_head")
    return b.finish(
        graph_name,
        [(INPUT_IDS, TensorProto.INT64, [1, c.sequence])],
        [(x, OUTPUT, TensorProto.FLOAT, [1, c.sequence, c.vocab])],
        f"Hugging Face GPT2LMHeadModel {graph_name} (one step of {c.sequence} tokens, no cache)",
    )


def gpt2(seed: int) -> onnx.ModelProto:
    return gpt2_lm(GPT2, "gpt2", seed)


def gpt2_mini(seed: int) -> onnx.ModelProto:
    return gpt2_lm(GPT2_MINI, "gpt2_mini", seed)
