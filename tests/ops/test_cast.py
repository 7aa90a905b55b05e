"""Cast and CastLike: every pair of element types flexnn holds against onnxruntime (NaN, infinities,
out-of-range values and ties included), float->float casts as aliases that cost nothing, float16
rounding, and models end to end."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import flexnnd
from flexnnd.errors import DtypeRefused, ShapeError, UnsupportedOp
from flexnnd.ops.base import Part, op_class
from flexnnd.ops.cast import HELD, Cast, CastLike
from tests.conftest import assert_model_matches_ort, save
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

T = TensorProto
HELD_TYPES = ["float32", "int64", "int32", "int16", "int8", "uint8", "uint16", "bool"]
ONNX_OF = {
    "float32": T.FLOAT,
    "int64": T.INT64,
    "int32": T.INT32,
    "int16": T.INT16,
    "int8": T.INT8,
    "uint8": T.UINT8,
    "uint16": T.UINT16,
    "bool": T.BOOL,
}
TARGETS = [*ONNX_OF.values(), T.FLOAT16, T.DOUBLE]


def source_values(dtype: str) -> np.ndarray:
    """Values that probe every conversion rule: ties, truncation, wrap-around, NaN and overflow."""
    if dtype == "float32":
        special = [np.nan, np.inf, -np.inf, 0.0, -0.0, 2.5, -2.5, 3.7, -3.7, 127.9, -128.9, 255.5, 300.5]
        special += [65504.0, 65519.0, 65520.0, 70000.0, 1e-8, 6e-8, 2.0**31, -(2.0**31), 1e10, -1e10, 2.0**63]
        spread = np.random.default_rng(0).standard_normal(40) * 10.0 ** np.arange(40) % 12
        return np.concatenate([special, spread]).astype(np.float32).reshape(4, 2, -1)
    if dtype == "bool":
        return np.array([True, False, True, True, False, False])
    info = np.iinfo(dtype)
    edges = [0, 1, info.max, info.min, info.max - 1, info.min + 1, 127, 128, 255, 256, 2049, 16777217]
    rng = np.random.default_rng(1).integers(info.min, info.max, 20, endpoint=True, dtype=dtype)
    return np.concatenate([np.array(edges).astype(dtype), rng])


def ready(op: Cast, source: str) -> Cast:
    op = op.typed([source])
    assert op.output_dtypes([source]) == [HELD[op.to]]
    return op


@pytest.mark.parametrize("source", HELD_TYPES)
def test_every_pair_matches_onnxruntime(source):
    x = source_values(source)
    for to in TARGETS:
        op = ready(Cast(to=to), source)
        kernel, (y,) = run_in_arena(op, [x])
        kernel()
        want = np.asarray(ort_run("Cast", [x], to=to, opset=19))
        # flexnn holds float16 and double as float32: the values are ONNX Runtime's, widened.
        assert y.dtype == (np.float32 if want.dtype.kind == "f" else want.dtype), (source, to)
        np.testing.assert_array_equal(y, want.astype(y.dtype), err_msg=f"{source} -> {T.DataType.Name(to)}")
        np.testing.assert_array_equal(op.reference([x])[0], y)


def test_float_to_integer_truncates_toward_zero():
    x = np.array([2.9, -2.9, 0.5, -0.5], np.float32)
    kernel, (y,) = run_in_arena(ready(Cast(to=T.INT64), "float32"), [x])
    kernel()
    np.testing.assert_array_equal(y, [2, -2, 0, 0])


def test_to_float16_rounds_to_even_and_overflows_to_inf():
    x = np.array([1 + 2**-11, 1 + 3 * 2**-11, 65504, 65519.99, 65520, 2**-25, -(2**-24)], np.float32)
    kernel, (y,) = run_in_arena(ready(Cast(to=T.FLOAT16), "float32"), [x])
    kernel()
    np.testing.assert_array_equal(y, [1.0, 1 + 2**-9, 65504, 65504, np.inf, 0.0, -(2**-24)])


def test_float_to_float_is_an_alias():
    for to in (T.FLOAT, T.DOUBLE):
        op = ready(Cast(to=to), "float32")
        assert op.alias and op.flops([(3, 4)], [(3, 4)]) == 0 and op.scratch_bytes([(3, 4)]) == 0
    assert ready(Cast(to=T.INT64), "int64").alias
    assert not ready(Cast(to=T.FLOAT16), "float32").alias  # rounds
    assert not ready(Cast(to=T.FLOAT), "int64").alias
    x = np.arange(6, dtype=np.float32)
    op = ready(Cast(to=T.FLOAT), "float32")
    assert op.bind([x], [x], None)() is None  # shared memory: nothing to do
    y = np.zeros(6, np.float32)
    op.bind([x], [y], None)()  # memory of its own (a graph output): copied
    np.testing.assert_array_equal(y, x)


def test_alias_survives_the_package_round_trip():
    op = ready(Cast(to=T.FLOAT), "float32")
    again = Cast.from_dict(op.to_dict())
    assert again == op and again.alias


def test_castlike_takes_a_constant_or_run_time_target():
    op, kept = CastLike.from_onnx({}, [None, np.zeros(2, np.uint8)], "like", 19)
    assert kept == (0,) and op.to == T.UINT8
    assert op.output_dtypes(["float32"]) == ["uint8"]
    op, kept = CastLike.from_onnx({}, [None, np.zeros(2, np.float16)], "like", 19)
    assert op.to == T.FLOAT16 and op.output_dtypes(["float32"]) == ["float32"] and not op.alias
    op, kept = CastLike.from_onnx({"saturate": 1}, [None, None], "like", 19)
    assert kept == (0, 1)
    op = op.typed(["int64", "float32"])
    assert op.output_dtypes(["int64", "float32"]) == ["float32"] and op.to == T.FLOAT
    x = source_values("int64")
    kernel, (y,) = run_in_arena(op, [x, np.zeros(3, np.float32)])
    kernel()
    np.testing.assert_array_equal(y, ort_run("CastLike", [x, np.zeros(3, np.float32)], opset=19))


def test_kernels_allocate_nothing():
    x = source_values("float32")
    for to in (T.INT64, T.UINT8, T.BOOL, T.FLOAT16):
        kernel, _ = run_in_arena(ready(Cast(to=to), "float32"), [x])
        assert_no_numpy_allocations(kernel)


def test_refusals_name_the_type():
    with pytest.raises(UnsupportedOp, match="to STRING"):
        Cast.from_onnx({"to": T.STRING}, [None], "c", 19)
    with pytest.raises(UnsupportedOp, match="to BFLOAT16"):
        Cast.from_onnx({"to": T.BFLOAT16}, [None], "c", 19)
    with pytest.raises(UnsupportedOp, match="to UNDEFINED"):
        Cast.from_onnx({}, [None], "c", 19)
    with pytest.raises(UnsupportedOp, match="target_type is uint32"):
        CastLike.from_onnx({}, [None, np.zeros(1, np.uint32)], "c", 19)
    with pytest.raises(DtypeRefused, match="uint32"):
        Cast(to=T.FLOAT).output_dtypes(["uint32"])
    with pytest.raises(UnsupportedOp, match="'to'"):
        CastLike.from_onnx({"to": T.FLOAT}, [None, None], "c", 19)
    x = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="not sliced"):
        ready(Cast(to=T.INT64), "float32").bind([x], [np.zeros(3, np.int64)], None, Part("rows", 0, 1))
    with pytest.raises(ShapeError, match="output"):
        ready(Cast(to=T.INT64), "float32").bind([x], [np.zeros(3, np.int32)], None)
    assert op_class("Cast") is Cast and op_class("CastLike") is CastLike
    assert Cast().slice_axes([(3,)], [(3,)]) == ()


def mixed_model():
    """Casts as exporters write them: ids to float, a float->float no-op, a float16 round trip
    (mixed precision), a mask to bool; the outputs keep float32 and integer types."""
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids_f"], name="ids_to_float", to=T.FLOAT),
        helper.make_node("Cast", ["x"], ["x_same"], name="noop", to=T.FLOAT),
        helper.make_node("Mul", ["x_same", "ids_f"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["half"], name="to_half", to=T.FLOAT16),
        helper.make_node("Cast", ["half"], ["back"], name="from_half", to=T.FLOAT),
        helper.make_node("Relu", ["back"], ["y"]),
        helper.make_node("Cast", ["y"], ["y_int"], name="to_int", to=T.INT32),
        helper.make_node("Cast", ["y_int"], ["y_bool"], name="to_bool", to=T.BOOL),
        helper.make_node("Where", ["y_bool", "ids", "minus_one"], ["kept"]),
        helper.make_node("CastLike", ["kept", "like"], ["kept_u8"], name="castlike"),
    ]
    graph = helper.make_graph(
        nodes,
        "casts",
        [
            helper.make_tensor_value_info("ids", T.INT64, [2, 5]),
            helper.make_tensor_value_info("x", T.FLOAT, [2, 5]),
        ],
        [
            helper.make_tensor_value_info("y", T.FLOAT, [2, 5]),
            helper.make_tensor_value_info("kept_u8", T.UINT8, [2, 5]),
        ],
        [
            numpy_helper.from_array(np.array(-1, np.int64), "minus_one"),
            numpy_helper.from_array(np.zeros(1, np.uint8), "like"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


def mixed_feeds():
    rng = np.random.default_rng(3)
    return {
        "ids": rng.integers(-3, 300, (2, 5)).astype(np.int64),
        "x": (rng.standard_normal((2, 5)) * 7).astype(np.float32),
    }


def test_cast_model_matches_onnxruntime(tmp_path):
    assert_model_matches_ort(mixed_model(), mixed_feeds(), tmp_path)


def test_float_to_float_cast_runs_no_step_and_shares_memory(tmp_path):
    path = save(mixed_model(), tmp_path / "model.onnx")
    with flexnnd.Session(path, threads=1, cache_dir=tmp_path / "cache") as sess:
        steps = {s.node for s in sess.plan.steps}
        assert {"ids_to_float", "to_half", "to_int", "to_bool"} <= steps
        # float32 -> float32, and float16 (held as float32) -> float32: no step, no memory of their own
        assert "noop" not in steps and "from_half" not in steps
        assert sess.plan.aliases["x_same"] == "x" and sess.plan.aliases["back"] == "half"
        sess.run(mixed_feeds())


def test_castlike_of_a_constant_to_a_run_time_type_gets_memory_of_its_own(tmp_path):
    """A constant lives with the weights: casting it to a run-time input's type, even the same type,
    is a copy into the arena, never an alias of a constant."""
    nodes = [
        helper.make_node("CastLike", ["w", "x"], ["w_like_x"]),
        helper.make_node("Add", ["w_like_x", "x"], ["y"]),
    ]
    weight = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", T.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    op, kept = CastLike.from_onnx({}, [weight, None], "like", 19)
    op = op.typed(["float32", "float32"])
    assert kept == (0, 1) and op.output_dtypes(["float32", "float32"]) == ["float32"] and not op.alias
    assert_model_matches_ort(model, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}, tmp_path)


def test_the_element_type_codes_are_onnxs():
    # cast.py spells TensorProto's codes out so the daemon need not import onnx.
    from flexnnd.ops import cast

    for name, code in cast.T.__members__.items():
        assert getattr(TensorProto, name) == code, name
