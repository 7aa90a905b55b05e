"""torchvision SqueezeNet 1.1: Fire modules, ceil-mode max pools, a convolutional classifier."""

from __future__ import annotations

import onnx

from flexnnd.zoo.builder import INPUT, NUM_CLASSES, GraphBuilder

# features index -> Fire(inplanes, squeeze, expand1x1, expand3x3); the other indices are pools.
FIRES = {
    3: (64, 16, 64, 64),
    4: (128, 16, 64, 64),
    6: (128, 32, 128, 128),
    7: (256, 32, 128, 128),
    9: (256, 48, 192, 192),
    10: (384, 48, 192, 192),
    11: (384, 64, 256, 256),
    12: (512, 64, 256, 256),
}
POOLS = (2, 5, 8)


def fire(b: GraphBuilder, x: str, inplanes: int, squeeze: int, e1: int, e3: int, name: str) -> str:
    s = b.relu(b.conv(x, inplanes, squeeze, 1, f"{name}.squeeze", bias=True), f"{name}.squeeze_activation")
    left = b.relu(b.conv(s, squeeze, e1, 1, f"{name}.expand1x1", bias=True), f"{name}.expand1x1_activation")
    right = b.conv(s, squeeze, e3, 3, f"{name}.expand3x3", padding=1, bias=True)
    right = b.relu(right, f"{name}.expand3x3_activation")
    return b.concat([left, right], name)


def squeezenet1_1(seed: int) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    x = b.relu(b.conv(INPUT, 3, 64, 3, "features.0", stride=2, bias=True), "features.1")
    for index in range(2, 13):
        if index in POOLS:
            x = b.max_pool(x, 3, 2, ceil_mode=True, scope=f"features.{index}")
        else:
            x = fire(b, x, *FIRES[index], f"features.{index}")
    x = b.dropout(x, 0.5, "classifier.0")
    x = b.relu(b.conv(x, 512, NUM_CLASSES, 1, "classifier.1", bias=True), "classifier.2")
    x = b.global_average_pool(x, "classifier.3")
    return b.model(b.flatten(x), "squeezenet1_1")
