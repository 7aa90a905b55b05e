"""torchvision GoogLeNet (Inception v1), aux_logits=False, transform_input=False."""

from __future__ import annotations

import onnx

from flexnnd.zoo.builder import INPUT, NUM_CLASSES, GraphBuilder

# torchvision's BasicConv2d uses BatchNorm2d(eps=0.001).
EPS = 1e-3

# name -> Inception(in, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj); "maxpool*" are ceil-mode pools.
LAYOUT = (
    ("inception3a", (192, 64, 96, 128, 16, 32, 32)),
    ("inception3b", (256, 128, 128, 192, 32, 96, 64)),
    ("maxpool3", (3, 2)),
    ("inception4a", (480, 192, 96, 208, 16, 48, 64)),
    ("inception4b", (512, 160, 112, 224, 24, 64, 64)),
    ("inception4c", (512, 128, 128, 256, 24, 64, 64)),
    ("inception4d", (512, 112, 144, 288, 32, 64, 64)),
    ("inception4e", (528, 256, 160, 320, 32, 128, 128)),
    ("maxpool4", (2, 2)),
    ("inception5a", (832, 256, 160, 320, 32, 128, 128)),
    ("inception5b", (832, 384, 192, 384, 48, 128, 128)),
)


def basic_conv(b: GraphBuilder, x: str, cin: int, cout: int, kernel: int, name: str, **conv_kw) -> str:
    """BasicConv2d: conv (no bias), BN(eps=0.001), ReLU."""
    x = b.conv(x, cin, cout, kernel, f"{name}.conv", **conv_kw)
    return b.relu(b.batch_norm(x, cout, f"{name}.bn", eps=EPS), name)


def inception(b: GraphBuilder, x: str, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj, name) -> str:
    branch1 = basic_conv(b, x, cin, ch1x1, 1, f"{name}.branch1")
    branch2 = basic_conv(b, x, cin, ch3x3red, 1, f"{name}.branch2.0")
    branch2 = basic_conv(b, branch2, ch3x3red, ch3x3, 3, f"{name}.branch2.1", padding=1)
    branch3 = basic_conv(b, x, cin, ch5x5red, 1, f"{name}.branch3.0")
    # torchvision's "5x5" branch really has a 3x3 kernel (a known quirk kept for its weights).
    branch3 = basic_conv(b, branch3, ch5x5red, ch5x5, 3, f"{name}.branch3.1", padding=1)
    branch4 = b.max_pool(x, 3, 1, 1, ceil_mode=True, scope=f"{name}.branch4.0")
    branch4 = basic_conv(b, branch4, cin, pool_proj, 1, f"{name}.branch4.1")
    return b.concat([branch1, branch2, branch3, branch4], name)


def googlenet(seed: int) -> onnx.ModelProto:
    b = GraphBuilder(seed)
    x = basic_conv(b, INPUT, 3, 64, 7, "conv1", stride=2, padding=3)
    x = b.max_pool(x, 3, 2, ceil_mode=True, scope="maxpool1")
    x = basic_conv(b, x, 64, 64, 1, "conv2")
    x = basic_conv(b, x, 64, 192, 3, "conv3", padding=1)
    x = b.max_pool(x, 3, 2, ceil_mode=True, scope="maxpool2")
    for name, args in LAYOUT:
        if name.startswith("maxpool"):
            x = b.max_pool(x, *args, ceil_mode=True, scope=name)
        else:
            x = inception(b, x, *args, name)
    x = b.flatten(b.global_average_pool(x, "avgpool"))
    x = b.dropout(x, 0.2, "dropout")
    x = b.linear(x, 1024, NUM_CLASSES, "fc")
    return b.model(x, "googlenet")
