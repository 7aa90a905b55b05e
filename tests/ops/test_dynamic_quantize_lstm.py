"""com.microsoft.DynamicQuantizeLSTM: the kernel against the reference, the reference against ONNX
Runtime (every direction, int8 and uint8 weights, per-direction and per-column scales, initial states,
sequence lengths, peepholes, clip), what quantizing X and H changes, refusals, the importer's
handling of the contrib domain, and a model end to end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd.errors import DtypeRefused, InputValueError, ShapeError, UnsupportedOp
from flexnnd.graph.check import SUPPORTED, check_model
from flexnnd.graph.onnx_import import check_ops_before_weights
from flexnnd.ops.base import COST_GEMM, op_class
from flexnnd.ops.dynamic_quantize_lstm import DynamicQuantizeLSTM
from flexnnd.ops.recurrent import LSTM
from tests.conftest import assert_close_to_reference, assert_model_matches_ort
from tests.ops.harness import arena_views, assert_no_numpy_allocations

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
CASES = {
    "forward_int8": dict(),
    "forward_uint8": dict(signed=False),
    "forward_per_column": dict(per_column=True, h0=True),
    "reverse_seq": dict(direction="reverse", seq=[5, 2, 3], h0=True),
    "bidirectional_seq_zero": dict(direction="bidirectional", seq=[5, 0, 3], h0=True, c0=True, peep=True),
    "bidirectional_uint8_columns_clip": dict(
        direction="bidirectional", signed=False, per_column=True, bias=False, clip=0.5
    ),
    "input_forget_peep": dict(input_forget=1, peep=True, c0=True),
    "activations": dict(
        activations=["HardSigmoid", "Tanh", "Softsign"], activation_alpha=[0.3], activation_beta=[0.6]
    ),
}
SIZES = [(5, 3, 4, 3), (1, 1, 1, 1), (7, 2, 9, 17)]  # (steps, batch, input size, hidden size)


def make_inputs(steps, batch, inputs, hidden, *, seed=0, scale=0.02, **given):
    """The op and its twelve inputs (None where absent) for one case."""
    rng = np.random.default_rng(seed)
    direction = given.pop("direction", "forward")
    signed, per_column = given.pop("signed", True), given.pop("per_column", False)
    bias, seq, h0, c0, peep = (
        given.pop(k, d) for k, d in (("bias", True), ("seq", None), ("h0", 0), ("c0", 0), ("peep", 0))
    )
    dirs = 2 if direction == "bidirectional" else 1
    params = (dirs, 4 * hidden) if per_column else (dirs,)

    def normal(shape, s=1.0):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    def weight(shape):
        return (
            rng.integers(-128, 128, shape).astype(np.int8)
            if signed
            else rng.integers(0, 256, shape).astype(np.uint8)
        )

    def zero():  # ONNX Runtime takes 0 for int8; for uint8 one per direction, or one for all columns
        z = np.zeros(params, np.int8) if signed else np.zeros(params, np.uint8)
        if not signed:
            z[...] = rng.integers(100, 156) if per_column else rng.integers(100, 156, (dirs,))
        return z

    def scales():
        return (rng.random(params) * scale + scale / 4).astype(np.float32)

    ins = [
        normal((steps, batch, inputs)),
        weight((dirs, inputs, 4 * hidden)),
        weight((dirs, hidden, 4 * hidden)),
        normal((dirs, 8 * hidden), 0.5) if bias else None,
        None if seq is None else np.minimum(np.array(seq[:batch], np.int32), steps),
        normal((dirs, batch, hidden)) if h0 else None,
        normal((dirs, batch, hidden)) if c0 else None,
        normal((dirs, 3 * hidden)) if peep else None,
        scales(),
        zero(),
        scales(),
        zero(),
    ]
    return DynamicQuantizeLSTM(hidden_size=hidden, direction=direction, **given), ins


def bind(op, ins, n_outputs=None):
    """Bind `op` to arena views of its prepared inputs (None stays absent) and of its outputs."""
    shapes = [None if a is None else a.shape for a in ins]
    out_shapes = op.infer(shapes, [None] * len(ins))[:n_outputs]
    ins = op.prepare(ins)  # W and R minus their zero points, the scales per column
    given = [a for a in ins if a is not None]
    views = arena_views(
        [a.shape for a in given] + list(out_shapes),
        [str(a.dtype) for a in given] + ["float32"] * len(out_shapes),
    )
    it = iter(views)
    in_views = []
    for a in ins:
        view = None if a is None else next(it)
        if view is not None:
            view[...] = a
        in_views.append(view)
    outs = list(it)
    scratch = arena_views([(op.scratch_bytes(shapes) // 4,)])[0]
    return op.bind(in_views, outs, scratch), outs, in_views


def ort_node(op, ins):
    """ONNX Runtime's outputs (one thread: it then quantizes H over the whole batch, as flexnn)."""
    ort = pytest.importorskip("onnxruntime")
    names = ["" if a is None else f"in{i}" for i, a in enumerate(ins)]
    attrs = {
        k: v
        for k, v in op.to_dict().items()
        if k != "layout" and (v not in ((), 0, 0.0) or k == "hidden_size")
    }
    node = helper.make_node(
        "DynamicQuantizeLSTM", names, ["y", "y_h", "y_c"], domain="com.microsoft", **attrs
    )
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in zip(names, ins, strict=True)
            if a is not None
        ],
        [onnx.ValueInfoProto(name=o) for o in ("y", "y_h", "y_c")],
    )
    model = helper.make_model(graph, opset_imports=OPSETS, ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {n: a for n, a in zip(names, ins, strict=True) if a is not None})


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_matches_reference(name, size):
    op, ins = make_inputs(*size, **dict(CASES[name]))
    run, outs, _ = bind(op, ins)
    run()
    want = op.reference(ins)
    assert len(outs) == len(want) == 3
    for got, ref in zip(outs, want, strict=True):
        assert_close_to_reference(got, ref)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_matches_onnxruntime(name):
    op, ins = make_inputs(6, 3, 5, 4, **dict(CASES[name]))
    for got, want in zip(op.reference(ins), ort_node(op, ins), strict=True):
        assert_close_to_reference(got, want)


