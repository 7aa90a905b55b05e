"""float16 and double models: computed as float32, fed and answered in their declared types.

A model exported with `.half()` has float16 inputs, weights, activations and outputs; ONNX Runtime
computes it in float16, flexnn in float32 on the same float16 values, so the two agree to float16's
precision (the issue's bar: max |diff| <= 1e-3 x max |ref|), not to float32's."""

from __future__ import annotations

import itertools
import json
import tracemalloc
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import flexnnd
from flexnnd.errors import FeedError, PackageError
from flexnnd.graph.package import MANIFEST, read_package
from tests.conftest import assert_model_matches_ort, ort_run, save

ONNX_OF = {np.float16: TensorProto.FLOAT16, np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


def cnn(dtype, in_dtype=None, out_dtype=None) -> onnx.ModelProto:
    """Conv+BatchNorm+Relu, Conv+Relu, GlobalAveragePool, Gemm+Relu (128 KiB of weights as float32:
    streamed at the smallest budget), Gemm; weights and activations of `dtype`. With `in_dtype`/`out_dtype`
    the graph takes/gives those and Casts to and from `dtype` inside."""
    rng = np.random.default_rng(7)
    in_dtype, out_dtype = in_dtype or dtype, out_dtype or dtype

    def const(name, shape, scale=1.0, shift=0.0):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale + shift).astype(dtype), name)

    inits = [
        const("w1", (32, 3, 3, 3), 0.3),
        const("b1", (32,), 0.1),
        const("gamma", (32,), 0.2, 1.0),
        const("beta", (32,), 0.1),
        const("mean", (32,), 0.1),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 32).astype(dtype), "var"),
        const("w2", (64, 32, 3, 3), 0.06),
        const("b2", (64,), 0.1),
        const("wf", (512, 64), 0.3),
        const("bf", (512,), 0.1),
        const("wo", (10, 512), 0.1),
        const("bo", (10,), 0.1),
    ]
    nodes, x = [], "x"
    if in_dtype != dtype:
        nodes.append(helper.make_node("Cast", ["x"], ["x_cast"], to=ONNX_OF[dtype]))
        x = "x_cast"
    nodes += [
        helper.make_node("Conv", [x, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r3"]),
        helper.make_node("Gemm", ["r3", "wo", "bo"], ["y" if out_dtype == dtype else "g"], transB=1),
    ]
    if out_dtype != dtype:
        nodes.append(helper.make_node("Cast", ["g"], ["y"], to=ONNX_OF[out_dtype]))
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", ONNX_OF[in_dtype], [1, 3, 24, 24])],
        [helper.make_tensor_value_info("y", ONNX_OF[out_dtype], [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def mlp(dtype) -> onnx.ModelProto:
    """Gemm+Relu, Gemm+Sigmoid, Gemm, Softmax: ONNX Runtime's CPU kernels take double for these
    (not for Conv)."""
    rng = np.random.default_rng(11)
    sizes, nodes, inits, x = [64, 512, 256, 10], [], [], "x"
    for i, (k, n) in enumerate(itertools.pairwise(sizes)):
        inits += [
            numpy_helper.from_array((rng.standard_normal((n, k)) / np.sqrt(k)).astype(dtype), f"w{i}"),
            numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(dtype), f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"g{i}"], transB=1))
        x = f"g{i}"
        if i < 2:
            nodes.append(helper.make_node(("Relu", "Sigmoid")[i], [x], [f"a{i}"]))
            x = f"a{i}"
    nodes.append(helper.make_node("Softmax", [x], ["y"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", ONNX_OF[dtype], [2, 64])],
        [helper.make_tensor_value_info("y", ONNX_OF[dtype], [2, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def feeds(dtype):
    return {"x": np.random.default_rng(3).standard_normal((1, 3, 24, 24)).astype(dtype)}


def matches_ort_to_float16_precision(model, x, tmp_path) -> list[int]:
    """Like conftest's assert_model_matches_ort (all-resident and smallest plan, same dtypes), at the
    issue's float16 bar: ORT rounds every float16 activation, flexnn only the ones a Cast rounds."""
    path = save(model, tmp_path / "model.onnx")
    (want,) = ort_run(path, x)
    arenas = []
    with flexnnd.Session(path, threads=1, cache_dir=tmp_path / "cache") as sess:
        budgets = [None, min(e.arena_bytes for e in sess.rungs.index) + sess.rungs.output_bytes]
        for budget in budgets:
            sess.set_budget(budget)
            got = sess.run(x)["y"]
            arenas.append(sess.plan.arena_bytes)
            assert got.dtype == want.dtype and got.shape == want.shape
            diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
            assert diff <= 1e-3 * float(np.abs(want.astype(np.float64)).max()), diff
            assert not np.array_equal(got, np.zeros_like(got))
    return arenas


def test_half_model_matches_ort_in_float16_at_full_and_smallest_plan(tmp_path):
    arenas = matches_ort_to_float16_precision(cnn(np.float16), feeds(np.float16), tmp_path)
    assert arenas[1] < arenas[0]  # the smallest plan streams the 72 KiB Conv weight


def test_mixed_model_casts_to_float16_inside(tmp_path):
    model = cnn(np.float16, in_dtype=np.float32, out_dtype=np.float32)
    matches_ort_to_float16_precision(model, feeds(np.float32), tmp_path)


def test_half_transformer_block_matches_ort(tmp_path):
    """As torch's `.half()` exports one: LayerNormalization, MatMul, an erf GELU written out with
    float16 constants, a residual Add, a Reshape by a constant shape, Softmax; all float16."""
    rng = np.random.default_rng(9)

    def half(value, name):
        return numpy_helper.from_array(np.asarray(value).astype(np.float16), name)

    inits = [
        half(1 + 0.1 * rng.standard_normal(32), "scale"),
        half(0.1 * rng.standard_normal(32), "bias"),
        half(rng.standard_normal((32, 64)) / 6, "w1"),
        half(0.1 * rng.standard_normal(64), "b1"),
        half(rng.standard_normal((64, 32)) / 8, "w2"),
        half(0.1 * rng.standard_normal(32), "b2"),
        half(np.sqrt(2), "sqrt2"),
        half(1.0, "one"),
        half(0.5, "half"),
        numpy_helper.from_array(np.array([8, 32], np.int64), "shape"),
    ]
    node = helper.make_node
    nodes = [
        node("LayerNormalization", ["x", "scale", "bias"], ["ln"], axis=-1),
        node("MatMul", ["ln", "w1"], ["m1"]),
        node("Add", ["m1", "b1"], ["a1"]),
        node("Div", ["a1", "sqrt2"], ["d"]),
        node("Erf", ["d"], ["e"]),
        node("Add", ["e", "one"], ["e1"]),
        node("Mul", ["a1", "e1"], ["g0"]),
        node("Mul", ["g0", "half"], ["g"]),
        node("MatMul", ["g", "w2"], ["m2"]),
        node("Add", ["m2", "b2"], ["a2"]),
        node("Add", ["a2", "x"], ["r"]),
        node("Reshape", ["r", "shape"], ["rr"]),
        node("Softmax", ["rr"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 8, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [8, 32])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = {"x": rng.standard_normal((1, 8, 32)).astype(np.float16)}
    matches_ort_to_float16_precision(model, x, tmp_path)


def test_double_model_matches_ort_in_float64(tmp_path):
    x = {"x": np.random.default_rng(4).standard_normal((2, 64))}
    arenas = assert_model_matches_ort(mlp(np.float64), x, tmp_path)
    assert arenas[1] < arenas[0]  # the smallest plan streams the 512 KiB (as float32) weight


def test_cast_to_float16_rounds_like_ort_and_to_double_is_exact(tmp_path):
    """x -> Cast(FLOAT16) -> Cast(DOUBLE): each value rounded to float16 once, returned as float64."""
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["y"], to=TensorProto.DOUBLE),
    ]
    graph = helper.make_graph(
        nodes,
        "casts",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 257])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [4, 257])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = {"x": (np.random.default_rng(5).standard_normal((4, 257)) * 1000).astype(np.float32)}
    x["x"][0, :3] = [70000.0, -1e9, 1e-8]  # overflow to inf, underflow to zero
    (want,) = ort_run(save(model, tmp_path / "casts.onnx"), x)
    with flexnnd.Session(tmp_path / "casts.onnx", threads=1, cache_dir=tmp_path / "cache") as sess:
        got = sess.run(x)["y"]
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, x["x"].astype(np.float64))  # the rounding happened


def test_package_and_session_report_the_declared_types(tmp_path):
    path = save(cnn(np.float16, out_dtype=np.float64), tmp_path / "model.onnx")
    with flexnnd.Session(path, threads=1, cache_dir=tmp_path / "cache") as sess:
        assert [(s.name, s.dtype) for s in sess.inputs] == [("x", "float16")]
        assert [(s.name, s.dtype) for s in sess.outputs] == [("y", "float64")]
        # The arena holds both as float32; the caller's copy of the output is double.
        graph = sess.package.graph
        assert graph.tensors["x"].dtype == graph.tensors["y"].dtype == "float32"
        assert sess.output_bytes == sess.package.output_bytes == 10 * 8
        with pytest.raises(FeedError, match="float16"):
            sess.run(feeds(np.float32))
        assert sess.run(feeds(np.float16))["y"].dtype == np.float64


def test_run_allocates_only_the_declared_output_copies(tmp_path):
    """A 1x16x48x48 double feed is widened straight into the arena, and the 1x8x48x48 double
    output comes back as one float64 copy: no float32 copy of either on the way."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((8, 16, 3, 3)).astype(np.float64), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 16, 48, 48])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 8, 48, 48])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = {"x": rng.standard_normal((1, 16, 48, 48))}
    with flexnnd.Session(save(model, tmp_path / "m.onnx"), threads=1, cache_dir=tmp_path / "c") as sess:
        sess.run(x)  # warm-up: kernels compiled or loaded
        assert sess.output_bytes == 8 * 48 * 48 * 8
        tracemalloc.start()
        try:
            start, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            got = sess.run(x)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert got["y"].dtype == np.float64
    # a float32 copy of the feed would add 147,456 bytes, of the output 73,728, to the 147,456 counted
    assert peak - start < sess.output_bytes + 16 * 1024


def _manifest(package_dir):
    return json.loads((package_dir / MANIFEST).read_text())


def test_a_package_without_declared_types_reads_as_float32(tmp_path):
    """Packages written before the field existed hold the same graph and answer in float32."""
    package_dir = flexnnd.import_model(
        save(cnn(np.float16), tmp_path / "m.onnx"), tmp_path / "p", ladder=False
    )
    manifest = _manifest(package_dir)
    assert manifest["graph"]["declared"] == {"x": "float16", "y": "float16"}
    del manifest["graph"]["declared"]
    (package_dir / MANIFEST).write_text(json.dumps(manifest))
    package = read_package(package_dir)
    assert [s.dtype for s in (*package.inputs, *package.outputs)] == ["float32", "float32"]


@pytest.mark.parametrize(
    "declared, words",
    [({"x": "int8"}, "'int8'"), ({"c1": "float16"}, "'c1'"), ({"y": ["float16"]}, "only float32")],
)
def test_a_package_declaring_other_types_is_refused(tmp_path, declared, words):
    package_dir = flexnnd.import_model(
        save(cnn(np.float16), tmp_path / "m.onnx"), tmp_path / "p", ladder=False
    )
    manifest = _manifest(package_dir)
    manifest["graph"]["declared"] = declared
    (package_dir / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=words):
        read_package(package_dir)


def _scale_model(elem, shape, factor):
    """y = x * factor, both of element type `elem`."""
    dtype = {TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}[elem]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("y", elem, shape)],
        [numpy_helper.from_array(np.array(factor, dtype), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_float16_output_beyond_its_range_is_inf_as_in_ort(tmp_path):
    path = save(_scale_model(TensorProto.FLOAT16, [4], 300.0), tmp_path / "m.onnx")
    x = {"x": np.array([1.0, -300.0, 300.0, 250.0], np.float16)}
    (want,) = ort_run(path, x)
    with flexnnd.Session(path, threads=1, cache_dir=tmp_path / "c") as sess, warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning: inf is the answer
        got = sess.run(x)["y"]
    np.testing.assert_array_equal(got, want)
    assert np.isinf(got[1:]).all()


def test_a_double_feed_beyond_float32_range_is_refused(tmp_path):
    """Computed in float32, 1e300 would become inf without a word: the feed is refused instead."""
    path = save(_scale_model(TensorProto.DOUBLE, [3], 0.5), tmp_path / "m.onnx")
    with flexnnd.Session(path, threads=1, cache_dir=tmp_path / "c") as sess:
        with pytest.raises(FeedError, match=r"'x' holds -1e\+300 at flat index 1, beyond float32's range"):
            sess.run({"x": np.array([np.inf, -1e300, 2.0])})
        got = sess.run({"x": np.array([3e38, np.inf, np.nan])})["y"]  # float32's largest, inf, NaN pass
    np.testing.assert_allclose(got[0], 1.5e38, rtol=1e-6)
    assert got[1] == np.inf and np.isnan(got[2])
