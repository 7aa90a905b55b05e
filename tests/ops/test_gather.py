"""Gather, GatherElements, GatherND: kernels against their references on awkward shapes and element
types, references against onnxruntime, out-of-range indices failing the request, and an int64-input
embedding model end to end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import flexnnd
from flexnnd.errors import DtypeRefused, InputValueError, ShapeError
from flexnnd.ops.base import Part, SliceAxis, op_class
from flexnnd.ops.gather import Gather, GatherElements, GatherND
from tests.conftest import assert_model_matches_ort, save
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

DTYPES = ["float32", "int64", "int32", "int16", "int8", "uint8", "uint16", "bool"]


def values(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if dtype == "float32":
        return rng.standard_normal(shape).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)


def indices(shape, size, dtype="int64", seed=1):
    """Indices over [-size, size): negative ones count from the end."""
    return np.random.default_rng(seed).integers(-size, size, shape).astype(dtype)


# ---- Gather -------------------------------------------------------------------------------------

GATHER_CASES = [  # data shape, indices shape, axis
    ((7,), (), 0),
    ((7,), (3,), 0),
    ((1,), (4, 1), -1),
    ((5, 3), (2, 2), 1),
    ((2, 13, 5), (1,), -2),
    ((3, 1, 4, 2), (2, 3), 0),
    ((2, 3, 1, 5, 3), (4,), 3),
]


@pytest.mark.parametrize("data_shape,index_shape,axis", GATHER_CASES, ids=str)
@pytest.mark.parametrize("index_type", ["int64", "int32"])
def test_gather_matches_reference(data_shape, index_shape, axis, index_type):
    data = values(data_shape, "float32")
    idx = indices(index_shape, data_shape[axis], index_type)
    op = Gather(axis=axis)
    kernel, (y,) = run_in_arena(op, [data, idx])
    kernel()
    want = op.reference([data, idx])[0]
    assert (
        y.shape
        == want.shape
        == data_shape[: axis % len(data_shape)] + index_shape + data_shape[axis % len(data_shape) + 1 :]
    )
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_takes_every_element_type(dtype):
    data = values((4, 6, 3), dtype)
    idx = indices((2, 5), 6)
    op = Gather(axis=1)
    assert op.output_dtypes([dtype, "int64"]) == [dtype]
    kernel, (y,) = run_in_arena(op, [data, idx])
    kernel()
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, np.take(data, idx, axis=1))


def test_gather_reference_matches_onnxruntime():
    data, idx = values((3, 5, 4), "float32"), indices((2, 3), 5, seed=3)
    np.testing.assert_array_equal(
        Gather(axis=1).reference([data, idx])[0], ort_run("Gather", [data, idx], axis=1)
    )
    words = values((6, 2), "int64")
    ids = indices((4,), 6, "int32", seed=4)
    np.testing.assert_array_equal(
        Gather().reference([words, ids])[0], ort_run("Gather", [words, ids], opset=11)
    )


def test_gather_out_of_range_fails_without_reading():
    data = values((4, 3), "float32")
    for bad in (4, -5, 2**40):
        kernel, (y,) = run_in_arena(Gather(), [data, np.array([0, bad], np.int64)])
        y[...] = 7
        with pytest.raises(InputValueError, match=f"index {bad} is out of range for axis 0 of size 4"):
            kernel()
        assert (y == 7).all()  # the check comes before any copy
    with pytest.raises(ShapeError, match="reach outside axis 1 of size 3"):
        Gather(axis=1).infer([(4, 3), (2,)], [None, np.array([0, 3])])


def test_gather_refuses_what_it_cannot_take():
    with pytest.raises(DtypeRefused, match="int32 or int64"):
        Gather().output_dtypes(["float32", "float32"])
    with pytest.raises(DtypeRefused, match="float64"):
        Gather().output_dtypes(["float64", "int64"])
    with pytest.raises(ShapeError, match="axis 2 is out of range"):
        Gather(axis=2).infer([(4, 3), (2,)], [None, None])
    with pytest.raises(ShapeError, match="rank >= 1"):
        Gather().infer([(), (2,)], [None, None])
    with pytest.raises(ValueError, match="not sliced"):
        data = np.zeros((4, 3), np.float32)
        Gather().bind([data, np.zeros(2, np.int64)], [np.zeros((2, 3), np.float32)], None, Part("rows", 0, 1))


# ---- GatherElements -----------------------------------------------------------------------------

ELEMENTS_CASES = [  # data shape, indices shape, axis
    ((5,), (3,), 0),
    ((3, 4), (3, 4), 1),
    ((3, 4), (2, 2), 1),  # smaller off the axis: the block data[:2, :] is read, as ONNX Runtime does
    ((3, 4), (5, 4), 0),
    ((2, 1, 5, 3), (2, 1, 7, 3), -2),
    ((2, 3, 1, 2, 4), (1, 3, 1, 2, 2), 4),
]


@pytest.mark.parametrize("data_shape,index_shape,axis", ELEMENTS_CASES, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
def test_gather_elements_matches_reference(data_shape, index_shape, axis, dtype):
    data = values(data_shape, dtype)
    idx = indices(index_shape, data_shape[axis], "int64" if dtype != "bool" else "int32")
    op = GatherElements(axis=axis)
    kernel, (y,) = run_in_arena(op, [data, idx])
    kernel()
    np.testing.assert_array_equal(y, op.reference([data, idx])[0])


def test_gather_elements_reference_matches_onnxruntime():
    data = values((3, 4, 5), "float32")
    for axis, shape in ((0, (2, 4, 5)), (-1, (3, 2, 7)), (1, (2, 4, 3))):
        idx = indices(shape, data.shape[axis], seed=axis + 5)
        np.testing.assert_array_equal(
            GatherElements(axis=axis).reference([data, idx])[0],
            ort_run("GatherElements", [data, idx], axis=axis),
        )


def test_gather_elements_out_of_range_and_bad_shapes():
    data = values((3, 4), "float32")
    kernel, _ = run_in_arena(GatherElements(axis=1), [data, np.array([[0, -4], [3, 4]], np.int64)])
    with pytest.raises(InputValueError, match="index 4 is out of range for axis 1 of size 4"):
        kernel()
    with pytest.raises(ShapeError, match="exceed data"):
        GatherElements(axis=1).infer([(3, 4), (4, 4)], [None, None])
    with pytest.raises(ShapeError, match="rank"):
        GatherElements().infer([(3, 4), (3,)], [None, None])


# ---- GatherND -----------------------------------------------------------------------------------

ND_CASES = [  # data shape, indices shape, batch_dims
    ((5,), (3, 1), 0),
    ((4, 3), (2, 2), 0),
    ((4, 3), (1,), 0),
    ((2, 3, 4), (2, 2, 1), 1),
    ((2, 3, 4, 5), (2, 3, 1, 1), 2),
    ((3, 1, 4, 2), (5, 2), 0),
]


@pytest.mark.parametrize("data_shape,index_shape,batch_dims", ND_CASES, ids=str)
def test_gather_nd_matches_reference_and_onnxruntime(data_shape, index_shape, batch_dims):
    data = values(data_shape, "float32")
    k = index_shape[-1]
    rng = np.random.default_rng(2)
    dims = np.array(data_shape[batch_dims : batch_dims + k])
    idx = (rng.integers(-dims, dims, (*index_shape[:-1], k))).astype(np.int64)
    op = GatherND(batch_dims=batch_dims)
    kernel, (y,) = run_in_arena(op, [data, idx])
    kernel()
    want = op.reference([data, idx])[0]
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(want, ort_run("GatherND", [data, idx], batch_dims=batch_dims, opset=13))


def test_gather_nd_integer_data_and_out_of_range():
    data = values((3, 4), "int64")
    kernel, (y,) = run_in_arena(GatherND(), [data, np.array([[2, -1], [0, 0]], np.int64)])
    kernel()
    np.testing.assert_array_equal(y, [data[2, 3], data[0, 0]])
    kernel, _ = run_in_arena(GatherND(), [data, np.array([[2, 1], [3, 0]], np.int64)])
    with pytest.raises(InputValueError, match="index 3 is out of range for data dimensions of size 3"):
        kernel()
    with pytest.raises(ShapeError, match="index tuples of length 3"):
        GatherND().infer([(3, 4), (2, 3)], [None, None])
    with pytest.raises(ShapeError, match="differ"):
        GatherND(batch_dims=1).infer([(3, 4), (2, 1)], [None, None])


# ---- all three ----------------------------------------------------------------------------------


def test_kernels_allocate_nothing():
    data = values((8, 50, 16), "float32")
    for op, idx in (
        (Gather(axis=1), indices((3, 7), 50)),
        (GatherElements(axis=1), indices((8, 20, 16), 50)),
        (GatherND(batch_dims=1), indices((8, 9, 1), 50)),
    ):
        kernel, _ = run_in_arena(op, [data, idx])
        assert_no_numpy_allocations(kernel)


def test_registered_never_sliced_priced_by_bytes():
    for name, op in (("Gather", Gather()), ("GatherElements", GatherElements()), ("GatherND", GatherND())):
        assert op_class(name) is type(op)
        assert op.slice_axes([(4, 3), (2, 1)], [(2, 1, 3)]) == ()
        assert op.cost_kind([(4, 3), (2, 1)]) == "memory"
    assert Gather.onnx_attribute_names() == {"axis"}
    assert GatherND.onnx_attribute_names() == {"batch_dims"}


# ---- models -------------------------------------------------------------------------------------

VOCAB, WIDTH, TOKENS, HIDDEN = 1000, 64, 16, 1024


def embedding_model() -> onnx.ModelProto:
    """Token ids [1, 16] int64 -> Gather from a [1000, 64] table -> MatMul -> Add: the front of a
    transformer; a second output picks the first ("CLS") row of the activations at run time."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((VOCAB, WIDTH)).astype(np.float32)
    weight = (rng.standard_normal((WIDTH, HIDDEN)) / 8).astype(np.float32)
    bias = rng.standard_normal(HIDDEN).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embed", axis=0),
        helper.make_node("MatMul", ["embedded", "weight"], ["projected"], name="project"),
        helper.make_node("Add", ["projected", "bias"], ["hidden"], name="bias"),
        helper.make_node("Gather", ["hidden", "zero"], ["cls"], name="cls", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, TOKENS])],
        [
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, TOKENS, HIDDEN]),
            helper.make_tensor_value_info("cls", TensorProto.FLOAT, [1, HIDDEN]),
        ],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_embedding_model_matches_onnxruntime(tmp_path):
    ids = np.random.default_rng(1).integers(0, VOCAB, (1, TOKENS)).astype(np.int64)
    ids[0, :3] = [0, VOCAB - 1, -1]  # both ends of the table, and one from its end
    resident, smallest = assert_model_matches_ort(embedding_model(), {"ids": ids}, tmp_path)
    assert smallest < resident  # the table and the projection take turns in the arena


