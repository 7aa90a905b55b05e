"""LSTM, GRU and RNN: the kernel against the reference (every direction, layout, optional input and
activation), the reference against ONNX Runtime, lying sequence lengths, refusals, and two small
models (a CNN+BiLSTM+CTC-style recognizer, a GRU voice-activity detector) end to end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd.errors import FlexnnError, InputValueError, ShapeError, UnsupportedOp
from flexnnd.ops.base import COST_GEMM, op_class
from flexnnd.ops.recurrent import GRU, LSTM, RNN
from tests.conftest import assert_close_to_reference, assert_model_matches_ort
from tests.ops.harness import arena_views, assert_no_numpy_allocations

# (op class, attributes and which optional inputs are given): the cases every check below runs.
CASES = {
    "lstm": (LSTM, {}),
    "lstm_bias": (LSTM, dict(bias=True)),
    "lstm_bi_states_peepholes": (
        LSTM,
        dict(direction="bidirectional", bias=True, h0=True, c0=True, peep=True),
    ),
    "lstm_reverse_seq": (LSTM, dict(direction="reverse", seq=[5, 2, 3], h0=True)),
    "lstm_bi_seq_zero": (LSTM, dict(direction="bidirectional", seq=[5, 0, 3], h0=True, c0=True)),
    "lstm_c0_only": (LSTM, dict(c0=True, bias=True)),  # initial_h absent between given inputs
    "lstm_clip": (LSTM, dict(clip=0.3, bias=True)),
    "lstm_input_forget": (LSTM, dict(input_forget=1, peep=True)),
    "lstm_acts": (
        LSTM,
        dict(
            activations=["HardSigmoid", "LeakyRelu", "Softsign"],
            activation_alpha=[0.3, 0.1],
            activation_beta=[0.6],
        ),
    ),
    "gru": (GRU, {}),
    "gru_bias_h0": (GRU, dict(bias=True, h0=True)),
    "gru_reverse_lbr": (GRU, dict(direction="reverse", linear_before_reset=1, bias=True, h0=True)),
    "gru_bi_seq": (GRU, dict(direction="bidirectional", seq=[1, 5, 0], bias=True)),
    "gru_clip_lbr": (GRU, dict(clip=0.4, linear_before_reset=1, bias=True)),
    "gru_clip_reverse": (GRU, dict(clip=0.4, direction="reverse", bias=True, seq=[2, 5, 4])),
    "gru_bi_acts": (
        GRU,
        dict(direction="bidirectional", activations=["Sigmoid", "Relu", "HardSigmoid", "Tanh"]),
    ),
    "rnn": (RNN, {}),
    "rnn_bi_seq_h0": (RNN, dict(direction="bidirectional", seq=[3, 5, 1], h0=True, bias=True)),
    "rnn_relu_clip": (RNN, dict(activations=["Relu"], clip=0.5)),
    "rnn_elu": (RNN, dict(activations=["Elu"])),
    "rnn_softplus": (RNN, dict(activations=["Softplus"])),
    "rnn_affine": (RNN, dict(activations=["Affine"], activation_alpha=[0.5], activation_beta=[0.1])),
    "rnn_scaled_tanh": (RNN, dict(activations=["ScaledTanh"], activation_alpha=[0.5], activation_beta=[1.5])),
    "rnn_thresholded": (RNN, dict(activations=["ThresholdedRelu"], activation_alpha=[0.2])),
}
SIZES = [(5, 3, 4, 3), (1, 1, 1, 1), (7, 2, 9, 17)]  # (steps, batch, input size, hidden size)


def make_inputs(cls, steps, batch, inputs, hidden, *, layout=0, seed=0, **given):
    """The op and its inputs (None where absent) for one case."""
    rng = np.random.default_rng(seed)
    direction = given.pop("direction", "forward")
    dirs, g = (2 if direction == "bidirectional" else 1), cls.n_gates
    bias, seq, h0, c0, peep = (given.pop(k, None) for k in ("bias", "seq", "h0", "c0", "peep"))
    state = (batch, dirs, hidden) if layout else (dirs, batch, hidden)

    def normal(shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    ins = [
        normal((batch, steps, inputs) if layout else (steps, batch, inputs)),
        normal((dirs, g * hidden, inputs), 0.5),
        normal((dirs, g * hidden, hidden), 0.5),
        normal((dirs, 2 * g * hidden), 0.5) if bias else None,
        None if seq is None else np.minimum(np.array(seq[:batch], np.int32), steps),
        normal(state) if h0 else None,
    ]
    if cls is LSTM:
        ins += [normal(state) if c0 else None, normal((dirs, 3 * hidden)) if peep else None]
    while ins[-1] is None:
        ins.pop()
    return cls(hidden_size=hidden, direction=direction, layout=layout, **given), ins


def bind(op, ins, n_outputs=None):
    """Bind `op` to arena views of `ins` (None stays absent) and of its outputs."""
    shapes = [None if a is None else a.shape for a in ins]
    outs_shapes = op.infer(shapes, [None] * len(ins))[:n_outputs]
    ins = op.prepare(ins)  # R transposed, as the importer stores it
    given = [a for a in ins if a is not None]
    views = arena_views(
        [a.shape for a in given] + list(outs_shapes),
        [str(a.dtype) for a in given] + ["float32"] * len(outs_shapes),
    )
    it = iter(views)
    in_views = []
    for a in ins:
        if a is None:
            in_views.append(None)
        else:
            v = next(it)
            v[...] = a
            in_views.append(v)
    outs = list(it)
    nbytes = op.scratch_bytes(shapes)
    scratch = arena_views([(nbytes // 4,)])[0]
    return op.bind(in_views, outs, scratch), outs, in_views


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_matches_reference(name, size):
    cls, given = CASES[name]
    for layout in (0, 1):
        op, ins = make_inputs(cls, *size, layout=layout, **dict(given))
        run, outs, _ = bind(op, ins)
        run()
        want = op.reference(ins)
        assert len(outs) == len(want) == cls.n_outputs
        for got, ref in zip(outs, want, strict=True):
            assert_close_to_reference(got, ref)


def test_layout_1_is_layout_0_transposed():
    op0, ins0 = make_inputs(LSTM, 4, 3, 5, 6, direction="bidirectional", seq=[4, 1, 2], h0=True, c0=True)
    op1, _ = make_inputs(LSTM, 4, 3, 5, 6, layout=1, direction="bidirectional")
    ins1 = list(ins0)
    ins1[0] = ins0[0].transpose(1, 0, 2).copy()
    ins1[5], ins1[6] = (ins0[k].transpose(1, 0, 2).copy() for k in (5, 6))
    y0, yh0, yc0 = op0.reference(ins0)
    y1, yh1, yc1 = op1.reference(ins1)
    np.testing.assert_array_equal(y1, y0.transpose(2, 0, 1, 3))
    np.testing.assert_array_equal(yh1, yh0.transpose(1, 0, 2))
    np.testing.assert_array_equal(yc1, yc0.transpose(1, 0, 2))


def ort_node(op, ins, opset=14):
    """ONNX Runtime's outputs of one node with `op`'s attributes, every given input fed."""
    ort = pytest.importorskip("onnxruntime")
    names = ["" if a is None else f"in{i}" for i, a in enumerate(ins)]
    attrs = {k: v for k, v in op.to_dict().items() if v not in ((), 0, 0.0) or k == "hidden_size"}
    outs = ["y", "y_h", "y_c"][: op.n_outputs]
    graph = helper.make_graph(
        [helper.make_node(op.op_type, names, outs, **attrs)],
        "g",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in zip(names, ins, strict=True)
            if a is not None
        ],
        [onnx.ValueInfoProto(name=o) for o in outs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {n: a for n, a in zip(names, ins, strict=True) if a is not None})


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_matches_onnxruntime(name):
    """ONNX Runtime takes layout 0 only (it refuses batchwise recurrences)."""
    cls, given = CASES[name]
    op, ins = make_inputs(cls, 6, 3, 5, 4, **dict(given))
    for got, want in zip(op.reference(ins), ort_node(op, ins), strict=True):
        assert_close_to_reference(got, want)


@pytest.mark.parametrize("cls", [LSTM, GRU, RNN])
def test_allocates_nothing(cls):
    op, ins = make_inputs(cls, 6, 2, 8, 16, direction="bidirectional", bias=True, seq=[6, 3], h0=True)
    run, _, _ = bind(op, ins)
    assert_no_numpy_allocations(run)


def test_fewer_outputs_are_bound():
    """A node that names only Y (or Y and Y_h) gets that many outputs."""
    op, ins = make_inputs(LSTM, 5, 3, 4, 3, bias=True, h0=True, c0=True)
    want = op.reference(ins)
    for n in (1, 2):
        run, outs, _ = bind(op, ins, n_outputs=n)
        run()
        assert len(outs) == n
        for got, ref in zip(outs, want, strict=False):
            assert_close_to_reference(got, ref)


@pytest.mark.parametrize("lens", [[5, 6, 1], [2, -1, 3], [2, 3, 2**31 - 1]])
def test_lying_sequence_lens_fail_the_request(lens):
    op, ins = make_inputs(GRU, 5, 3, 4, 3, direction="bidirectional", seq=[5, 5, 5])
    run, outs, views = bind(op, ins)
    views[4][...] = np.array(lens, np.int32)
    for out in outs:
        out[...] = 7.0
    with pytest.raises(InputValueError, match=r"sequence_lens\[\d\] = -?\d+ is outside \[0, 5\]"):
        run()
    assert all((out == 7.0).all() for out in outs)  # nothing written
    views[4][...] = np.array([5, 2, 0], np.int32)
    run()  # the same binding serves the next, honest request
    assert_close_to_reference(outs[0], op.reference([*ins[:4], views[4].copy()])[0])


@pytest.mark.parametrize("lens", [[5, 6, 1], [2, -1, 3]])
def test_lying_constant_sequence_lens_are_refused_at_import(lens):
    op, ins = make_inputs(RNN, 5, 3, 4, 3, seq=[5, 5, 5])
    shapes = [None if a is None else a.shape for a in ins]
    consts = [None, ins[1], ins[2], None, np.array(lens, np.int32)]
    with pytest.raises(ShapeError, match=r"sequence_lens\[\d\] = -?\d+ is outside \[0, 5\]"):
        op.infer(shapes, consts)


def test_shapes_are_checked():
    op, ins = make_inputs(LSTM, 5, 3, 4, 3, h0=True)
    shapes = [None if a is None else a.shape for a in ins]
    with pytest.raises(ShapeError, match=r"R has shape \(1, 12, 4\), expected \(1, 12, 3\)"):
        op.infer([shapes[0], shapes[1], (1, 12, 4)], [None] * 3)
    with pytest.raises(ShapeError, match=r"initial_h has shape \(1, 2, 3\), expected \(1, 3, 3\)"):
        op.infer([*shapes[:5], (1, 2, 3)], [None] * 6)
    with pytest.raises(ShapeError, match="X must have rank 3"):
        op.infer([(5, 4), *shapes[1:3]], [None] * 3)


def test_refusals():
    with pytest.raises(UnsupportedOp, match="direction 'sideways'"):
        LSTM.from_onnx({"hidden_size": 3, "direction": "sideways"}, [None] * 3, "n", 14)
    with pytest.raises(UnsupportedOp, match="activation 'gelu' is not one of"):
        RNN.from_onnx({"hidden_size": 3, "activations": ["Gelu"]}, [None] * 3, "n", 14)
    with pytest.raises(UnsupportedOp, match="1 activations given, GRU forward takes 2"):
        GRU.from_onnx({"hidden_size": 3, "activations": ["Sigmoid"]}, [None] * 3, "n", 14)
    with pytest.raises(UnsupportedOp, match="2 activations given, GRU bidirectional takes 4"):
        GRU.from_onnx(
            {"hidden_size": 3, "direction": "bidirectional", "activations": ["Sigmoid", "Tanh"]},
            [None] * 3,
            "n",
            14,
        )
    with pytest.raises(UnsupportedOp, match="'thresholdedrelu' needs activation_alpha"):
        RNN.from_onnx({"hidden_size": 3, "activations": ["ThresholdedRelu"]}, [None] * 3, "n", 14)
    with pytest.raises(UnsupportedOp, match=r"clip -1\.0 is not positive"):
        LSTM.from_onnx({"hidden_size": 3, "clip": -1.0}, [None] * 3, "n", 14)
    with pytest.raises(UnsupportedOp, match="7 inputs, GRU takes at most 6"):
        GRU.from_onnx({"hidden_size": 3}, [None] * 7, "n", 14)
    with pytest.raises(UnsupportedOp, match="layout 2"):
        GRU.from_onnx({"hidden_size": 3, "layout": 2}, [None] * 3, "n", 14)
    op = LSTM(hidden_size=3)
    with pytest.raises(FlexnnError, match="input 4 is int64; LSTM takes int32 there"):
        op.output_dtypes(["float32", "float32", "float32", None, "int64"])
    assert op.output_dtypes(["float32", "float32", "float32", None, "int32"]) == ["float32"] * 3
    assert GRU(hidden_size=3).output_dtypes(["float32"] * 3) == ["float32"] * 2


def test_registered_never_sliced():
    for name, cls in (("LSTM", LSTM), ("GRU", GRU), ("RNN", RNN)):
        assert op_class(name) is cls
        op, ins = make_inputs(cls, 5, 3, 4, 3)
        shapes = [a.shape for a in ins]
        outs = op.infer(shapes, [None] * 3)
        assert op.slice_axes(shapes, outs) == ()
        assert op.cost_kind(shapes) == COST_GEMM


# ---- models, end to end against ONNX Runtime -----------------------------------------------------


def _init(rng, name, shape, scale=0.3):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def recognizer(hidden=32, classes=11, opset=17):
    """A CNN+BiLSTM+CTC-style text recognizer: Conv/Relu over a [1, 1, 8, 32] line image, columns to
    a [T=16, N=1, C=64] sequence, a bidirectional LSTM, then per-step class log-probabilities."""
    rng = np.random.default_rng(3)
    c = 8
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c1"], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[1, 2], strides=[1, 2]),  # [1, 8, 8, 16]
        helper.make_node("Transpose", ["p1"], ["t1"], perm=[3, 0, 1, 2]),  # [16, 1, 8, 8]
        helper.make_node("Reshape", ["t1", "seq_shape"], ["seq"]),  # [16, 1, 64]
        helper.make_node(
            "LSTM", ["seq", "W", "R", "B"], ["y"], hidden_size=hidden, direction="bidirectional"
        ),
        helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]),  # [16, 1, 2, H]
        helper.make_node("Reshape", ["yt", "feat_shape"], ["feat"]),  # [16, 1, 2H]
        helper.make_node("MatMul", ["feat", "proj"], ["logits"]),
        helper.make_node("Add", ["logits", "proj_b"], ["logits_b"]),
        helper.make_node("LogSoftmax", ["logits_b"], ["log_probs"], axis=2),
    ]
    inits = [
        _init(rng, "conv_w", (c, 1, 3, 3)),
        _init(rng, "conv_b", (c,)),
        numpy_helper.from_array(np.array([16, 1, 64], np.int64), "seq_shape"),
        _init(rng, "W", (2, 4 * hidden, 64), 0.2),
        _init(rng, "R", (2, 4 * hidden, hidden), 0.2),
        _init(rng, "B", (2, 8 * hidden), 0.2),
        numpy_helper.from_array(np.array([16, 1, 2 * hidden], np.int64), "feat_shape"),
        _init(rng, "proj", (2 * hidden, classes)),
        _init(rng, "proj_b", (classes,)),
    ]
    graph = helper.make_graph(
        nodes,
        "recognizer",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 32])],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, [16, 1, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def test_recognizer_matches_onnxruntime(tmp_path):
    feeds = {"image": np.random.default_rng(0).standard_normal((1, 1, 8, 32)).astype(np.float32)}
    assert_model_matches_ort(recognizer(), feeds, tmp_path)


def voice_activity(frames=10, features=13, hidden=16):
    """A GRU voice-activity-style model: [frames, 1, features] -> GRU (initial state a runtime input,
    only Y_h named after a left-out Y) and per-frame Y -> MatMul -> Sigmoid speech probabilities."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node(
            "GRU",
            ["feats", "W", "R", "B", "", "h0"],
            ["y", "h_n"],
            hidden_size=hidden,
            linear_before_reset=1,
        ),
        helper.make_node("Squeeze", ["y", "axis1"], ["y3"]),  # [frames, 1, H]
        helper.make_node("MatMul", ["y3", "head"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["speech"]),
    ]
    inits = [
        _init(rng, "W", (1, 3 * hidden, features)),
        _init(rng, "R", (1, 3 * hidden, hidden)),
        _init(rng, "B", (1, 6 * hidden)),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        _init(rng, "head", (hidden, 1)),
    ]
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("feats", TensorProto.FLOAT, [frames, 1, features]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, hidden]),
        ],
        [
            helper.make_tensor_value_info("speech", TensorProto.FLOAT, [frames, 1, 1]),
            helper.make_tensor_value_info("h_n", TensorProto.FLOAT, [1, 1, hidden]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def test_voice_activity_gru_matches_onnxruntime(tmp_path):
    rng = np.random.default_rng(1)
    feeds = {
        "feats": rng.standard_normal((10, 1, 13)).astype(np.float32),
        "h0": rng.standard_normal((1, 1, 16)).astype(np.float32),
    }
    assert_model_matches_ort(voice_activity(), feeds, tmp_path)


def state_model(lens_input: bool):
    """An LSTM whose Y is left out while Y_h and Y_c are named; sequence_lens a runtime int32 input
    or a constant."""
    rng = np.random.default_rng(5)
    hidden, inputs = 5, 3
    nodes = [
        helper.make_node(
            "LSTM",
            ["x", "W", "R", "", "lens", "h0", "c0"],
            ["", "h_n", "c_n"],
            hidden_size=hidden,
            direction="reverse",
        )
    ]
    inits = [_init(rng, "W", (1, 4 * hidden, inputs)), _init(rng, "R", (1, 4 * hidden, hidden))]
    ins = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, inputs]),
        helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 2, hidden]),
        helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, 2, hidden]),
    ]
    if lens_input:
        ins.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [2]))
    else:
        inits.append(numpy_helper.from_array(np.array([3, 1], np.int32), "lens"))
    graph = helper.make_graph(
        nodes,
        "states",
        ins,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, hidden]) for n in ("h_n", "c_n")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("lens_input", [True, False])
