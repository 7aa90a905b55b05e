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
        return self.node_outputs(op_type, inputs, 1, scope, **attrs)[0]

    def node_outputs(
        self, op_type: str, inputs: list[str], count: int, scope: str = "", **attrs
    ) -> list[str]:
        """Append one node with `count` outputs ("..._output_0", "..._output_1", ...)."""
        path = "/".join(scope.split(".")) if scope else ""
        name = self._unique(f"/{path}/{op_type}" if path else f"/{op_type}")
        outputs = [f"{name}_output_{i}" for i in range(count)]
        self.graph.node.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))
        return outputs

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

    # -- transformer layers (as the exporter writes them from torch.nn and Hugging Face) ---------

    def scalar(self, value: float, scope: str = "") -> str:
        """A 0-d float Constant, as the exporter writes a Python float in an expression."""
        return self.constant(np.array(value, dtype=np.float32), scope)

    def int64s(self, values, scope: str = "") -> str:
        """An int64 Constant: a shape, axes, or indices the exporter folded to a literal."""
        return self.constant(np.array(values, dtype=np.int64), scope)

    def layer_norm(self, x: str, width: int, name: str, eps: float) -> str:
        """nn.LayerNorm over the last axis: opset 17's LayerNormalization, with a non-trivial affine."""
        weight = self._uniform(width, 0.8, 1.2)
        bias = self._normal((width,), 0.05)
        inputs = [x, self.initializer(f"{name}.weight", weight), self.initializer(f"{name}.bias", bias)]
        return self.node("LayerNormalization", inputs, name, axis=-1, epsilon=eps)

    def matmul_linear(
        self,
        x: str,
        in_features: int,
        out_features: int,
        name: str,
        bias: bool = True,
        std: float | None = None,
    ) -> str:
        """nn.Linear on a 3-D input: MatMul by the weight, then Add the bias.

        The exporter folds the weight's transpose, so the initializer is [in, out]; std defaults to
        1/sqrt(in), which keeps a unit-scale input at unit scale."""
        weight = self._normal((in_features, out_features), std or in_features**-0.5)
        x = self.node("MatMul", [x, self.initializer(f"{name}.weight", weight)], name)
        if not bias:
            return x
        return self.node(
            "Add", [self.initializer(f"{name}.bias", self._normal((out_features,), 0.02)), x], name
        )

    def parameter(self, name: str, shape: tuple[int, ...], std: float) -> str:
        """A learned tensor used as it is (an nn.Embedding's table, a position embedding)."""
        return self.initializer(name, self._normal(shape, std))

    def gelu_erf(self, x: str, scope: str = "") -> str:
        """nn.GELU() (exact): x * 0.5 * (1 + erf(x / sqrt 2)), written out as the exporter does."""
        inner = self.node("Div", [x, self.scalar(1.4142135381698608, scope)], scope)
        inner = self.node("Add", [self.node("Erf", [inner], scope), self.scalar(1.0, scope)], scope)
        return self.node("Mul", [self.node("Mul", [x, inner], scope), self.scalar(0.5, scope)], scope)

    def gelu_tanh(self, x: str, scope: str = "") -> str:
        """Hugging Face's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as exported."""
        half = self.node("Mul", [self.scalar(0.5, scope), x], scope)
        cube = self.node("Pow", [x, self.scalar(3.0, scope)], scope)
        inner = self.node("Add", [x, self.node("Mul", [self.scalar(0.044715, scope), cube], scope)], scope)
        inner = self.node("Mul", [self.scalar(0.7978845608028654, scope), inner], scope)
        inner = self.node("Add", [self.scalar(1.0, scope), self.node("Tanh", [inner], scope)], scope)
        return self.node("Mul", [half, inner], scope)

    def reshape(self, x: str, shape, scope: str = "") -> str:
        """view/reshape with the target shape the exporter folded to a constant (a static export)."""
        return self.node("Reshape", [x, self.int64s(list(shape), scope)], scope)

    def transpose(self, x: str, perm, scope: str = "") -> str:
        return self.node("Transpose", [x], scope, perm=list(perm))

    def size_slice(self, x: str, start: int, end: int, scope: str = "") -> str:
        """x.size()[start:end] as the exporter writes it: Shape, then Slice, a 1-D int64 tensor."""
        shape = self.node("Shape", [x], scope)
        bounds = [self.int64s([start], scope), self.int64s([end], scope), self.int64s([0], scope)]
        return self.node("Slice", [shape, *bounds], scope)

    def size_dim(self, x: str, axis: int, scope: str = "") -> str:
        """x.size(axis) made a 1-element int64 tensor to concatenate: Shape, Gather, Unsqueeze."""
        size = self.node("Gather", [self.node("Shape", [x], scope), self.int64s(axis, scope)], scope, axis=0)
        return self.node("Unsqueeze", [size, self.int64s([0], scope)], scope)

    def view(self, x: str, parts: list, scope: str = "") -> str:
        """x.view(*sizes) with sizes read off tensors: Concat of 1-D int64 parts (tensor names, or
        lists of literals), then Reshape; shape arithmetic an importer must fold."""
        parts = [p if isinstance(p, str) else self.int64s(list(p), scope) for p in parts]
        return self.node("Reshape", [x, self.node("Concat", parts, scope, axis=0)], scope)

    # -- result ---------------------------------------------------------------------------------

    def model(self, output: str, graph_name: str) -> onnx.ModelProto:
        """Finish an image classifier: input [batch,3,224,224] float32, output "logits" [batch,1000]."""
        # The last node writes "logits" itself, as an exporter names the graph output.
        last = self.graph.node[-1]
        if list(last.output) != [output]:
            raise ValueError(f"the graph output {output!r} is not the last node's output")
        return self.finish(
            graph_name,
            [(INPUT, TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
            [(output, OUTPUT, TensorProto.FLOAT, ["batch", NUM_CLASSES])],
            f"torchvision {graph_name}",
        )

    def finish(
        self,
        graph_name: str,
        inputs: list[tuple[str, int, list]],
        outputs: list[tuple[str, str, int, list]],
        origin: str,
    ) -> onnx.ModelProto:
        """The model: `inputs` as (name, element type, shape); `outputs` as (tensor, graph output
        name, element type, shape), each tensor renamed where it is written and read."""
        renamed = {tensor: name for tensor, name, _, _ in outputs}
        for node in self.graph.node:
            for i, name in enumerate(node.input):
                node.input[i] = renamed.get(name, name)
            for i, name in enumerate(node.output):
                node.output[i] = renamed.get(name, name)
        self.graph.name = graph_name
        for name, elem_type, shape in inputs:
            self.graph.input.append(helper.make_tensor_value_info(name, elem_type, shape))
        for _, name, elem_type, shape in outputs:
            self.graph.output.append(helper.make_tensor_value_info(name, elem_type, shape))
        model = self._model
        model.ir_version = IR_VERSION
        model.opset_import.append(helper.make_opsetid("", OPSET))
        model.producer_name = "flexnnd.zoo"
        model.doc_string = f"{origin} with seeded random weights (seed {self.seed})"
        helper.set_model_props(model, {"flexnn.zoo.model": graph_name, "flexnn.zoo.seed": str(self.seed)})
        return model
