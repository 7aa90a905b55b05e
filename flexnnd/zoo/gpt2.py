"""Hugging Face's GPT2LMHeadModel (gpt2, 124 M parameters), one step without a cache, at opset 17.

Input `input_ids` int64 [1, S]; output `logits` [1, S, vocab]. As the exporter writes the eager
model: Conv1D as Reshape/Gemm/Reshape, the packed q/k/v split by Split, heads by Reshape/Transpose,
scores divided by sqrt(head width), the causal mask a Slice of each layer's lower-triangular bool
buffer [1, 1, positions, positions] applied by Where with float32's lowest, gelu_new in its tanh
form, LayerNorm as LayerNormalization (eps 1e-5). The LM head is tied: MatMul by Transpose(wte).
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


def conv1d(b: GraphBuilder, x: str, nx: int, nf: int, c: Gpt2Config, name: str) -> str:
    """transformers' Conv1D: addmm(bias, x.view(-1, nx), weight).view(1, S, nf); weight is [nx, nf]."""
    weight = b.parameter(f"{name}.weight", (nx, nf), nx**-0.5)
    bias = b.parameter(f"{name}.bias", (nf,), 0.02)
    x = b.node("Gemm", [b.reshape(x, (-1, nx), name), weight, bias], name, alpha=1.0, beta=1.0)
    return b.reshape(x, (1, c.sequence, nf), name)


def attention(b: GraphBuilder, x: str, c: Gpt2Config, name: str) -> str:
    s, h = c.sequence, c.heads
    d = c.hidden // h
    qkv = conv1d(b, x, c.hidden, 3 * c.hidden, c, f"{name}.c_attn")
    q, k, v = b.node_outputs("Split", [qkv, b.int64s([c.hidden] * 3, name)], 3, name, axis=2)
    # _split_heads: view(1, S, heads, d).permute(0, 2, 1, 3); the key's transpose(-1, -2) merged in.
    q = b.transpose(b.reshape(q, (1, s, h, d), name), (0, 2, 1, 3), name)
    k = b.transpose(b.reshape(k, (1, s, h, d), name), (0, 2, 3, 1), name)
    v = b.transpose(b.reshape(v, (1, s, h, d), name), (0, 2, 1, 3), name)
    scores = b.node("Div", [b.node("MatMul", [q, k], name), b.scalar(math.sqrt(d), name)], name)
    # self.bias[:, :, key_length - query_length : key_length, :key_length], a buffer per layer.
    tril = np.tril(np.ones((c.positions, c.positions), dtype=bool))[None, None]
    causal = b.node(
        "Slice",
        [
            b.initializer(f"{name}.bias", tril),
            b.int64s([0, 0], name),
            b.int64s([s, s], name),
            b.int64s([2, 3], name),
        ],
        name,
    )
    scores = b.node("Where", [causal, scores, b.scalar(float(np.finfo(np.float32).min), name)], name)
    probs = b.node("Softmax", [scores], name, axis=-1)
    out = b.transpose(b.node("MatMul", [probs, v], name), (0, 2, 1, 3), name)
    out = b.reshape(out, (1, s, c.hidden), name)
    return conv1d(b, out, c.hidden, c.hidden, c, f"{name}.c_proj")


def block(b: GraphBuilder, x: str, c: Gpt2Config, name: str) -> str:
    y = attention(b, b.layer_norm(x, c.hidden, f"{name}.ln_1", EPS), c, f"{name}.attn")
    x = b.add(y, x, name)
    y = conv1d(
        b, b.layer_norm(x, c.hidden, f"{name}.ln_2", EPS), c.hidden, 4 * c.hidden, c, f"{name}.mlp.c_fc"
    )
    y = conv1d(b, b.gelu_tanh(y, f"{name}.mlp.act"), 4 * c.hidden, c.hidden, c, f"{name}.mlp.c_proj")
    return b.add(x, y, name)


def gpt2_lm(c: Gpt2Config, graph_name: str, seed: int) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    wte = b.parameter("transformer.wte.weight", (c.vocab, c.hidden), 0.1)
    x = b.node("Gather", [wte, INPUT_IDS], "transformer.wte", axis=0)
    # position_ids = arange(S).unsqueeze(0), folded to a constant by the exporter.
    wpe = b.parameter("transformer.wpe.weight", (c.positions, c.hidden), 0.02)
    positions = b.node("Gather", [wpe, b.int64s([list(range(c.sequence))])], "transformer.wpe", axis=0)
    x = b.add(x, positions, "transformer")
    for i in range(c.layers):
        x = block(b, x, c, f"transformer.h.{i}")
    x = b.layer_norm(x, c.hidden, "transformer.ln_f", EPS)
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
