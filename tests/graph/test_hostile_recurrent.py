"""Recurrent ops that lie: sequence lengths beyond the sequence, negative or huge, and initial states
or lengths of the wrong shape or type. Each is a clear import error, or fails its one request at run
time (InputValueError, before any step reads a row past its tensor); the session serves the next."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import flexnnd
from flexnnd.errors import FeedError, InputValueError, ModelImportError, ShapeError, UnsupportedOp
from flexnnd.graph.onnx_import import import_onnx
from tests.conftest import assert_close_to_reference, ort_run, save

STEPS, BATCH, INPUTS, HIDDEN = 5, 3, 4, 6
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
RNG = np.random.default_rng(23)


def recurrent(
    op: str,
    direction: str = "forward",
    lens=None,
    lens_type=TensorProto.INT32,
    h0_shape=None,
    c0_shape=None,
):
    """One `op` over [STEPS, BATCH, INPUTS]. `lens`: None (absent), "input" (fed at run time) or
    constant values. h0_shape/c0_shape: initial states fed at run time, of those shapes."""
    dirs, gh = (2 if direction == "bidirectional" else 1), GATES[op] * HIDDEN
    inits = {
        "W": (RNG.standard_normal((dirs, gh, INPUTS)) / 3).astype(np.float32),
        "R": (RNG.standard_normal((dirs, gh, HIDDEN)) / 3).astype(np.float32),
        "B": (RNG.standard_normal((dirs, 2 * gh)) / 3).astype(np.float32),
    }
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, BATCH, INPUTS])]
    names = ["x", "W", "R", "B", "", "", ""]
    if isinstance(lens, str):
        inputs.append(helper.make_tensor_value_info("lens", lens_type, [BATCH]))
        names[4] = "lens"
    elif lens is not None:
        inits["lens"] = np.asarray(lens, np.int32)
        names[4] = "lens"
    for pos, name, shape in ((5, "h0", h0_shape), (6, "c0", c0_shape)):
        if shape is not None:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
            names[pos] = name
    names = names[: max(i for i, v in enumerate(names) if v) + 1]
    outputs = ["y", "yh"]
    node = helper.make_node(op, names, outputs, hidden_size=HIDDEN, direction=direction, name="rnn")
    graph = helper.make_graph(
        [node],
        "recurrent",
        inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


CASES = [("LSTM", "bidirectional"), ("GRU", "reverse"), ("RNN", "forward")]
LIES = {
    "past the sequence": STEPS + 1,
    "negative": -1,
    "int32 max": 2**31 - 1,
    "int32 min": -(2**31),
}


@pytest.mark.parametrize("op, direction", CASES, ids=[f"{o}-{d}" for o, d in CASES])
def test_lying_sequence_lengths_fail_the_request_and_the_next_one_runs(tmp_path, op, direction):
    path = save(recurrent(op, direction, lens="input"), tmp_path / "m.onnx")
    x = RNG.standard_normal((STEPS, BATCH, INPUTS)).astype(np.float32)
    with flexnnd.Session(path, threads=1, cache_dir=tmp_path / "cache") as sess:
        for what, lie in LIES.items():
            for row in (0, BATCH - 1):  # the first row, and a lie behind good rows
                lens = np.full(BATCH, STEPS, np.int32)
                lens[row] = lie
                with pytest.raises(
                    InputValueError, match=rf"node 'rnn' \({op}\): sequence_lens\[{row}\]"
                ) as info:
                    sess.run({"x": x, "lens": lens})
                assert f"= {lie} is outside [0, {STEPS}]" in str(info.value), what
        good = np.array([STEPS, 2, 1], np.int32)
        got = sess.run({"x": x, "lens": good})
    want = ort_run(path, {"x": x, "lens": good})
    for value, reference in zip((got["y"], got["yh"]), want, strict=True):
        assert_close_to_reference(value, reference)


@pytest.mark.parametrize("lie", list(LIES.values()), ids=list(LIES))
def test_constant_lying_sequence_lengths_are_import_errors(lie):
    lens = [STEPS, lie, 1]
    with pytest.raises(ShapeError, match=rf"sequence_lens\[1\] = {lie} is outside \[0, {STEPS}\]"):
        import_onnx(recurrent("LSTM", "bidirectional", lens=lens))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (
            {"lens": [STEPS] * (BATCH + 1)},
            rf"sequence_lens has shape \({BATCH + 1},\), expected \({BATCH},\)",
        ),
        ({"h0_shape": (1, BATCH, HIDDEN)}, rf"initial_h has shape \(1, {BATCH}, {HIDDEN}\), expected \(2, "),
        ({"h0_shape": (2, BATCH + 2, HIDDEN)}, r"initial_h has shape"),
        ({"h0_shape": (2, BATCH, HIDDEN), "c0_shape": (2, BATCH, HIDDEN - 1)}, r"initial_c has shape"),
        ({"h0_shape": (2, BATCH)}, r"initial_h has shape"),
    ],
    ids=["lens-longer-than-batch", "h0-one-direction", "h0-batch", "c0-hidden", "h0-rank"],
)
def test_states_and_lengths_of_the_wrong_shape_are_import_errors(kwargs, words):
    with pytest.raises(ShapeError, match=words):
        import_onnx(recurrent("LSTM", "bidirectional", **kwargs))


def test_sequence_lengths_of_another_type_are_refused_at_import():
    with pytest.raises(UnsupportedOp, match=r"LSTM \(node .rnn.*input 4 is int64; LSTM takes int32 there"):
        import_onnx(recurrent("LSTM", lens="input", lens_type=TensorProto.INT64))
    with pytest.raises(ModelImportError, match=r"int32"):
        import_onnx(recurrent("GRU", lens="input", lens_type=TensorProto.FLOAT))


def test_initial_states_fed_in_the_wrong_shape_fail_the_request(tmp_path):
    shape = (2, BATCH, HIDDEN)
    path = save(recurrent("LSTM", "bidirectional", h0_shape=shape, c0_shape=shape), tmp_path / "m.onnx")
    x = RNG.standard_normal((STEPS, BATCH, INPUTS)).astype(np.float32)
    h0 = RNG.standard_normal(shape).astype(np.float32)
    c0 = RNG.standard_normal(shape).astype(np.float32)
    with flexnnd.Session(path, threads=1, cache_dir=tmp_path / "cache") as sess:
        with pytest.raises(
            FeedError, match=r"input 'h0' has shape \(1, 3, 6\), the model expects \(2, 3, 6\)"
        ):
            sess.run({"x": x, "h0": h0[:1], "c0": c0})
        got = sess.run({"x": x, "h0": h0, "c0": c0})
    want = ort_run(path, {"x": x, "h0": h0, "c0": c0})
    for value, reference in zip((got["y"], got["yh"]), want, strict=True):
        assert_close_to_reference(value, reference)
