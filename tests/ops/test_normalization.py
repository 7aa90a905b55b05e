"""LayerNormalization, InstanceNormalization, GroupNormalization, MeanVarianceNormalization and
LpNormalization: kernels against their references on awkward shapes, references against
onnxruntime, no allocations, refusals, and small models end to end."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import Part, op_class
from flexnnd.ops.normalization import (
    GroupNormalization,
    InstanceNormalization,
    LayerNormalization,
    LpNormalization,
    MeanVarianceNormalization,
)
from tests.ops.harness import arena_views, assert_no_numpy_allocations, ort_run, run_in_arena

TOL = {"rtol": 1e-5, "atol": 2e-5}


def random(shape, seed=0, offset=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + offset).astype(np.float32)


def run_prepared(op, inputs, outputs=None):
    """Bind `op` as the executor does: shapes inferred from the ONNX-layout inputs (all but the
    first are constants), the constants in prepare()'s layout; return (kernel, outputs)."""
    consts = [None, *inputs[1:]]
    out_shapes = op.infer([None if x is None else x.shape for x in inputs], consts)[:outputs]
    prepared = [inputs[0], *op.prepare(consts)[1:]]
    given = [x for x in prepared if x is not None]
    views = arena_views([x.shape for x in given] + list(out_shapes))
    for view, x in zip(views, given, strict=False):
        view[...] = x
    ins = iter(views[: len(given)])
    bound = [None if x is None else next(ins) for x in prepared]
    outs = views[len(given) :]
    nbytes = op.scratch_bytes([None if x is None else x.shape for x in inputs])
    scratch = arena_views([(nbytes // 4,)])[0] if nbytes else None
    return op.bind(bound, outs, scratch), outs


# ---- LayerNormalization ----------------------------------------------------------------------

LAYER_CASES = [
    ((7,), 0, (7,)),
    ((3, 1, 5), -2, (1, 5)),
    ((3, 1, 5), -1, (5,)),
    ((2, 13, 5, 7), 1, (13, 5, 7)),
    ((2, 13, 5, 7), -1, (7,)),
    ((2, 13, 5, 7), 2, (7,)),  # Scale over the last axis only, repeated along axis 2
    ((2, 13, 5, 7), 3, (1,)),
    ((1, 24, 3, 3, 2), 2, (3, 3, 2)),
    ((1, 197, 768), -1, (768,)),
    ((4, 17), 0, (1, 17)),
]


@pytest.mark.parametrize(("shape", "axis", "param"), LAYER_CASES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_layer_norm_matches_reference(shape, axis, param, with_bias):
    x, scale, bias = random(shape), random(param, 1), random(param, 2)
    op = LayerNormalization(axis=axis, epsilon=1e-3)
    inputs = [x, scale, bias] if with_bias else [x, scale]
    kernel, outs = run_prepared(op, inputs)
    kernel()
    for got, want in zip(outs, op.reference(inputs), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, **TOL)


def test_layer_norm_scale_and_bias_of_different_shapes():
    x = random((2, 5, 6))
    inputs = [x, random((6,), 1), random((5, 6), 2)]
    op = LayerNormalization(axis=1)
    kernel, (y, _, _) = run_prepared(op, inputs)
    kernel()
    np.testing.assert_allclose(y, op.reference(inputs)[0], **TOL)


def test_layer_norm_keeps_precision_far_from_zero():
    """One pass sums x and x*x in float64: a mean 3000 standard deviations away costs nothing."""
    x = (np.random.default_rng(3).standard_normal((4, 768)) * 0.5 + 1500).astype(np.float32)
    inputs = [x, np.ones(768, np.float32), np.zeros(768, np.float32)]
    kernel, (y, _, inv) = run_prepared(LayerNormalization(), inputs)
    kernel()
    want = LayerNormalization().reference(inputs)
    np.testing.assert_allclose(y, want[0], rtol=0, atol=1e-3)
    np.testing.assert_allclose(inv, want[2], rtol=1e-5)


@pytest.mark.parametrize("outputs", [1, 2])
def test_layer_norm_writes_only_the_outputs_asked_for(outputs):
    x, scale = random((3, 10)), random((10,), 1)
    kernel, outs = run_prepared(LayerNormalization(), [x, scale], outputs=outputs)
    kernel()
    assert len(outs) == outputs
    for got, want in zip(outs, LayerNormalization().reference([x, scale]), strict=False):
        np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize(("shape", "axis"), [((2, 3, 4, 5), 1), ((2, 3, 4, 5), -1), ((6, 9), 0)], ids=str)
def test_layer_norm_reference_matches_onnxruntime(shape, axis):
    x = random(shape, offset=1.0)
    param = shape[axis:]
    scale, bias = random(param, 1), random(param, 2)
    op = LayerNormalization(axis=axis, epsilon=1e-4)
    want = ort_run("LayerNormalization", [x], [scale, bias], opset=17, outputs=3, axis=axis, epsilon=1e-4)
    for got, ref in zip(op.reference([x, scale, bias]), want, strict=True):
        np.testing.assert_allclose(got, ref, **TOL)
    no_bias = ort_run("LayerNormalization", [x], [scale], opset=17, axis=axis, epsilon=1e-4)
    np.testing.assert_allclose(op.reference([x, scale])[0], no_bias, **TOL)


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ((2, 1, 1), "varies along axis 0"),
        ((5, 1), "repeats along a trailing axis"),
        ((3, 5), "does not broadcast"),
        ((1, 2, 5, 6), "higher rank"),
    ],
)
def test_layer_norm_refuses_scales_it_cannot_index(param, message):
    with pytest.raises(ShapeError, match=message):
        LayerNormalization(axis=1).infer([(2, 5, 6), param], [None, np.ones(param, np.float32)])


def test_layer_norm_refusals():
    with pytest.raises(UnsupportedOp, match=r"stash_type 11.*float, 1"):
        LayerNormalization.from_onnx({"stash_type": 11}, [None, None], "ln", 17)
    with pytest.raises(ShapeError, match=r"axis 3 is out of range for rank 3"):
        LayerNormalization(axis=3).infer([(2, 5, 6), (6,)], [None, None])
    with pytest.raises(DtypeRefused, match="input 0 is int64"):
        LayerNormalization().output_dtypes(["int64", "float32", None])
    assert LayerNormalization().output_dtypes(["float32", "float32", None]) == ["float32"] * 3


# ---- InstanceNormalization and GroupNormalization -------------------------------------------

CHANNEL_SHAPES = [(2, 6, 5, 7), (1, 24, 3, 3, 2), (3, 12, 1), (1, 6, 13)]


@pytest.mark.parametrize("shape", CHANNEL_SHAPES, ids=str)
def test_instance_norm_matches_reference(shape):
    x, scale, bias = random(shape, offset=3.0), random(shape[1], 1), random(shape[1], 2)
    op = InstanceNormalization(epsilon=1e-3)
    kernel, (y,) = run_in_arena(op, [x, scale, bias], [None, scale, bias])
    kernel()
    np.testing.assert_allclose(y, op.reference([x, scale, bias])[0], **TOL)


@pytest.mark.parametrize("shape", [*CHANNEL_SHAPES, (4, 6)], ids=str)
@pytest.mark.parametrize("groups", [1, 2, 3, 6])
@pytest.mark.parametrize("per_group", [False, True], ids=["opset21", "opset18"])
def test_group_norm_matches_reference(shape, groups, per_group):
    params = groups if per_group else shape[1]
    x, scale, bias = random(shape, offset=-2.0), random(params, 1), random(params, 2)
    op = GroupNormalization(num_groups=groups, per_group=per_group)
    kernel, (y,) = run_in_arena(op, [x, scale, bias], [None, scale, bias])
    kernel()
    np.testing.assert_allclose(y, op.reference([x, scale, bias])[0], **TOL)


def test_instance_and_group_norm_references_match_onnxruntime():
    x = random((2, 6, 4, 5), offset=1.0)
    scale, bias = random(6, 1), random(6, 2)
    want = ort_run("InstanceNormalization", [x], [scale, bias], opset=13, epsilon=1e-3)
    got = InstanceNormalization(epsilon=1e-3).reference([x, scale, bias])[0]
    np.testing.assert_allclose(got, want, **TOL)
    want = ort_run("GroupNormalization", [x], [scale, bias], opset=21, num_groups=3)
    np.testing.assert_allclose(GroupNormalization(num_groups=3).reference([x, scale, bias])[0], want, **TOL)
    per_group = [random(3, 3), random(3, 4)]
    want = ort_run("GroupNormalization", [x], per_group, opset=18, num_groups=3)
    got = GroupNormalization(num_groups=3, per_group=True).reference([x, *per_group])[0]
    np.testing.assert_allclose(got, want, **TOL)


def test_group_norm_takes_its_parameters_per_group_before_opset_21():
    assert GroupNormalization.from_onnx({"num_groups": 2}, [None] * 3, "g", 18)[0].per_group
    assert not GroupNormalization.from_onnx({"num_groups": 2}, [None] * 3, "g", 21)[0].per_group
    with pytest.raises(ShapeError, match=r"scale shape \(6,\) .*want \(2,\)"):
        GroupNormalization(num_groups=2, per_group=True).infer([(1, 6, 3), (6,), (6,)], [None] * 3)
    with pytest.raises(ShapeError, match=r"scale shape \(2,\) .*want \(6,\)"):
        GroupNormalization(num_groups=2).infer([(1, 6, 3), (2,), (2,)], [None] * 3)


def test_channel_norm_refusals():
    with pytest.raises(UnsupportedOp, match="num_groups is missing"):
        GroupNormalization.from_onnx({}, [None] * 3, "g", 21)
    with pytest.raises(UnsupportedOp, match="num_groups 0"):
        GroupNormalization.from_onnx({"num_groups": 0}, [None] * 3, "g", 21)
    with pytest.raises(ShapeError, match=r"6 channels .* into 4 groups"):
        GroupNormalization(num_groups=4).infer([(1, 6, 3), (6,), (6,)], [None] * 3)
    with pytest.raises(ShapeError, match="rank 3/4/5"):
        InstanceNormalization().infer([(2, 6), (6,), (6,)], [None] * 3)
    with pytest.raises(ShapeError, match=r"bias shape \(5,\)"):
        InstanceNormalization().infer([(2, 6, 3), (6,), (5,)], [None] * 3)


# ---- MeanVarianceNormalization and LpNormalization -------------------------------------------

BLOCK_CASES = [
    ((2, 13, 5, 7), (0, 2, 3)),
    ((2, 13, 5, 7), (1,)),
    ((2, 13, 5, 7), (0, 1, 2, 3)),
    ((2, 13, 5, 7), (-1, -3)),
    ((3, 1, 4, 1), (0, 2, 3)),
    ((1, 24, 3, 3, 2), (1, 4)),
    ((9,), (0,)),
    ((1, 1, 1, 1), (0, 2, 3)),
]


@pytest.mark.parametrize(("shape", "axes"), BLOCK_CASES, ids=str)
def test_mean_variance_norm_matches_reference(shape, axes):
    x = random(shape, offset=5.0)
    op = MeanVarianceNormalization(axes=axes)
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    np.testing.assert_allclose(y, op.reference([x])[0], **TOL)


@pytest.mark.parametrize(
    ("shape", "axis"), [((2, 13, 5, 7), a) for a in range(-4, 4)] + [((9,), 0), ((1, 512), 1)]
)
@pytest.mark.parametrize("p", [1, 2])
def test_lp_norm_matches_reference(shape, axis, p):
    x = random(shape)
    x.reshape(-1)[:: max(1, x.size // 3)] = 0.0
    if len(shape) == 4:
        x[0, :, 1, 2] = 0.0  # a zero norm along axis 1 comes out as 0, not NaN
    op = LpNormalization(axis=axis, p=p)
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    np.testing.assert_allclose(y, op.reference([x])[0], **TOL)
    assert np.isfinite(y).all()


def test_block_norm_references_match_onnxruntime():
    x = random((2, 6, 4, 5), offset=1.0)
    x[1, :, 2, 3] = 0.0
    for axes in ([0, 2, 3], [1, 2]):
        want = ort_run("MeanVarianceNormalization", [x], opset=13, axes=axes)
        np.testing.assert_allclose(MeanVarianceNormalization(axes=tuple(axes)).reference([x])[0], want, **TOL)
    for axis, p in ((1, 2), (-1, 1), (0, 2)):
        want = ort_run("LpNormalization", [x], opset=13, axis=axis, p=p)
        np.testing.assert_allclose(LpNormalization(axis=axis, p=p).reference([x])[0], want, **TOL)


def test_block_norm_refusals():
    with pytest.raises(UnsupportedOp, match="p 3"):
        LpNormalization.from_onnx({"p": 3}, [None], "lp", 13)
    with pytest.raises(ShapeError, match="name an axis twice"):
        MeanVarianceNormalization(axes=(1, -2)).infer([(2, 3, 4)], [None])
    with pytest.raises(ShapeError, match="axis 3 is out of range for rank 3"):
        MeanVarianceNormalization().infer([(2, 3, 4)], [None])
    with pytest.raises(ValueError, match="scratch of 0 bytes, need 96"):
        x = np.zeros((2, 6, 3), np.float32)
        LpNormalization(axis=1).bind([x], [x.copy()], None)


# ---- all five: allocation, slicing, registration, binding errors ------------------------------

SAMPLES = [
    (LayerNormalization(), [random((4, 197, 64)), random(64, 1), random(64, 2)]),
    (InstanceNormalization(), [random((2, 6, 9, 9)), random(6, 1), random(6, 2)]),
    (GroupNormalization(num_groups=3), [random((2, 6, 9, 9)), random(6, 1), random(6, 2)]),
    (MeanVarianceNormalization(), [random((2, 6, 9, 9))]),
    (LpNormalization(axis=1), [random((2, 6, 9, 9))]),
]


@pytest.mark.parametrize(("op", "inputs"), SAMPLES, ids=lambda v: getattr(v, "op_type", ""))
def test_kernels_allocate_nothing(op, inputs):
    kernel, _ = run_in_arena(op, inputs, [None, *inputs[1:]])
    assert_no_numpy_allocations(kernel)


@pytest.mark.parametrize(("op", "inputs"), SAMPLES, ids=lambda v: getattr(v, "op_type", ""))
def test_registered_never_sliced_priced_by_bytes(op, inputs):
    shapes = [x.shape for x in inputs]
    out_shapes = op.infer(shapes, [None, *inputs[1:]])
    assert op_class(op.op_type) is type(op)
    assert op.slice_axes(shapes, out_shapes) == ()
    assert op.cost_kind(shapes) == "memory"
    assert type(op).from_dict(op.to_dict()) == op
    x = inputs[0]
    with pytest.raises(ValueError, match="not sliced"):
        op.bind([x, *inputs[1:]], [x.copy()], None, Part("rows", 0, 1))
    with pytest.raises(ShapeError, match="output"):
        op.bind([x, *inputs[1:]], [np.zeros(x.shape[::-1], np.float32)], None)


def test_onnx_attribute_names():
    assert LayerNormalization.onnx_attribute_names() == {"axis", "epsilon", "stash_type"}
    assert GroupNormalization.onnx_attribute_names() == {"num_groups", "epsilon", "stash_type"}
    assert InstanceNormalization.onnx_attribute_names() == {"epsilon"}
    assert MeanVarianceNormalization.onnx_attribute_names() == {"axes"}
    assert LpNormalization.onnx_attribute_names() == {"axis", "p"}


# ---- models end to end ------------------------------------------------------------------------


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def test_transformer_block_with_layer_norm_matches_onnxruntime(tmp_path):
    """LayerNorm -> MatMul -> Add residual -> LayerNorm (no bias) -> LpNormalization, with the
    first LayerNorm's Mean and InvStdDev as graph outputs too."""
    from tests.conftest import assert_model_matches_ort

    d = 32
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g1", "b1"], ["n1", "mean", "inv"], epsilon=1e-6),
        helper.make_node("MatMul", ["n1", "w"], ["h"]),
        helper.make_node("Add", ["h", "x"], ["r"]),
        helper.make_node("LayerNormalization", ["r", "g2"], ["n2"], axis=-1),
        helper.make_node("LpNormalization", ["n2"], ["y"], axis=-1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10, d])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10, d]),
            helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, 10, 1]),
            helper.make_tensor_value_info("inv", TensorProto.FLOAT, [1, 10, 1]),
        ],
        [
            _init("g1", random(d, 1)),
            _init("b1", random(d, 2)),
            _init("w", random((d, d), 3) / 4),
            _init("g2", random(d, 4)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert_model_matches_ort(model, {"x": random((1, 10, d), 5, offset=2.0)}, tmp_path)


@pytest.mark.parametrize("opset", [18, 21])
def test_conv_net_with_channel_norms_matches_onnxruntime(tmp_path, opset):
    """Conv -> InstanceNorm -> Sigmoid -> GroupNorm (per group at 18, per channel at 21) -> MVN.

    (No Relu: a channel it zeroes whole leaves MVN a constant channel, 0/0, where ONNX Runtime's
    E[x^2] - E[x]^2 rounds to +-1 or NaN and flexnn gives the exact 0.)"""
    from tests.conftest import assert_model_matches_ort

    params = 2 if opset < 21 else 8
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("InstanceNormalization", ["c", "s", "b"], ["i"], epsilon=1e-4),
        helper.make_node("Sigmoid", ["i"], ["r"]),
        helper.make_node("GroupNormalization", ["r", "gs", "gb"], ["g"], num_groups=2),
        helper.make_node("MeanVarianceNormalization", ["g"], ["y"], axes=[0, 2, 3]),
    ]
    graph = helper.make_graph(
        nodes,
        "convnorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 12, 12])],
        [
            _init("w", random((8, 3, 3, 3), 1) / 3),
            _init("s", random(8, 2)),
            _init("b", random(8, 3)),
            _init("gs", random(params, 4)),
            _init("gb", random(params, 5)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    assert_model_matches_ort(model, {"x": random((1, 3, 12, 12), 6)}, tmp_path)


def test_layer_norm_with_a_computed_scale_is_refused():
    from flexnnd.graph.onnx_import import import_onnx

    nodes = [helper.make_node("LayerNormalization", ["x", "g"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "computed_scale",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
            helper.make_tensor_value_info("g", TensorProto.FLOAT, [8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(UnsupportedOp, match=r"LayerNormalization.*input 1 \('g'\) must be a constant"):
        import_onnx(model)
