"""A small ONNX graph builder that emits nodes the way the PyTorch exporter does, with seeded weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
INPUT = "input"
OUTPUT = "logits"
NUM_CLASSES = 1000
IMAGE_SIZE = 224


class GraphBuilder:
    """Adds Conv/BatchNormalization/Relu/... nodes with unique names and keeps their initializers.

    Every method takes the name of its input tensor and returns the name of its output tensor.
    Weight names follow torchvision's state_dict ("layer1.0.conv1.weight"), so a model reads like
    the module it copies.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        # Nodes and weights go straight into the final ModelProto: make_graph and make_model would
        # each copy VGG-16's 553 MB of weights once more.
        self._model = onnx.ModelProto()
        self.graph = self._model.graph
        self._used_names: set[str] = set()

    # -- plumbing -------------------------------------------------------------------------------

    def _unique(self, name: str) -> str:
        candidate, k = name, 0
        while candidate in self._used_names:
            k += 1
            candidate = f"{name}_{k}"
        self._used_names.add(candidate)
        return candidate

    def node(self, op_type: str, inputs: list[str], scope: str = "", **attrs) -> str:
        """Append one node named like the exporter ("/layer1/0/conv1/Conv"); return its output."""
        path = "/".join(scope.split(".")) if scope else ""
        name = self._unique(f"/{path}/{op_type}" if path else f"/{op_type}")
        output = f"{name}_output_0"
        self.graph.node.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def initializer(self, name: str, array: np.ndarray) -> str:
        """A graph initializer; numpy_helper.from_array's fields, written in place to avoid a copy."""
        tensor = self.graph.initializer.add()
        tensor.name = self._unique(name)
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = numpy_helper.tobytes_little_endian(array)
        return tensor.name

    def constant(self, array: np.ndarray, scope: str = "") -> str:
        """A Constant node, as the exporter emits for literals like view(n, -1)'s -1."""
        return self.node("Constant", [], scope, value=numpy_helper.from_array(array))

    def _normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        # float32 straight from the generator and scaled in place: VGG-16 has 138M weights.
        values = self.rng.standard_normal(shape, dtype=np.float32)
        values *= np.float32(std)
        return values

    def _uniform(self, size: int, low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, size).astype(np.float32)

    # -- layers ---------------------------------------------------------------------------------

    def conv(
        self,
        x: str,
        in_channels: int,
        out_channels: int,
        kernel: int,
        name: str,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = False,
    ) -> str:
        """nn.Conv2d, He-normal (fan_in) weights so a ReLU network keeps its activation scale."""
        fan_in = in_channels // groups * kernel * kernel
        weight = self._normal((out_channels, in_channels // groups, kernel, kernel), (2.0 / fan_in) ** 0.5)
        inputs = [x, self.initializer(f"{name}.weight", weight)]
        if bias:
            inputs.append(self.initializer(f"{name}.bias", self._normal((out_channels,), 0.05)))
        return self.node(
            "Conv",
            inputs,
            name,
            dilations=[1, 1],
            group=groups,
            kernel_shape=[kernel, kernel],
            pads=[padding] * 4,
            strides=[stride, stride],
        )

    def batch_norm(
        self, x: str, channels: int, name: str, eps: float = 1e-5, gamma: tuple[float, float] = (0.5, 1.5)
    ) -> str:
        """nn.BatchNorm2d in eval mode, with running statistics that are not the identity.

        gamma ~ U(gamma) and running_var ~ U(0.5, 2) make E[gamma²/var] ≈ 1 for the default range,
        so the scale of the activations neither grows nor shrinks with depth.
        """
        weight = self._uniform(channels, *gamma)
        bias = self._normal((channels,), 0.1)
        running_mean = self._normal((channels,), 0.1)
        running_var = self._uniform(channels, 0.5, 2.0)
        inputs = [
            x,
            self.initializer(f"{name}.weight", weight),
            self.initializer(f"{name}.bias", bias),
            self.initializer(f"{name}.running_mean", running_mean),
            self.initializer(f"{name}.running_var", running_var),
        ]
        return self.node("BatchNormalization", inputs, name, epsilon=eps, momentum=0.9)

    def linear(self, x: str, in_features: int, out_features: int, name: str, gain: float = 1.0) -> str:
        """nn.Linear as Gemm(transB=1); weight is [out, in] like torch's."""
        weight = self._normal((out_features, in_features), (gain / in_features) ** 0.5)
        bias = self._normal((out_features,), 0.01)
        inputs = [x, self.initializer(f"{name}.weight", weight), self.initializer(f"{name}.bias", bias)]
        return self.node("Gemm", inputs, name, alpha=1.0, beta=1.0, transB=1)

    def relu(self, x: str, scope: str = "") -> str:
        return self.node("Relu", [x], scope)

    def relu6(self, x: str, scope: str = "") -> str:
        """nn.ReLU6 as the exporter writes it from opset 11 on: Clip with min and max as inputs."""
        low = self.shared_scalar("clip_min", 0.0)
        high = self.shared_scalar("clip_max", 6.0)
        return self.node("Clip", [x, low, high], scope)

    def shared_scalar(self, name: str, value: float) -> str:
        """One 0-d float initializer per name, reused by every node that needs it."""
        if name not in self._used_names:
            self.initializer(name, np.array(value, dtype=np.float32))
        return name

    def max_pool(
        self, x: str, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False, scope: str = ""
    ) -> str:
        return self.node(
            "MaxPool",
            [x],
            scope,
            ceil_mode=int(ceil_mode),
            kernel_shape=[kernel, kernel],
            pads=[padding] * 4,
            strides=[stride, stride],
        )

    def global_average_pool(self, x: str, scope: str = "") -> str:
        """AdaptiveAvgPool2d((1, 1))."""
        return self.node("GlobalAveragePool", [x], scope)

    def flatten(self, x: str, scope: str = "") -> str:
        """torch.flatten(x, 1)."""
        return self.node("Flatten", [x], scope, axis=1)

    def dropout(self, x: str, ratio: float, scope: str = "") -> str:
        """nn.Dropout; an identity at inference (training_mode defaults to false)."""
        return self.node("Dropout", [x, self.shared_scalar(f"dropout_ratio_{ratio:g}", ratio)], scope)

    def add(self, a: str, b: str, scope: str = "") -> str:
        return self.node("Add", [a, b], scope)

    def concat(self, xs: list[str], scope: str = "") -> str:
        """torch.cat(xs, 1)."""
        return self.node("Concat", xs, scope, axis=1)

    # -- result ---------------------------------------------------------------------------------

    def model(self, output: str, graph_name: str) -> onnx.ModelProto:
        """Finish the model: input [batch,3,224,224] float32, output "logits" [batch,1000]."""
        # The last node writes "logits" itself, as an exporter names the graph output.
        last = self.graph.node[-1]
        if list(last.output) != [output]:
            raise ValueError(f"the graph output {output!r} is not the last node's output")
        last.output[0] = OUTPUT
        self.graph.name = graph_name
        self.graph.input.append(
            helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])
        )
        self.graph.output.append(
            helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", NUM_CLASSES])
        )
        model = self._model
        model.ir_version = IR_VERSION
        model.opset_import.append(helper.make_opsetid("", OPSET))
        model.producer_name = "flexnnd.zoo"
        model.doc_string = f"torchvision {graph_name} with seeded random weights (seed {self.seed})"
        helper.set_model_props(model, {"flexnn.zoo.model": graph_name, "flexnn.zoo.seed": str(self.seed)})
        return model
