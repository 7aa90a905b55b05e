"""fuse_layernorm: each form of the LayerNorm decomposition becomes one LayerNormalization with the
same values; everything that is not exactly that is left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd.graph.fuse_layernorm import fuse_layernorm
from flexnnd.graph.ir import Node, TensorInfo, runtime_dtype
from flexnnd.graph.passes import Draft, fuse_activations
from flexnnd.ops.base import op_class

SHAPE = (1, 7, 32)


def random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def draft_of(model) -> Draft:
    """The Draft the importer hands its passes, for a model of runtime nodes (initializers as the
    constants; parameter inputs absorbed by each op's from_onnx, as the importer does)."""
    g = model.graph
    opset = model.opset_import[0].version
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    infos = {
        v.name: TensorInfo(v.name, tuple(d.dim_value for d in v.type.tensor_type.shape.dim)) for v in g.input
    }
    nodes = []
    for proto in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        values = [consts.get(n) for n in proto.input]
        op, kept = op_class(proto.op_type).from_onnx(attrs, values, proto.name, opset)
        names = [proto.input[p] for p in kept if p < len(proto.input)]
        kept_values = [values[p] for p in kept if p < len(proto.input)]
        in_shapes = tuple(tuple(consts[n].shape) if n in consts else infos[n].shape for n in names)
        dtypes = [
            runtime_dtype(v) if v is not None else infos[n].dtype
            for n, v in zip(names, kept_values, strict=True)
        ]
        for out, shape, dtype in zip(
            proto.output, op.infer(in_shapes, kept_values), op.output_dtypes(dtypes), strict=False
        ):
            infos[out] = TensorInfo(out, tuple(shape), dtype)
        for n, v in zip(names, kept_values, strict=True):
            if v is not None:
                infos[n] = TensorInfo(n, tuple(v.shape), runtime_dtype(v))
        nodes.append(Node(proto.name, op, tuple(names), tuple(proto.output), in_shapes))
    return Draft(nodes, consts, infos, [v.name for v in g.input], [o.name for o in g.output])


def evaluate(draft: Draft, feeds) -> list[np.ndarray]:
    """The draft's outputs computed with every node's numpy reference."""
    values = {**{k: v.astype(runtime_dtype(v)) for k, v in draft.consts.items()}, **feeds}
    for node in draft.nodes:
        outs = node.op.reference([values[n] if n else None for n in node.inputs])
        values.update(zip(node.outputs, outs, strict=False))
    return [values[o] for o in draft.outputs]


def decomposition(
    *,
    square="Pow",
    root="Sqrt",
    divide="Div",
    axes=(-1,),
    shape=SHAPE,
    scale=(32,),
    bias=(32,),
    eps_first=False,
    scale_first=False,
    opset=13,
    keepdims=1,
):
    """A model of the decomposition exporters write; each keyword picks one of its forms."""
    nodes, inits = [], {"eps": np.array(1e-5, np.float32)}
    reduce_axes = {"axes": list(axes)} if opset < 18 else {}
    reduce_inputs = ["axes"] if opset >= 18 else []
    if opset >= 18:
        inits["axes"] = np.array(axes, np.int64)
    nodes.append(
        helper.make_node("ReduceMean", ["x", *reduce_inputs], ["m"], "mean", keepdims=keepdims, **reduce_axes)
    )
    nodes.append(helper.make_node("Sub", ["x", "m"], ["d"], "sub"))
    if square == "Pow":
        inits["two"] = np.array(2.0, np.float32)
        nodes.append(helper.make_node("Pow", ["d", "two"], ["q"], "square"))
    else:
        nodes.append(helper.make_node("Mul", ["d", "d"], ["q"], "square"))
    nodes.append(
        helper.make_node("ReduceMean", ["q", *reduce_inputs], ["v"], "var", keepdims=keepdims, **reduce_axes)
    )
    nodes.append(helper.make_node("Add", ["eps", "v"] if eps_first else ["v", "eps"], ["e"], "add_eps"))
    if root == "Sqrt":
        nodes.append(helper.make_node("Sqrt", ["e"], ["s"], "sqrt"))
    elif root == "Pow0.5":
        inits["half"] = np.array(0.5, np.float32)
        nodes.append(helper.make_node("Pow", ["e", "half"], ["s"], "sqrt"))
    else:  # "Pow-0.5": the inverse directly
        inits["minus_half"] = np.array(-0.5, np.float32)
        nodes.append(helper.make_node("Pow", ["e", "minus_half"], ["r"], "rsqrt"))
    if divide == "Div":
        nodes.append(helper.make_node("Div", ["d", "s"], ["n"], "divide"))
    else:
        if root != "Pow-0.5":
            nodes.append(helper.make_node("Reciprocal", ["s"], ["r"], "reciprocal"))
        nodes.append(
            helper.make_node("Mul", ["r", "d"] if divide == "MulFirst" else ["d", "r"], ["n"], "divide")
        )
    out = "n"
    if scale is not None:
        inits["w"] = random(scale, 1)
        nodes.append(helper.make_node("Mul", ["w", out] if scale_first else [out, "w"], ["o"], "scale"))
        out = "o"
    if bias is not None:
        inits["b"] = random(bias, 2)
        nodes.append(helper.make_node("Add", [out, "b"], ["y"], "bias"))
        out = "y"
    return model_of(nodes, inits, out, shape, opset)


def model_of(nodes, inits, out, shape, opset):
    graph = helper.make_graph(
        nodes,
        "layernorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def fused(model, shape=SHAPE):
    """(the draft after the pass, max |fused - unfused| over a random input)."""
    draft = draft_of(model)
    x = {"x": random(shape, 3) * 3 + 1}
    before = evaluate(draft, x)
    fuse_layernorm(draft)
    after = evaluate(draft, x)
    return draft, max(float(np.abs(a - b).max()) for a, b in zip(after, before, strict=True))


def op_types(draft):
    return [n.op_type for n in draft.nodes]


FORMS = {
    "torch": {},
    "mul_square": {"square": "Mul"},
    "reciprocal": {"divide": "Mul"},
    "reciprocal_first": {"divide": "MulFirst"},
    "pow_half": {"root": "Pow0.5"},
    "pow_minus_half": {"root": "Pow-0.5", "divide": "Mul"},
    "eps_first_scale_first": {"eps_first": True, "scale_first": True},
    "axes_input_opset18": {"opset": 18},
    "no_bias": {"bias": None},
    "no_scale": {"scale": None},
    "neither": {"scale": None, "bias": None},
    "bias_broadcast": {"scale": (1,), "bias": (1, 1, 32)},
    "two_axes": {"axes": (-2, -1), "scale": (7, 32), "bias": (32,)},
    "two_axes_positive": {"axes": (2, 1), "scale": (32,), "bias": (7, 32)},
}


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
def test_each_form_becomes_one_layer_normalization(form):
    draft, diff = fused(decomposition(**form))
    assert op_types(draft) == ["LayerNormalization"]
    (node,) = draft.nodes
    assert node.op.axis == -len(form.get("axes", (-1,)))
    assert node.op.epsilon == pytest.approx(1e-5)
    assert node.inputs[0] == "x" and node.outputs == tuple(draft.outputs)
    assert node.in_shapes == tuple(draft.infos[n].shape for n in node.inputs)
    assert len(node.inputs) == (3 if form.get("bias", ()) is not None else 2)
    assert diff < 2e-5
    assert any("into LayerNormalization" in line for line in draft.log)


def test_a_stack_of_two_is_fused_twice_and_the_residual_kept():
    first = decomposition()
    second = decomposition()
    rename = {n: f"{n}2" for n in ["m", "d", "q", "v", "e", "s", "n", "o", "y", "w", "b", "two", "eps"]}
    nodes = list(first.graph.node)
    nodes.append(helper.make_node("Relu", ["y"], ["h"], "relu"))
    for proto in second.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(proto)
        copy.name += "2"
        copy.input[:] = ["h" if i == "x" else rename.get(i, i) for i in proto.input]
        copy.output[:] = [rename[o] for o in proto.output]
        nodes.append(copy)
    nodes.append(helper.make_node("Add", ["y2", "y"], ["out"], "residual"))
    inits = {i.name: numpy_helper.to_array(i) for i in first.graph.initializer}
    inits.update({rename[k]: v for k, v in inits.copy().items() if k in rename})
    draft, diff = fused(model_of(nodes, inits, "out", SHAPE, 13))
    assert op_types(draft) == ["LayerNormalization", "Relu", "LayerNormalization", "Add"]
    assert diff < 2e-5


def _with_extra_reader(model, tensor):
    """`model` with one more reader of `tensor`: its output plus `tensor`."""
    nodes = list(model.graph.node)
    out = model.graph.output[0].name
    nodes.append(helper.make_node("Add", [out, tensor], ["z"], "extra"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return model_of(nodes, inits, "z", SHAPE, 13)


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (decomposition(axes=(1,), scale=None, bias=None), "not the trailing axes"),
        (decomposition(axes=(0, 2), scale=None, bias=None), "axes with a gap"),
        (decomposition(keepdims=0, shape=(1, 1, 32), scale=None, bias=None), "keepdims 0"),
        (_with_extra_reader(decomposition(), "d"), "x - mean read by a third node"),
        (_with_extra_reader(decomposition(), "s"), "the standard deviation read elsewhere"),
        (_with_extra_reader(decomposition(), "m"), "the mean read elsewhere"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_other_graphs_are_left_alone(model, why):
    draft = draft_of(model)
    before = op_types(draft)
    fuse_layernorm(draft)
    assert op_types(draft) == before, why


def _edited(model, node_name, **change):
    nodes = []
    for proto in model.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(proto)
        if proto.name == node_name and "inputs" in change:
            copy.input[:] = change["inputs"]
        nodes.append(copy)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    inits.update(change.get("inits", {}))
    return model_of(nodes, inits, model.graph.output[0].name, SHAPE, 13)


@pytest.mark.parametrize(
    ("node", "change", "why"),
    [
        ("sub", {"inputs": ["m", "x"]}, "mean - x"),
        ("square", {"inits": {"two": np.array(3.0, np.float32)}}, "a cube, not a square"),
        ("add_eps", {"inits": {"eps": np.full((7, 1), 1e-5, np.float32)}}, "eps not a scalar"),
        ("divide", {"inputs": ["s", "d"]}, "std / (x - mean)"),
    ],
)
def test_near_misses_are_left_alone(node, change, why):
    draft = draft_of(_edited(decomposition(scale=None, bias=None), node, **change))
    before = op_types(draft)
    fuse_layernorm(draft)
    assert op_types(draft) == before, why


def test_an_intermediate_graph_output_stops_the_fusion():
    model = decomposition()
    model.graph.output.append(helper.make_tensor_value_info("v", TensorProto.FLOAT, None))
    draft = draft_of(model)
    before = op_types(draft)
    fuse_layernorm(draft)
    assert op_types(draft) == before


def test_a_scale_along_another_axis_stays_a_mul():
    """Scale (7, 1) varies along the rows, not the normalized axis: the norm fuses, the Mul stays,
    and the bias after it too (it no longer follows the normalization directly)."""
    draft, diff = fused(decomposition(scale=(7, 1)))
    assert op_types(draft) == ["LayerNormalization", "Mul", "Add"]
    assert diff < 2e-5


def test_a_bias_add_with_a_fused_activation_is_not_absorbed():
    draft = draft_of(decomposition())
    draft.nodes.append(Node("relu", op_class("Relu")(), ("y",), ("r",), (SHAPE,)))
    draft.infos["r"] = TensorInfo("r", SHAPE)
    draft.outputs = ["r"]
    fuse_activations(draft)
    assert draft.nodes[-1].op.activation == "Relu"
    fuse_layernorm(draft)
    assert op_types(draft) == ["LayerNormalization", "Add"]


def test_the_decomposition_runs_end_to_end_like_onnxruntime(tmp_path):
    """The whole path with ReduceMean, Pow, Sqrt as runtime ops (fused or not, the same values)."""
    from tests.conftest import assert_model_matches_ort

    model = decomposition(shape=(1, 12, 48), scale=(48,), bias=(48,))
    assert_model_matches_ort(model, {"x": random((1, 12, 48), 4) * 2 + 3}, tmp_path)


def test_the_importer_fuses_the_decomposition():
    from flexnnd.graph.onnx_import import import_onnx

    graph, _ = import_onnx(decomposition())
    assert [n.op_type for n in graph.nodes] == ["LayerNormalization"]
