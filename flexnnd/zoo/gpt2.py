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
from collections.abc import Callable
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
    sequence: int  # tokens of the one-step graph
    cache: int  # positions the decoder step's static key/value cache holds

    @property
    def head_width(self) -> int:
        return self.hidden // self.heads


GPT2 = Gpt2Config(vocab=50257, positions=1024, layers=12, heads=12, hidden=768, sequence=8, cache=256)
# The same graphs narrowed to run in milliseconds.
GPT2_MINI = Gpt2Config(vocab=1000, positions=64, layers=2, heads=4, hidden=64, sequence=8, cache=16)
EPS = 1e-5
INPUT_IDS = "input_ids"
CACHE_POSITION = "cache_position"
MASK_VALUE = float(np.finfo(np.float32).min)

# attend(b, q, k, v, name) -> the heads merged back, [1, S, hidden]; q, k, v are [1, S, hidden].
Attend = Callable[[GraphBuilder, str, str, str, str], str]


def conv1d(b: GraphBuilder, x: str, nx: int, nf: int, name: str) -> str:
    """transformers' Conv1D: addmm(bias, x.view(-1, nx), weight).view(size()[:-1] + (nf,)); weight [nx, nf]."""
    weight = b.parameter(f"{name}.weight", (nx, nf), nx**-0.5)
    bias = b.parameter(f"{name}.bias", (nf,), 0.02)
    size_out = b.size_slice(x, 0, -1, name)
    x = b.view(x, [[-1], b.size_dim(x, -1, name)], name)
    x = b.node("Gemm", [x, weight, bias], name, alpha=1.0, beta=1.0)
    return b.view(x, [size_out, [nf]], name)


def split_heads(b: GraphBuilder, x: str, c: Gpt2Config, name: str) -> str:
    """view(size()[:-1] + (heads, d)): [1, S, heads, d], before its permute."""
    return b.view(x, [b.size_slice(x, 0, -1, name), [c.heads, c.head_width]], name)


def merge_heads(b: GraphBuilder, x: str, c: Gpt2Config, name: str) -> str:
    """[1, heads, S, d] -> permute(0, 2, 1, 3).view(size()[:-2] + (hidden,))."""
    x = b.transpose(x, (0, 2, 1, 3), name)
    return b.view(x, [b.size_slice(x, 0, -2, name), [c.hidden]], name)


def causal_attention(c: Gpt2Config) -> Attend:
    """GPT2Attention._attn over the step's own tokens, masked by the layer's lower-triangular buffer."""

    def attend(b: GraphBuilder, q: str, k: str, v: str, name: str) -> str:
        q, k, v = (split_heads(b, t, c, name) for t in (q, k, v))
        query_length, key_length = b.size_dim(q, -3, name), b.size_dim(k, -3, name)
        # The exporter merges the key's transpose(-1, -2) into its permute.
        q, k, v = (
            b.transpose(t, p, name) for t, p in ((q, (0, 2, 1, 3)), (k, (0, 2, 3, 1)), (v, (0, 2, 1, 3)))
        )
        scores = b.node(
            "Div", [b.node("MatMul", [q, k], name), b.scalar(math.sqrt(c.head_width), name)], name
        )
        # self.bias[:, :, key_length - query_length : key_length, :key_length] of a buffer per layer.
        tril = np.tril(np.ones((c.positions, c.positions), dtype=bool))[None, None]
        causal = b.initializer(f"{name}.bias", tril)
        first = b.node("Sub", [key_length, query_length], name)
        causal = b.node("Slice", [causal, first, key_length, b.int64s([2], name), b.int64s([1], name)], name)
        zero, axis, one = b.int64s([0], name), b.int64s([3], name), b.int64s([1], name)
        causal = b.node("Slice", [causal, zero, key_length, axis, one], name)
        scores = b.node("Where", [causal, scores, b.scalar(MASK_VALUE, name)], name)
        probs = b.node("Softmax", [scores], name, axis=-1)
        return merge_heads(b, b.node("MatMul", [probs, v], name), c, name)

    return attend


