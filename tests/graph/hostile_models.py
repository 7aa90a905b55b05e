"""Small ONNX models for the hostile-input tests and the fuzzer (built in code, fixed seed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import make_model


def small_model() -> onnx.ModelProto:
    """Conv+BN+Relu, MaxPool, the exporters' Shape→Gather→Unsqueeze→Concat→Reshape chain, Gemm, Softmax."""
    rng = np.random.default_rng(11)
    f32 = np.float32
    inits = [
        ("w", rng.standard_normal((4, 3, 3, 3)).astype(f32)),
        ("b", rng.standard_normal(4).astype(f32)),
        ("s", rng.uniform(0.5, 1.5, 4).astype(f32)),
        ("t", rng.standard_normal(4).astype(f32)),
        ("m", (rng.standard_normal(4) * 0.1).astype(f32)),
        ("v", rng.uniform(0.5, 2.0, 4).astype(f32)),
        ("zero", np.array(0, dtype=np.int64)),
        ("axes", np.array([0], dtype=np.int64)),
        ("minus1", np.array([-1], dtype=np.int64)),
        ("fc_w", rng.standard_normal((10, 64)).astype(f32)),
        ("fc_b", rng.standard_normal(10).astype(f32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["n"], epsilon=1e-5, name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Identity", ["p"], ["p2"], name="ident"),
        helper.make_node("Shape", ["p2"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0, name="gather"),
        helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"], name="unsqueeze"),
        helper.make_node("Concat", ["batch1", "minus1"], ["flat_shape"], axis=0, name="concat"),
        helper.make_node("Reshape", ["p2", "flat_shape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1, name="softmax"),
    ]
    return make_model(nodes, [("x", ["batch", 3, 8, 8])], [("y", None)], inits)


def tensor(name: str, dims, data_type=TensorProto.FLOAT, raw: bytes = b"") -> TensorProto:
    """A TensorProto with exactly the declared dims and bytes given (no consistency enforced)."""
    t = TensorProto(name=name, data_type=data_type)
    t.dims.extend(int(d) for d in dims)
    if raw:
        t.raw_data = raw
    return t


def relu_model(inits=(), extra_nodes=(), input_shape=(1, 4), output="y") -> onnx.ModelProto:
    """x -> [extra nodes] -> Relu -> y, with raw TensorProto initializers."""
    nodes = [*extra_nodes, helper.make_node("Relu", ["x"], [output], name="relu")]
    model = make_model(nodes, [("x", list(input_shape))], [(output, None)])
    model.graph.initializer.extend(inits)
    return model


def add_model(const: np.ndarray) -> onnx.ModelProto:
    """y = x + c, with c an initializer: the constant reaches the graph, so its bytes matter."""
    nodes = [helper.make_node("Add", ["x", "c"], ["y"], name="add")]
    return make_model(nodes, [("x", list(const.shape))], [("y", None)], [("c", const)])


def from_array(value: np.ndarray, name: str) -> TensorProto:
    return numpy_helper.from_array(value, name)
