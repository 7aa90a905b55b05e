"""torchvision VGG-16 and VGG-19 (configurations "D" and "E", no BatchNorm)."""

from __future__ import annotations

import onnx

from flexnnd.zoo.builder import INPUT, NUM_CLASSES, GraphBuilder

# Output channels of each 3x3 conv; "M" is a 2x2 max pool.
CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
CFG_E = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)
HIDDEN = 4096


def vgg16(seed: int) -> onnx.ModelProto:
    return vgg(CFG_D, "vgg16", seed)


def vgg19(seed: int) -> onnx.ModelProto:
    return vgg(CFG_E, "vgg19", seed)


def vgg(cfg: tuple, graph_name: str, seed: int) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    x, channels = INPUT, 3
    for index, layer in enumerate(cfg):
        # torchvision numbers conv, relu and pool modules alike, so a conv takes two indices.
        offset = sum(2 if v != "M" else 1 for v in cfg[:index])
        if layer == "M":
            x = b.max_pool(x, 2, 2, scope=f"features.{offset}")
        else:
            x = b.conv(x, channels, layer, 3, f"features.{offset}", padding=1, bias=True)
            x = b.relu(x, f"features.{offset + 1}")
            channels = layer
    # AdaptiveAvgPool2d((7, 7)) is the identity on the 7x7 map of a 224x224 input, so it is left out.
    x = b.flatten(x)
    # gain 2: the hidden Linear layers feed a ReLU, like the convs (He initialisation).
    x = b.relu(b.linear(x, channels * 7 * 7, HIDDEN, "classifier.0", gain=2.0), "classifier.1")
    x = b.dropout(x, 0.5, "classifier.2")
    x = b.relu(b.linear(x, HIDDEN, HIDDEN, "classifier.3", gain=2.0), "classifier.4")
    x = b.dropout(x, 0.5, "classifier.5")
    x = b.linear(x, HIDDEN, NUM_CLASSES, "classifier.6")
    return b.model(x, graph_name)
