"""torchvision's VisionTransformer (ViT-B/16 at 384x384), as the exporter writes it at opset 17.

nn.MultiheadAttention comes out of the exporter's non-fast path: the packed in-projection as
MatMul+Add, split into q, k, v by Reshape/Unsqueeze/Transpose/Squeeze/Gather, heads by
Reshape/Transpose, scaled_dot_product_attention as Mul/MatMul/Softmax/MatMul with sqrt(scale) on
both operands, and the out-projection as a Gemm on the [tokens, width] view. nn.GELU is its erf form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from flexnnd.zoo.builder import INPUT, OUTPUT, GraphBuilder


@dataclass(frozen=True)
class VitConfig:
    image_size: int
    patch_size: int
    layers: int
    heads: int
    hidden: int
    mlp: int
    classes: int

    @property
    def tokens(self) -> int:
        """Patches plus the class token: 577 for ViT-B/16 at 384."""
        return (self.image_size // self.patch_size) ** 2 + 1


VIT_B_16_384 = VitConfig(
    image_size=384, patch_size=16, layers=12, heads=12, hidden=768, mlp=3072, classes=1000
)
# The same graph narrowed to run in milliseconds: 17 tokens, 2 layers of 64 wide.
VIT_MINI = VitConfig(image_size=64, patch_size=16, layers=2, heads=4, hidden=64, mlp=128, classes=10)
EPS = 1e-6


def self_attention(b: GraphBuilder, x: str, c: VitConfig, name: str) -> str:
    """nn.MultiheadAttention(batch_first=True)(x, x, x, need_weights=False) on [1, tokens, hidden]."""
    n, e, h = c.tokens, c.hidden, c.heads
    d = e // h
    x = b.transpose(x, (1, 0, 2), name)  # batch_first: to [tokens, 1, hidden]
    qkv = b.matmul_linear(x, e, 3 * e, f"{name}.in_proj")
    # _in_projection_packed: unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2)
    qkv = b.reshape(qkv, (n, 1, 3, e), name)
    qkv = b.node("Unsqueeze", [qkv, b.int64s([0], name)], name)
    qkv = b.transpose(qkv, (3, 1, 2, 0, 4), name)
    qkv = b.node("Squeeze", [qkv, b.int64s([3], name)], name)
    heads = []
    for i in range(3):
        part = b.node("Gather", [qkv, b.int64s(i, name)], name, axis=0)
        part = b.transpose(b.reshape(part, (n, h, d), name), (1, 0, 2), name)
        heads.append(b.reshape(part, (1, h, n, d), name))
    q, k, v = heads
    root_scale = b.scalar(math.sqrt(1.0 / math.sqrt(d)), name)
    q = b.node("Mul", [q, root_scale], name)
    k = b.node("Mul", [b.transpose(k, (0, 1, 3, 2), name), root_scale], name)
    scores = b.node("Softmax", [b.node("MatMul", [q, k], name)], name, axis=-1)
    out = b.node("MatMul", [scores, v], name)
    out = b.reshape(b.transpose(out, (2, 0, 1, 3), name), (n, e), name)
    out = b.linear(out, e, e, f"{name}.out_proj")
    return b.transpose(b.reshape(out, (n, 1, e), name), (1, 0, 2), name)


def encoder_block(b: GraphBuilder, x: str, c: VitConfig, name: str) -> str:
    y = b.layer_norm(x, c.hidden, f"{name}.ln_1", EPS)
    x = b.add(self_attention(b, y, c, f"{name}.self_attention"), x, name)
    y = b.layer_norm(x, c.hidden, f"{name}.ln_2", EPS)
    y = b.gelu_erf(b.matmul_linear(y, c.hidden, c.mlp, f"{name}.mlp.0"), f"{name}.mlp.1")
    y = b.matmul_linear(y, c.mlp, c.hidden, f"{name}.mlp.3")
    return b.add(x, y, name)


def vision_transformer(c: VitConfig, graph_name: str, seed: int) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    side = c.image_size // c.patch_size
    # conv_proj: patches of 3*16*16 values, He-normal like every zoo conv, with a bias.
    x = b.conv(INPUT, 3, c.hidden, c.patch_size, "conv_proj", stride=c.patch_size, bias=True)
    n = b.size_dim(INPUT, 0)  # n, c, h, w = x.shape
    x = b.transpose(b.view(x, [n, [c.hidden, side * side]]), (0, 2, 1))
    # class_token.expand(n, -1, -1), then torch.cat([class_token, x], dim=1); the exporter makes
    # the -1 sizes 1, which broadcasting keeps.
    token = b.parameter("class_token", (1, 1, c.hidden), 0.1)
    token = b.node("Expand", [token, b.node("Concat", [n, b.int64s([1, 1])], axis=0)])
    x = b.node("Concat", [token, x], axis=1)
    x = b.add(x, b.parameter("encoder.pos_embedding", (1, c.tokens, c.hidden), 0.1), "encoder")
    for i in range(c.layers):
        x = encoder_block(b, x, c, f"encoder.layers.encoder_layer_{i}")
    x = b.layer_norm(x, c.hidden, "encoder.ln", EPS)
    x = b.node("Gather", [x, b.int64s(0)], axis=1)  # x[:, 0]: the class token
    x = b.linear(x, c.hidden, c.classes, "heads.head")
    return b.finish(
        graph_name,
        [(INPUT, TensorProto.FLOAT, [1, 3, c.image_size, c.image_size])],
        [(x, OUTPUT, TensorProto.FLOAT, [1, c.classes])],
        f"torchvision {graph_name} (image_size={c.image_size})",
    )


def vit_b_16(seed: int) -> onnx.ModelProto:
    return vision_transformer(VIT_B_16_384, "vit_b_16", seed)


def vit_mini(seed: int) -> onnx.ModelProto:
    return vision_transformer(VIT_MINI, "vit_mini", seed)