def test_quantizing_x_and_h_is_what_matches():
    """The same LSTM on the dequantized weights in float is off ONNX Runtime by far more than the
    tolerance: the match above comes from quantizing X and each step's H as ONNX Runtime does."""
    op, ins = make_inputs(
        8, 4, 16, 12, direction="bidirectional", seq=[8, 3, 0, 6], h0=True, c0=True, scale=0.05
    )
    want = ort_node(op, ins)
    ours = op.reference(ins)
    run, outs, _ = bind(op, ins)
    run()
    for got, ref, theirs in zip(outs, ours, want, strict=True):
        assert_close_to_reference(ref, theirs)
        assert_close_to_reference(got, theirs)

    def dequantized(wpos, spos, zpos):
        w = (ins[wpos].astype(np.float32) - ins[zpos].astype(np.float32).reshape(2, 1, -1)) * ins[
            spos
        ].reshape(2, 1, -1)
        return np.ascontiguousarray(w.transpose(0, 2, 1))

    plain = LSTM(hidden_size=12, direction="bidirectional").reference(
        [ins[0], dequantized(1, 8, 9), dequantized(2, 10, 11), *ins[3:8]]
    )
    assert np.abs(plain[0] - want[0]).max() > 1e-2 * np.abs(want[0]).max()


def test_x_is_quantized_over_the_steps_run():
    """Past the longest sequence, X is not read: a large value there changes nothing (in ONNX
    Runtime as here), while the same value within a sequence coarsens every step's quantization."""
    op, ins = make_inputs(6, 3, 5, 4, direction="bidirectional", seq=[4, 2, 3], h0=True)
    base = op.reference(ins)
    ins[0][5] = 40.0
    run, outs, _ = bind(op, ins)
    run()
    for ref, got, want, before in zip(op.reference(ins), outs, ort_node(op, ins), base, strict=True):
        assert_close_to_reference(got, want)
        np.testing.assert_array_equal(ref, before)
    ins[0][3, 0, 0] = 40.0
    changed = op.reference(ins)
    assert_close_to_reference(changed[0], ort_node(op, ins)[0])
    assert np.abs(changed[0][:2] - base[0][:2]).max() > 1e-3  # steps before the value moved too