def test_states_only_and_sequence_lens_match_onnxruntime(tmp_path, lens_input):
    rng = np.random.default_rng(2)
    feeds = {
        "x": rng.standard_normal((4, 2, 3)).astype(np.float32),
        "h0": rng.standard_normal((1, 2, 5)).astype(np.float32),
        "c0": rng.standard_normal((1, 2, 5)).astype(np.float32),
    }
    if lens_input:
        feeds["lens"] = np.array([4, 2], np.int32)
    assert_model_matches_ort(state_model(lens_input), feeds, tmp_path)


def test_session_refuses_lying_lengths(tmp_path):
    """A runtime length past the sequence fails the request; a constant one fails the import."""
    import flexnnd

    rng = np.random.default_rng(2)
    feeds = {
        n: rng.standard_normal(s).astype(np.float32)
        for n, s in (("x", (4, 2, 3)), ("h0", (1, 2, 5)), ("c0", (1, 2, 5)))
    }
    path = tmp_path / "lens.onnx"
    onnx.save(state_model(True), str(path))
    with flexnnd.Session(path, threads=1, cache_dir=tmp_path / "cache") as sess:
        with pytest.raises(InputValueError, match=r"sequence_lens\[1\] = 9 is outside \[0, 4\]"):
            sess.run({**feeds, "lens": np.array([4, 9], np.int32)})
        got = sess.run({**feeds, "lens": np.array([4, 2], np.int32)})  # the session stays usable
        assert got["h_n"].shape == (1, 2, 5)
    model = state_model(False)
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.array([3, -2], np.int32), "lens"))
    onnx.save(model, str(path))
    with pytest.raises(ShapeError, match=r"sequence_lens\[1\] = -2 is outside \[0, 4\]"):
        flexnnd.Session(path, threads=1, cache_dir=tmp_path / "cache2")


def test_weights_computed_at_run_time_are_refused(tmp_path):
    """W, R, B and P are weights: one fed at run time is refused at import, naming the input."""
    import flexnnd

    model = state_model(False)
    w = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(w.dims)))
    del model.graph.initializer[0]
    path = tmp_path / "w.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedOp, match=r"LSTM.*input 1 \('W'\) must be a constant"):
        flexnnd.Session(path, threads=1, cache_dir=tmp_path / "cache")
