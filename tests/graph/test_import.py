"""The importer: folding, BatchNorm folding, fusion, static shapes, and clear errors."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import helper

import flexnnd
from flexnnd.graph.onnx_import import import_onnx, load_onnx
from tests.conftest import assert_close_to_reference, assert_model_matches_ort, make_model, ort_run, save

RNG = np.random.default_rng(7)


def conv_bn_relu_model():
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    bn = [
        RNG.uniform(0.5, 1.5, 8),
        RNG.standard_normal(8),
        RNG.standard_normal(8) * 0.1,
        RNG.uniform(0.5, 2.0, 8),
    ]
    inits = [("w", w)] + [(k, v.astype(np.float32)) for k, v in zip(("s", "b", "m", "v"), bn, strict=True)]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], epsilon=1e-3, name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Dropout", ["r"], ["y"], name="drop"),
    ]
    return make_model(nodes, [("x", ["batch", 3, 9, 11])], [("y", None)], inits)


def test_batchnorm_folds_and_activation_fuses(tmp_path):
    model = conv_bn_relu_model()
    graph, consts = import_onnx(model)
    assert [n.op_type for n in graph.nodes] == ["Conv"]
    conv = graph.nodes[0]
    assert conv.op.activation == "Relu"
    assert conv.outputs == ("y",)
    assert graph.inputs[0].shape == (1, 3, 9, 11)
    assert set(consts) == set(graph.constants) == set(conv.inputs[1:])

    path = save(model, tmp_path / "m.onnx")
    x = RNG.standard_normal((1, 3, 9, 11)).astype(np.float32)
    with flexnnd.Session(path, cache_dir=tmp_path / "c") as sess:
        got = sess.run({"x": x})["y"]
    assert_close_to_reference(got, ort_run(path, {"x": x})[0])


def test_shape_chain_is_folded_into_a_static_reshape(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["r", "shape"], ["y"]),
    ]
    inits = [
        ("zero", np.array(0, np.int64)),
        ("axes", np.array([0], np.int64)),
        ("minus1", np.array([-1], np.int64)),
    ]
    model = make_model(nodes, [("x", ["N", 2, 3, 4])], [("y", None)], inits)
    graph, consts = import_onnx(model)
    assert [n.op_type for n in graph.nodes] == ["Relu", "Reshape"]
    assert graph.outputs[0].shape == (1, 24)
    assert consts == {}
    path = save(model, tmp_path / "m.onnx")
    x = RNG.standard_normal((1, 2, 3, 4)).astype(np.float32)
    with flexnnd.Session(path, cache_dir=tmp_path / "c") as sess:
        np.testing.assert_array_equal(sess.run({"x": x})["y"], np.maximum(x, 0).reshape(1, 24))


def test_symbolic_batch_becomes_one_and_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="flexnnd.import"):
        graph, _ = import_onnx(
            make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", ["batch", 5])], [("y", None)])
        )
    assert graph.inputs[0].shape == (1, 5)
    assert "unknown batch dimension 'batch' set to 1" in caplog.text


def test_symbolic_inner_dimension_is_a_clear_error():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, "height"])], [("y", None)])
    with pytest.raises(flexnnd.ShapeError, match=r"unknown: 'x' dimension 1 \('height'\)"):
        import_onnx(model)
    graph, _ = import_onnx(model, input_shapes={"x": (1, 7)})
    assert graph.outputs[0].shape == (1, 7)


def test_a_negative_batch_dimension_is_unknown_not_zero_size(caplog):
    # Paddle writes -1 for a dynamic dimension: it is unknown, like a symbolic one.
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [-1, 3])], [("y", None)])
    with caplog.at_level(logging.INFO, logger="flexnnd.import"):
        graph, _ = import_onnx(model)
    assert graph.inputs[0].shape == (1, 3)
    assert "unknown batch dimension -1 set to 1" in caplog.text


def test_every_unresolved_input_dimension_is_named_in_one_error():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    model = make_model(nodes, [("a", ["n", "seq", -1]), ("b", [1, "seq", 4])], [("y", None)])
    with pytest.raises(flexnnd.ShapeError) as caught:
        import_onnx(model)
    message = str(caught.value)
    assert "'a' dimension 1 ('seq'), dimension 2 (-1)" in message
    assert "'b' dimension 1 ('seq')" in message
    assert "input_shapes={'a': (...), 'b': (...)}" in message
    graph, _ = import_onnx(model, input_shapes={"a": (1, 5, 4), "b": (1, 5, 4)})
    assert graph.outputs[0].shape == (1, 5, 4)


def test_input_shapes_must_agree_with_the_declared_static_dimensions():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", ["n", 3])], [("y", None)])
    with pytest.raises(
        flexnnd.ShapeError, match=r"input_shapes gives \[2, 4\], the model declares \['\?', 3\]"
    ):
        import_onnx(model, input_shapes={"x": (2, 4)})
    graph, _ = import_onnx(model, input_shapes={"x": (2, 3)})
    assert graph.inputs[0].shape == (2, 3)


def test_unsupported_op_names_op_node_and_opset():
    model = make_model(
        [helper.make_node("StringNormalizer", ["x"], ["y"], name="act_str")],
        [("x", [1, 4])],
        [("y", None)],
        opset=18,
    )
    with pytest.raises(flexnnd.UnsupportedOp, match=r"StringNormalizer \(node 'act_str', opset 18\)"):
        import_onnx(model)


def test_non_constant_weights_are_refused():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c")
    model = make_model([node], [("x", [1, 1, 4, 4]), ("w", [1, 1, 3, 3])], [("y", None)])
    with pytest.raises(flexnnd.UnsupportedOp, match="must be a constant"):
        import_onnx(model)


def test_undefined_input_is_reported_with_the_node():
    nodes = [helper.make_node("Relu", ["ghost"], ["y"], name="r")]
    with pytest.raises(flexnnd.ModelImportError, match="'r' \\(Relu\\) reads 'ghost'"):
        import_onnx(make_model(nodes, [("x", [1, 2])], [("y", None)]))


def test_cycle_is_reported():
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
    ]
    with pytest.raises(flexnnd.ModelImportError, match="reads 'b'"):
        import_onnx(make_model(nodes, [("x", [1, 2])], [("b", None)]))


def test_an_integer_input_read_by_a_float_kernel_names_the_node_and_type():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="act")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.INT64, [1, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, None)],
    )
    with pytest.raises(flexnnd.UnsupportedOp, match=r"node 'act'.*input 0 is int64; Relu runs on float32"):
        import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_string_input_is_refused_at_the_input():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.STRING, [1, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.STRING, None)],
    )
    with pytest.raises(flexnnd.ModelImportError, match="input 'x' has type STRING"):
        import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_every_refused_node_is_reported_at_once():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("Frobnicate", ["a"], ["b"], name="first"),
        helper.make_node("Relu", ["b"], ["c"], name="downstream_ok"),
        helper.make_node("Frobnicate", ["c"], ["d"], name="second"),
        helper.make_node("Relu", ["x"], ["e"], name="side", bogus=3),
        helper.make_node("Add", ["d", "e"], ["y"], name="join"),
    ]
    with pytest.raises(flexnnd.UnsupportedOps) as caught:
        import_onnx(make_model(nodes, [("x", [1, 2])], [("y", None)]))
    assert [(r.op_type, r.node) for r in caught.value.refusals] == [
        ("Frobnicate", "first"),
        ("Frobnicate", "second"),
        ("Relu", "side"),
    ]
    assert "3 nodes cannot run (Frobnicate ×2, Relu)" in str(caught.value)
    assert "attribute(s) ['bogus']" in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"not an onnx model at all\n" * 10, b"\x08\x07\x12\x04test\x3a\xff\xff\xff"],
    ids=["empty", "text", "garbage-protobuf"],
)
def test_non_onnx_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(flexnnd.ModelFormatError, match=r"bad\.onnx"):
        load_onnx(path)


def test_truncated_model_is_refused(tmp_path):
    full = save(conv_bn_relu_model(), tmp_path / "full.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(flexnnd.ModelFormatError, match=r"cut\.onnx"):
        load_onnx(path)


def test_missing_file():
    with pytest.raises(flexnnd.ModelFormatError, match="no such model file"):
        load_onnx("/nonexistent/model.onnx")


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    model = make_model(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [("x", [1, 4])],
        [("y", None)],
        [("w", np.ones(4, np.float32))],
    )
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../etc/passwd")
    path = save(model, tmp_path / "m.onnx")
    with pytest.raises(flexnnd.ModelFormatError, match="outside the model's folder"):
        load_onnx(path)


def test_opset_out_of_range():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 2])], [("y", None)], opset=5)
    with pytest.raises(flexnnd.ModelImportError, match="opset 5 is not supported"):
        import_onnx(model)


def residual_block(downsample_after=True):
    """x -> conv_a -> relu -> conv_b, plus a 1x1 downsample conv of x; Add; Relu (a ResNet block)."""
    w = lambda *s: RNG.standard_normal(s).astype(np.float32) * 0.3  # noqa: E731
    main = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
        helper.make_node("Conv", ["ar", "wb"], ["b"], pads=[1, 1, 1, 1], name="conv_b"),
    ]
    down = [helper.make_node("Conv", ["x", "wd"], ["d"], name="down")]
    tail = [
        helper.make_node("Add", ["b", "d"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["y"], name="out"),
    ]
    nodes = main + down + tail if downsample_after else down + main + tail
    inits = [("wa", w(8, 4, 3, 3)), ("wb", w(8, 8, 3, 3)), ("wd", w(8, 4, 1, 1))]
    return make_model(nodes, [("x", [1, 4, 9, 7])], [("y", None)], inits)


@pytest.mark.parametrize("downsample_after", [True, False])
def test_residual_add_and_relu_fuse_into_the_later_conv(tmp_path, downsample_after):
    model = residual_block(downsample_after)
    graph, _ = import_onnx(model)
    assert [n.op_type for n in graph.nodes] == ["Conv", "Conv", "Conv"]
    host = graph.nodes[-1]
    assert host.op.residual and host.op.activation == "Relu" and host.outputs == ("y",)
    assert host.name == ("down" if downsample_after else "conv_b")
    path = save(model, tmp_path / "m.onnx")
    x = RNG.standard_normal((1, 4, 9, 7)).astype(np.float32)
    with flexnnd.Session(path, cache_dir=tmp_path / "c") as sess:
        assert_close_to_reference(sess.run({"x": x})["y"], ort_run(path, {"x": x})[0])


def test_add_of_a_graph_output_or_a_broadcast_is_not_fused():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "bias"], ["y"], name="add"),
    ]
    inits = [("w", np.ones((2, 2, 1, 1), np.float32)), ("bias", np.ones((1, 2, 1, 1), np.float32))]
    graph, _ = import_onnx(make_model(nodes, [("x", [1, 2, 3, 3])], [("y", None)], inits))
    assert [n.op_type for n in graph.nodes] == ["Conv", "Add"]


def test_split_without_sizes_splits_equally_among_the_named_outputs(tmp_path):
    nodes = [helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1)]
    model = make_model(nodes, [("x", [1, 6, 2])], [("a", None), ("b", None), ("c", None)], opset=13)
    graph, _ = import_onnx(model)
    assert [graph.shape(o) for o in ("a", "b", "c")] == [(1, 2, 2)] * 3
    x = np.arange(12, dtype=np.float32).reshape(1, 6, 2)
    assert_model_matches_ort(model, {"x": x}, tmp_path)
    uneven = make_model(nodes, [("x", [1, 7, 2])], [("a", None), ("b", None), ("c", None)], opset=13)
    with pytest.raises(flexnnd.ShapeError, match="does not split equally among 3 outputs"):
        import_onnx(uneven)


def test_integer_div_of_constants_truncates_like_onnxruntime():
    from flexnnd.graph.fold import FOLDERS

    a, b = np.array([-7, 7, -7, 6], np.int64), np.array([2, -2, -2, 4], np.int64)
    np.testing.assert_array_equal(FOLDERS["Div"]([a, b], {}, 13)[0], [-3, -3, 3, 1])
    with pytest.raises(ZeroDivisionError, match="zero divisors"):
        FOLDERS["Div"]([a, np.array([1, 0, 2, 0], np.int64)], {}, 13)
