"""Einsum: the lowered kernel against its reference on the equations exporters write, the reference
against ONNX Runtime, allocation-free runs, refusals, and an attention block end to end."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import COST_GEMM, COST_MEMORY
from flexnnd.ops.einsum import Einsum
from tests.conftest import assert_model_matches_ort
from tests.ops.harness import arena_views, assert_no_numpy_allocations, ort_run, run_in_arena

CASES = [
    ("bij,bjk->bik", [(3, 5, 7), (3, 7, 4)], ("view", "view"), False),
    ("bhid,bhjd->bhij", [(1, 2, 5, 8), (1, 2, 3, 8)], ("view", "transposed"), False),
    ("bhij,bhjd->bhid", [(2, 3, 4, 5), (2, 3, 5, 6)], ("view", "view"), False),
    ("...ij,...jk->...ik", [(2, 3, 4, 5), (2, 3, 5, 6)], ("view", "view"), False),
    ("...ij,...jk->...ik", [(2, 1, 4, 5), (1, 3, 5, 6)], None, None),  # batch broadcast both ways
    ("bqhd,bkhd->bhqk", [(2, 5, 3, 4), (2, 6, 3, 4)], None, None),  # operands need a permuting copy
    ("bhqk,bkhd->bqhd", [(2, 3, 4, 5), (2, 5, 3, 6)], None, None),  # the output too
    ("ij,kj->ik", [(3, 4), (5, 4)], None, None),
    ("ij,jk->ki", [(3, 4), (4, 5)], None, None),
    ("ij,jk", [(3, 4), (4, 5)], None, None),  # implicit output
    ("bij,jk->bik", [(2, 3, 4), (4, 5)], ("view", "view"), False),
    ("abcde,abcef->abcdf", [(2, 1, 3, 5, 7), (2, 4, 3, 7, 13)], None, None),  # rank 5, b broadcast
    ("abcde->ecadb", [(2, 3, 1, 5, 7)], None, None),
    ("i,j->ij", [(3,), (4,)], None, None),
    ("bij,bij->bij", [(2, 3, 13), (2, 3, 13)], None, None),
    ("bij,bij->bji", [(2, 3, 4), (2, 1, 4)], None, None),
    ("bij,bij->bij", [(2, 1, 4), (1, 3, 1)], None, None),
    ("i,i", [(5,), (5,)], None, None),
    ("ij,ij->i", [(3, 1), (3, 4)], None, None),
    ("...i,...i->...", [(2, 3, 4), (2, 3, 4)], None, None),
    ("ij->ji", [(3, 4)], None, None),
    ("bhwc->bchw", [(2, 3, 1, 5)], None, None),
    ("ij->i", [(3, 4)], ("view",), None),
    ("ij->j", [(3, 4)], ("copy",), None),
    ("abc->", [(2, 3, 4)], None, None),
    ("ba", [(3, 4)], None, None),  # implicit: the letters in alphabetical order
    ("Ab,bC->AC", [(2, 3), (3, 4)], None, None),
    ("->", [()], None, None),
    ("i->i", [(1,)], None, None),
    ("...->...", [(2, 3)], None, None),
]


def operands(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    return [np.asarray((rng.standard_normal(s) * 3).astype(dtype)) for s in shapes]


@pytest.mark.parametrize("dtype", ["float32", "int64", "int32"])
@pytest.mark.parametrize(("equation", "shapes", "arrange", "copy_out"), CASES, ids=[c[0] for c in CASES])
def test_einsum_matches_reference_and_ort(equation, shapes, arrange, copy_out, dtype):
    xs = operands(shapes, dtype, len(equation))
    op = Einsum(equation=equation)
    run, (y,) = run_in_arena(op, xs)
    y[...] = 99  # every element is written
    run()
    want = op.reference(xs)[0]
    assert y.dtype == want.dtype == np.dtype(dtype)
    assert y.shape == want.shape
    if dtype == "float32":
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            ort_run("Einsum", xs, opset=12, equation=equation), want, rtol=1e-5, atol=1e-5
        )
    else:
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(ort_run("Einsum", xs, equation=equation), want)
    assert_no_numpy_allocations(run)
    layout = op.typed([dtype])._layout(shapes)
    if arrange is not None:  # the exporters' forms run without copying their operands
        assert layout.arrange == arrange
    if copy_out is not None:
        assert layout.copy_out == copy_out


def test_einsum_declares_whole_runs_and_its_costs():
    op = Einsum(equation="bij,bjk->bik")
    shapes = [(3, 5, 7), (3, 7, 4)]
    assert op.slice_axes(shapes, [(3, 5, 4)]) == ()
    assert op.cost_kind(shapes) == COST_GEMM
    assert op.flops(shapes, [(3, 5, 4)]) == 2 * 3 * 5 * 7 * 4
    assert op.scratch_bytes(shapes) == 0
    assert Einsum(equation="ij->ji").cost_kind([(3, 4)]) == COST_MEMORY
    # A permuted copy's scratch is sized by the element type.
    copy = [(2, 5, 3, 4), (2, 6, 3, 4)]
    f32 = Einsum(equation="bqhd,bkhd->bhqk").typed(["float32"]).scratch_bytes(copy)
    i64 = Einsum(equation="bqhd,bkhd->bhqk").typed(["int64"]).scratch_bytes(copy)
    assert 0 < f32 < i64


@pytest.mark.parametrize(
    ("equation", "count", "why"),
    [
        ("ii->i", 1, "diagonals and traces"),
        ("...ii->...i", 1, "diagonals and traces"),
        ("ij,jk,kl->il", 3, "3 operands"),
        ("ij,jk->iz", 2, "appear in no operand"),
        ("i1->i", 1, "letters and one '...'"),
        ("ij->j->i", 1, "more than one '->'"),
        ("ij,jk->ik", 1, "names 2 operands"),
    ],
)
def test_einsum_refuses_clearly(equation, count, why):
    consts = [None] * count
    with pytest.raises(UnsupportedOp, match=why):
        Einsum.from_onnx({"equation": equation}, consts, "e", 12)


def test_einsum_shape_and_dtype_errors_name_them():
    op = Einsum(equation="ij,jk->ik")
    with pytest.raises(ShapeError, match=r"letter 'j' is 4 and 5"):
        op.infer([(3, 4), (5, 6)], [None, None])
    with pytest.raises(ShapeError, match="does not fit shape"):
        op.infer([(3, 4, 2), (4, 6)], [None, None])
    with pytest.raises(DtypeRefused, match="operand 1 is int64 but operand 0 is float32"):
        op.output_dtypes(["float32", "int64"])
    with pytest.raises(DtypeRefused, match="operand 0 is uint8"):
        op.output_dtypes(["uint8", "uint8"])


def test_einsum_bind_refuses_a_short_scratch():
    op = Einsum(equation="bqhd,bkhd->bhqk").typed(["float32"])
    shapes = [(2, 5, 3, 4), (2, 6, 3, 4)]
    a, b, y = arena_views([*shapes, (2, 3, 5, 6)])
    short = arena_views([(op.scratch_bytes(shapes) // 8,)])[0]
    with pytest.raises(ValueError, match="scratch of"):
        op.bind([a, b], [y], short)


def attention_model():
    """Multi-head attention as exporters write it with Einsum: q·kᵀ, softmax, ·v, heads merged."""
    heads, seq, dim = 2, 5, 4
    rng = np.random.default_rng(3)
    wq, wk, wv = (rng.standard_normal((8, heads, dim)).astype(np.float32) for _ in range(3))
    nodes = [
        helper.make_node("Einsum", ["x", "wq"], ["q"], equation="bsc,chd->bhsd"),
        helper.make_node("Einsum", ["x", "wk"], ["k"], equation="bsc,chd->bhsd"),
        helper.make_node("Einsum", ["x", "wv"], ["v"], equation="bsc,chd->bshd"),
        helper.make_node("Einsum", ["q", "k"], ["s"], equation="bhid,bhjd->bhij"),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("Einsum", ["p", "v"], ["o"], equation="bhij,bjhd->bihd"),
        helper.make_node("Einsum", ["o"], ["y"], equation="bihd->bdih"),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dim, seq, heads])],
        [numpy_helper.from_array(w, n) for n, w in (("wq", wq), ("wk", wk), ("wv", wv))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_einsum_attention_matches_ort(tmp_path):
    x = np.random.default_rng(4).standard_normal((1, 5, 8)).astype(np.float32)
    assert_model_matches_ort(attention_model(), {"x": x}, tmp_path)


def test_einsum_int64_model_matches_ort(tmp_path):
    """Integer operands through the importer and the arena: a sum over a letter of an int64 input."""
    w = np.arange(12, dtype=np.int64).reshape(3, 4) - 5
    graph = helper.make_graph(
        [
            helper.make_node("Einsum", ["ids", "w"], ["t"], equation="bi,ij->bj"),
            helper.make_node("Einsum", ["t"], ["y"], equation="bj->j"),
        ],
        "ints",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=8)
    assert_model_matches_ort(model, {"ids": np.array([[1, -2, 3], [40, 5, -6]], np.int64)}, tmp_path)


@pytest.mark.parametrize(
    ("equation", "shapes", "error"),
    [
        ("i,j->ij", [(1 << 20,), (1 << 20,)], "TensorTooLarge"),  # a 4 TiB outer product
        ("ij,jk->ik", [(3, 4), (5, 6)], "ShapeError"),
        ("ijk,jk->i", [(3, 4), (4, 5)], "ShapeError"),
        ("ii->i", [(3, 3)], "UnsupportedOp"),
    ],
)
def test_hostile_einsum_is_refused_at_import(equation, shapes, error):
    import flexnnd.errors
    from flexnnd.graph.onnx_import import import_onnx

    names = ["a", "b"][: len(shapes)]
    graph = helper.make_graph(
        [helper.make_node("Einsum", names, ["y"], equation=equation)],
        "hostile",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(names, shapes, strict=True)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=8)
    with pytest.raises(getattr(flexnnd.errors, error), match="Einsum"):
        import_onnx(model)
