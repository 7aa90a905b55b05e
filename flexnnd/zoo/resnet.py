"""torchvision ResNet-18, -50 and -152 (v1.5: a bottleneck strides in its 3x3 conv)."""

from __future__ import annotations

import numpy as np
import onnx

from flexnnd.zoo.builder import INPUT, NUM_CLASSES, GraphBuilder

# The last BN of a residual branch starts small (zero_init_residual, but not zero): the sums stay bounded.
RESIDUAL_GAMMA = (0.1, 0.3)


def _conv_bn(
    b: GraphBuilder,
    x: str,
    cin: int,
    cout: int,
    kernel: int,
    conv: str,
    bn: str,
    stride=1,
    padding=0,
    **bn_kw,
) -> str:
    return b.batch_norm(b.conv(x, cin, cout, kernel, conv, stride, padding), cout, bn, **bn_kw)


def _downsample(b: GraphBuilder, x: str, inplanes: int, outplanes: int, stride: int, name: str) -> str:
    if stride == 1 and inplanes == outplanes:
        return x
    return _conv_bn(b, x, inplanes, outplanes, 1, f"{name}.downsample.0", f"{name}.downsample.1", stride)


def basic_block(b: GraphBuilder, x: str, inplanes: int, planes: int, stride: int, name: str) -> str:
    out = _conv_bn(b, x, inplanes, planes, 3, f"{name}.conv1", f"{name}.bn1", stride, 1)
    out = b.relu(out, f"{name}.relu")
    out = _conv_bn(b, out, planes, planes, 3, f"{name}.conv2", f"{name}.bn2", 1, 1, gamma=RESIDUAL_GAMMA)
    identity = _downsample(b, x, inplanes, planes, stride, name)
    return b.relu(b.add(out, identity, name), f"{name}.relu")


def bottleneck(b: GraphBuilder, x: str, inplanes: int, planes: int, stride: int, name: str) -> str:
    out = b.relu(_conv_bn(b, x, inplanes, planes, 1, f"{name}.conv1", f"{name}.bn1"), f"{name}.relu")
    out = _conv_bn(b, out, planes, planes, 3, f"{name}.conv2", f"{name}.bn2", stride, 1)
    out = b.relu(out, f"{name}.relu")
    out = _conv_bn(b, out, planes, planes * 4, 1, f"{name}.conv3", f"{name}.bn3", gamma=RESIDUAL_GAMMA)
    identity = _downsample(b, x, inplanes, planes * 4, stride, name)
    return b.relu(b.add(out, identity, name), f"{name}.relu")


# depth -> (block, expansion, blocks per stage)
ARCHITECTURES = {
    18: (basic_block, 1, (2, 2, 2, 2)),
    50: (bottleneck, 4, (3, 4, 6, 3)),
    152: (bottleneck, 4, (3, 8, 36, 3)),
}


def _view_batch_minus_one(b: GraphBuilder, x: str) -> str:
    """x.view(x.size(0), -1) as the exporter writes it: Shape→Gather→Unsqueeze→Concat→Reshape."""
    shape = b.node("Shape", [x])
    batch = b.node("Gather", [shape, b.constant(np.array(0, dtype=np.int64))], axis=0)
    batch = b.node("Unsqueeze", [batch, b.constant(np.array([0], dtype=np.int64))])
    target = b.node("Concat", [batch, b.constant(np.array([-1], dtype=np.int64))], axis=0)
    return b.node("Reshape", [x, target])


def resnet(depth: int, seed: int) -> onnx.ModelProto:
    block, expansion, stages = ARCHITECTURES[depth]
    b = GraphBuilder(seed)
    x = _conv_bn(b, INPUT, 3, 64, 7, "conv1", "bn1", stride=2, padding=3)
    x = b.max_pool(b.relu(x, "relu"), 3, 2, 1, scope="maxpool")
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), stages, strict=True), start=1):
        for i in range(blocks):
            stride = 2 if stage > 1 and i == 0 else 1
            x = block(b, x, inplanes, planes, stride, f"layer{stage}.{i}")
            inplanes = planes * expansion
    x = b.global_average_pool(x, "avgpool")
    # ResNet-50 keeps the view() chain so that importers must constant-fold it; ResNet-18 has Flatten.
    x = _view_batch_minus_one(b, x) if depth == 50 else b.flatten(x)
    x = b.linear(x, inplanes, NUM_CLASSES, "fc")
    return b.model(x, f"resnet{depth}")


def resnet18(seed: int) -> onnx.ModelProto:
    return resnet(18, seed)


def resnet50(seed: int) -> onnx.ModelProto:
    return resnet(50, seed)


def resnet152(seed: int) -> onnx.ModelProto:
    return resnet(152, seed)
