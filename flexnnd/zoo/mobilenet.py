"""torchvision MobileNetV2, width 1.0."""

from __future__ import annotations

import onnx

from flexnnd.zoo.builder import INPUT, NUM_CLASSES, GraphBuilder

# (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
LAST_CHANNELS = 1280


def conv_bn_relu6(
    b: GraphBuilder, x: str, cin: int, cout: int, kernel: int, name: str, stride: int = 1, groups: int = 1
) -> str:
    """torchvision's Conv2dNormActivation: conv (no bias), BN, ReLU6; modules .0, .1, .2."""
    x = b.conv(x, cin, cout, kernel, f"{name}.0", stride, (kernel - 1) // 2, groups)
    return b.relu6(b.batch_norm(x, cout, f"{name}.1"), f"{name}.2")


def inverted_residual(b: GraphBuilder, x: str, inp: int, oup: int, stride: int, t: int, name: str) -> str:
    hidden = inp * t
    out, k = x, 0
    if t != 1:
        out = conv_bn_relu6(b, out, inp, hidden, 1, f"{name}.conv.{k}")
        k += 1
    out = conv_bn_relu6(b, out, hidden, hidden, 3, f"{name}.conv.{k}", stride, groups=hidden)
    out = b.conv(out, hidden, oup, 1, f"{name}.conv.{k + 1}")
    out = b.batch_norm(out, oup, f"{name}.conv.{k + 2}")
    if stride == 1 and inp == oup:
        return b.add(x, out, name)
    return out


def mobilenet_v2(seed: int) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    x = conv_bn_relu6(b, INPUT, 3, 32, 3, "features.0", stride=2)
    inp, index = 32, 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            x = inverted_residual(b, x, inp, c, s if i == 0 else 1, t, f"features.{index}")
            inp, index = c, index + 1
    x = conv_bn_relu6(b, x, inp, LAST_CHANNELS, 1, f"features.{index}")
    x = b.flatten(b.global_average_pool(x))
    x = b.dropout(x, 0.2, "classifier.0")
    x = b.linear(x, LAST_CHANNELS, NUM_CLASSES, "classifier.1")
    return b.model(x, "mobilenet_v2")