def test_captcha_sized_bidirectional_matches_onnxruntime():
    """ddddocr's reader's LSTM: 512 inputs and hidden units, int8 weights, one scale per direction."""
    op, ins = make_inputs(12, 1, 512, 512, direction="bidirectional", h0=True, c0=True, scale=0.0005)
    run, outs, _ = bind(op, ins)
    run()
    for got, want in zip(outs, ort_node(op, ins), strict=True):
        assert_close_to_reference(got, want)


def test_prepare_stores_weights_minus_zero_point():
    op, ins = make_inputs(3, 2, 4, 3, signed=False, per_column=True)
    ins[9][...] = 128
    prepared = op.prepare(ins)
    assert prepared[1].dtype == np.int8  # 0..255 minus 128 fits int8
    np.testing.assert_array_equal(prepared[1], ins[1].astype(np.int16) - 128)
    ins[9][...] = np.arange(12, dtype=np.uint8)  # one per column (beyond ONNX Runtime, which takes one)
    prepared = op.prepare(ins)
    assert prepared[1].dtype == np.int16
    np.testing.assert_array_equal(prepared[1], ins[1].astype(np.int16) - np.arange(12).reshape(1, 1, 12))
    assert prepared[8].shape == prepared[10].shape == (1, 12)
    assert op.prepare(make_inputs(3, 2, 4, 3)[1])[8].shape == (1, 12)  # one scale, repeated per column


def test_allocates_nothing():
    op, ins = make_inputs(6, 2, 8, 16, direction="bidirectional", seq=[6, 3], h0=True, c0=True, peep=True)
    run, _, _ = bind(op, ins)
    assert_no_numpy_allocations(run)


def test_fewer_outputs_are_bound():
    op, ins = make_inputs(5, 3, 4, 3, h0=True, c0=True)
    want = op.reference(ins)
    for n in (1, 2):
        run, outs, _ = bind(op, ins, n_outputs=n)
        run()
        assert len(outs) == n
        for got, ref in zip(outs, want, strict=False):
            assert_close_to_reference(got, ref)


@pytest.mark.parametrize("lens", [[5, 6, 1], [2, -1, 3]])
def test_lying_sequence_lens_fail_the_request(lens):
    op, ins = make_inputs(5, 3, 4, 3, direction="bidirectional", seq=[5, 5, 5])
    run, outs, views = bind(op, ins)
    views[4][...] = np.array(lens, np.int32)
    for out in outs:
        out[...] = 7.0
    with pytest.raises(InputValueError, match=r"sequence_lens\[\d\] = -?\d+ is outside \[0, 5\]"):
        run()
    assert all((out == 7.0).all() for out in outs)  # nothing written
    views[4][...] = np.array([5, 2, 0], np.int32)
    run()
    assert_close_to_reference(outs[0], op.reference([*ins[:4], views[4].copy(), *ins[5:]])[0])


def test_registration_and_planning():
    op, ins = make_inputs(5, 2, 4, 3)
    shapes = [None if a is None else a.shape for a in ins]
    assert op_class("com.microsoft.DynamicQuantizeLSTM") is DynamicQuantizeLSTM
    assert op.slice_axes(shapes, op.infer(shapes, [None] * 12)) == ()
    assert op.cost_kind(shapes) == COST_GEMM
    assert "layout" not in DynamicQuantizeLSTM.accepted_attributes(1)