def test_embedding_out_of_range_token_fails_the_request_naming_the_node(tmp_path):
    path = save(embedding_model(), tmp_path / "model.onnx")
    ids = np.zeros((1, TOKENS), np.int64)
    with flexnnd.Session(path, threads=1, cache_dir=tmp_path / "cache") as sess:
        ids[0, 5] = VOCAB
        with pytest.raises(
            InputValueError, match="node 'embed' \\(Gather\\): index 1000 is out of range"
        ) as e:
            sess.run({"ids": ids})
        assert e.value.node == "embed"
        ids[0, 5] = 7  # the session stays usable
        assert sess.run({"ids": ids})["hidden"].shape == (1, TOKENS, HIDDEN)


def test_runtime_indices_into_activations_match_onnxruntime(tmp_path):
    """GatherElements and GatherND on activations, with indices fed at run time (int32 and int64)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("GatherElements", ["r", "pick"], ["picked"], axis=2),
        helper.make_node("GatherND", ["r", "rows"], ["rows_out"], batch_dims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5]),
            helper.make_tensor_value_info("pick", TensorProto.INT32, [2, 3, 4]),
            helper.make_tensor_value_info("rows", TensorProto.INT64, [2, 2, 1]),
        ],
        [
            helper.make_tensor_value_info("picked", TensorProto.FLOAT, [2, 3, 4]),
            helper.make_tensor_value_info("rows_out", TensorProto.FLOAT, [2, 2, 5]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    feeds = {
        "x": values((2, 3, 5), "float32"),
        "pick": indices((2, 3, 4), 5, "int32"),
        "rows": indices((2, 2, 1), 3, seed=9),
    }
    assert_model_matches_ort(model, feeds, tmp_path)


def test_an_embedding_table_is_cut_by_rows_and_its_parts_fill_the_output():
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    ids = np.array([[9, 0, -1, 4, 4, 5]], dtype=np.int64)
    op, kept = Gather.from_onnx({}, [table, None], "embed", 13)
    assert op.table and op.vocab == 10 and kept == (0, 1)
    assert op.slice_axes([(10, 4), (1, 6)], [(1, 6, 4)]) == (SliceAxis("channels", 10),)
    assert Gather.from_onnx({}, [None, None], "g", 13)[0].slice_axes([(10, 4), (1, 6)], [(1, 6, 4)]) == ()
    out = np.full((1, 6, 4), np.nan, np.float32)
    for a, b in ((0, 3), (3, 7), (7, 10)):
        run = op.bind([table[a:b], ids], [out], None, Part("channels", a, b))
        run()
        assert_no_numpy_allocations(run)
    np.testing.assert_array_equal(out, table[ids % 10])
    bad = np.array([[10, 0, 0, 0, 0, 0]], dtype=np.int64)
    with pytest.raises(InputValueError, match="out of range"):
        op.bind([table[0:3], bad], [out], None, Part("channels", 0, 3))()