def cached_attention(c: Gpt2Config, layer: int, visible: str, presents: list[str]) -> Attend:
    """One token against a static cache: StaticCache.update's index_copy_ along the positions
    (ScatterElements at cache_position), then scores over all `cache` positions, those after
    cache_position masked (`visible`); the updated cache tensors are appended to `presents`."""

    def attend(b: GraphBuilder, q: str, k: str, v: str, name: str) -> str:
        q, k, v = (b.transpose(split_heads(b, t, c, name), (0, 2, 1, 3), name) for t in (q, k, v))
        at = b.reshape(CACHE_POSITION, (1, 1, 1, 1), name)
        at = b.node("Expand", [at, b.int64s([1, c.heads, 1, c.head_width], name)], name)
        for kind, new in (("key", k), ("value", v)):
            past = f"past_key_values.{layer}.{kind}"
            presents.append(b.node("ScatterElements", [past, at, new], name, axis=2))
        present_key, present_value = presents[-2:]
        keys = b.transpose(present_key, (0, 1, 3, 2), name)
        scores = b.node(
            "Div", [b.node("MatMul", [q, keys], name), b.scalar(math.sqrt(c.head_width), name)], name
        )
        scores = b.node("Where", [visible, scores, b.scalar(MASK_VALUE, name)], name)
        probs = b.node("Softmax", [scores], name, axis=-1)
        return merge_heads(b, b.node("MatMul", [probs, present_value], name), c, name)

    return attend


def block(b: GraphBuilder, x: str, c: Gpt2Config, name: str, attend: Attend) -> str:
    qkv = conv1d(
        b, b.layer_norm(x, c.hidden, f"{name}.ln_1", EPS), c.hidden, 3 * c.hidden, f"{name}.attn.c_attn"
    )
    q, k, v = b.node_outputs("Split", [qkv, b.int64s([c.hidden] * 3, name)], 3, f"{name}.attn", axis=2)
    y = conv1d(b, attend(b, q, k, v, f"{name}.attn"), c.hidden, c.hidden, f"{name}.attn.c_proj")
    x = b.add(y, x, name)
    y = b.layer_norm(x, c.hidden, f"{name}.ln_2", EPS)
    y = conv1d(b, y, c.hidden, 4 * c.hidden, f"{name}.mlp.c_fc")
    y = conv1d(b, b.gelu_tanh(y, f"{name}.mlp.act"), 4 * c.hidden, c.hidden, f"{name}.mlp.c_proj")
    return b.add(x, y, name)


def transformer(b: GraphBuilder, c: Gpt2Config, position_ids, attends: list[Attend]) -> str:
    """GPT2LMHeadModel from input_ids to logits; `position_ids(b, length)` gives the positions' ids.
    Both graphs draw their weights in this one order, so a seed gives them the same weights."""
    scope = "transformer"
    # input_shape = input_ids.size(); input_ids = input_ids.view(-1, input_shape[-1])
    input_shape = b.node("Shape", [INPUT_IDS], scope)
    length = b.size_dim(INPUT_IDS, -1, scope)
    ids = b.view(INPUT_IDS, [[-1], length], scope)
    wte = b.parameter("transformer.wte.weight", (c.vocab, c.hidden), 0.1)
    x = b.node("Gather", [wte, ids], "transformer.wte", axis=0)
    wpe = b.parameter("transformer.wpe.weight", (c.positions, c.hidden), 0.02)
    x = b.add(x, b.node("Gather", [wpe, position_ids(b, length)], "transformer.wpe", axis=0), scope)
    for i, attend in enumerate(attends):
        x = block(b, x, c, f"transformer.h.{i}", attend)
    x = b.layer_norm(x, c.hidden, "transformer.ln_f", EPS)
    x = b.view(x, [input_shape, b.size_dim(x, -1, scope)], scope)  # view(input_shape + (hidden,))
    # lm_head shares wte: Linear(hidden, vocab, bias=False) is x @ wte^T.
    return b.node("MatMul", [x, b.transpose(wte, (1, 0), "lm_head")], "lm_head")