def test_refusals():
    op, ins = make_inputs(5, 2, 4, 3)
    dtypes = [None if a is None else str(a.dtype) for a in ins]
    assert op.output_dtypes(dtypes) == ["float32"] * 3
    with pytest.raises(DtypeRefused, match="W and R"):
        op.output_dtypes(["float32", "int8", "uint8", *dtypes[3:]])
    with pytest.raises(DtypeRefused, match="W_zero_point is uint8"):
        op.output_dtypes([*dtypes[:9], "uint8", *dtypes[10:]])
    with pytest.raises(DtypeRefused, match="X is float16"):
        op.output_dtypes(["float16", *dtypes[1:]])
    with pytest.raises(ShapeError, match=r"W_scale has shape \(3,\)"):
        op.infer([*(None if a is None else a.shape for a in ins[:8]), (3,), (1,), (1,), (1,)], [None] * 12)
    with pytest.raises(ShapeError, match="W has shape"):
        op.infer([(5, 2, 4), (1, 12, 4), *(None if a is None else a.shape for a in ins[2:])], [None] * 12)
    with pytest.raises(UnsupportedOp, match="8 inputs"):
        DynamicQuantizeLSTM.from_onnx({"hidden_size": 3}, [None] * 8, "n", 17)
    with pytest.raises(UnsupportedOp, match="layout"):
        DynamicQuantizeLSTM.from_onnx({"hidden_size": 3, "layout": 1}, [None] * 12, "n", 17)
    with pytest.raises(UnsupportedOp, match="direction"):
        DynamicQuantizeLSTM.from_onnx({"hidden_size": 3, "direction": "sideways"}, [None] * 12, "n", 17)


def recognizer(path_dir, other_op=None):
    """X (T, 1, 6) -> DynamicQuantizeLSTM (bidirectional, hidden 5, initial states from inputs) ->
    Y, Y_h, Y_c; `other_op` swaps in another com.microsoft op name."""
    _, ins = make_inputs(7, 1, 6, 5, direction="bidirectional", h0=True, c0=True, scale=0.05)
    names = ["x", "w", "r", "b", "", "h0", "c0", "", "ws", "wz", "rs", "rz"]
    inits = [
        numpy_helper.from_array(a, n)
        for n, a in zip(names, ins, strict=True)
        if n and n not in ("x", "h0", "c0")
    ]
    node = helper.make_node(
        other_op or "DynamicQuantizeLSTM", names, ["y", "y_h", "y_c"], domain="com.microsoft",
        direction="bidirectional", hidden_size=5,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "recognizer",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ins[i].shape)
            for i, n in ((0, "x"), (5, "h0"), (6, "c0"))
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "y_h", "y_c")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=OPSETS, ir_version=9)
    path = path_dir / "recognizer.onnx"
    onnx.save(model, path)
    return model, path, {"x": ins[0], "h0": ins[5], "c0": ins[6]}


def test_model_end_to_end(tmp_path):
    model, path, feeds = recognizer(tmp_path)
    check_ops_before_weights(path)  # the pre-scan takes the contrib op
    report = check_model(path)
    assert [(o["op"], o["status"]) for o in report["ops"]] == [
        ("com.microsoft.DynamicQuantizeLSTM", SUPPORTED)
    ]
    assert_model_matches_ort(model, feeds, tmp_path)


def test_other_contrib_ops_are_still_refused(tmp_path):
    _, path, _ = recognizer(tmp_path, other_op="DynamicQuantizeGRU")
    with pytest.raises(UnsupportedOp, match=r"com\.microsoft\.DynamicQuantizeGRU.*custom domain"):
        check_ops_before_weights(path)


def test_a_default_domain_node_is_not_the_contrib_op(tmp_path):
    """A node of the default domain whose op_type spells the registered name is not the contrib op."""
    model, path, _ = recognizer(tmp_path)
    model.graph.node[0].domain = ""
    model.graph.node[0].op_type = "com.microsoft.DynamicQuantizeLSTM"
    onnx.save(model, path)
    with pytest.raises(UnsupportedOp, match=r"unsupported op ai\.onnx\.com\.microsoft\.DynamicQuantizeLSTM"):
        check_ops_before_weights(path)