def gpt2_lm(c: Gpt2Config, graph_name: str, seed: int) -> onnx.ModelProto:
    """One step over `sequence` tokens, no cache: logits for every position."""

    def arange(b: GraphBuilder, length: str) -> str:
        # position_ids = torch.arange(0, input_shape[-1]).unsqueeze(0): a Range over a size.
        limit = b.node("Squeeze", [length, b.int64s([0], "transformer")], "transformer")
        ids = b.node("Range", [b.int64s(0, "transformer"), limit, b.int64s(1, "transformer")], "transformer")
        return b.node("Unsqueeze", [ids, b.int64s([0], "transformer")], "transformer")

    b = GraphBuilder(seed)
    logits = transformer(b, c, arange, [causal_attention(c)] * c.layers)
    return b.finish(
        graph_name,
        [(INPUT_IDS, TensorProto.INT64, [1, c.sequence])],
        [(logits, OUTPUT, TensorProto.FLOAT, [1, c.sequence, c.vocab])],
        f"Hugging Face GPT2LMHeadModel {graph_name} (one step of {c.sequence} tokens, no cache)",
    )


def gpt2_cached(c: Gpt2Config, graph_name: str, seed: int) -> onnx.ModelProto:
    """One decoder step with a static cache: token `input_ids` [1, 1] at `cache_position` [1]
    (0 <= position < cache), the past keys and values of every layer [1, heads, cache, d] in, the
    logits [1, 1, vocab] and the cache with this token's keys and values written in out
    (`present.N.key`, `present.N.value`). Positions after cache_position are masked, whatever
    the cache holds there."""
    b = GraphBuilder(seed)
    # The exporter's causal mask of a static cache: arange(cache) <= cache_position.
    visible = b.node(
        "LessOrEqual", [b.int64s(list(range(c.cache)), "transformer"), CACHE_POSITION], "transformer"
    )
    presents: list[str] = []
    attends = [cached_attention(c, i, visible, presents) for i in range(c.layers)]
    logits = transformer(b, c, lambda b, _: b.node("Unsqueeze", [CACHE_POSITION, b.int64s([0])]), attends)
    cache_shape = [1, c.heads, c.cache, c.head_width]
    past = [f"past_key_values.{i}.{kind}" for i in range(c.layers) for kind in ("key", "value")]
    return b.finish(
        graph_name,
        [
            (INPUT_IDS, TensorProto.INT64, [1, 1]),
            (CACHE_POSITION, TensorProto.INT64, [1]),
            *((name, TensorProto.FLOAT, cache_shape) for name in past),
        ],
        [
            (logits, OUTPUT, TensorProto.FLOAT, [1, 1, c.vocab]),
            *(
                (tensor, name.replace("past_key_values", "present"), TensorProto.FLOAT, cache_shape)
                for tensor, name in zip(presents, past, strict=True)
            ),
        ],
        f"Hugging Face GPT2LMHeadModel {graph_name} (one token, a static cache of {c.cache} positions)",
    )


def gpt2(seed: int) -> onnx.ModelProto:
    return gpt2_lm(GPT2, "gpt2", seed)


def gpt2_mini(seed: int) -> onnx.ModelProto:
    return gpt2_lm(GPT2_MINI, "gpt2_mini", seed)


def gpt2_decoder(seed: int) -> onnx.ModelProto:
    return gpt2_cached(GPT2, "gpt2_decoder", seed)


def gpt2_mini_decoder(seed: int) -> onnx.ModelProto:
    return gpt2_cached(GPT2_MINI, "gpt2_mini_decoder", seed)
