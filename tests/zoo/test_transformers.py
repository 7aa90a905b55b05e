"""The zoo's transformers, narrowed (vit_mini, bert_mini, gpt2_mini and its decoder step): the
exporter's graph shapes, masks that really mask, a static cache that reproduces the one-step graph,
and flexnn's import against ONNX Runtime at all-resident and the smallest rung.
The full-size models run the same code with bigger numbers; tests/test_zoo_vs_onnxruntime.py has them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

import flexnnd
from flexnnd import zoo
from flexnnd.graph.package import read_package
from tests.conftest import assert_model_matches_ort, save
from tests.zoo.inputs import example_feeds

# sum(p.numel() for p in model.parameters()) of the same configurations, worked out by hand in
# the same order as torch lists them (embeddings, per layer, final norm, head).
MINI_PARAMETERS = {
    # conv_proj 3*16*16*64+64, class token 64, positions 17*64, 2 x 33,472 per layer, ln 128, head 650
    "vit_mini": 49_216 + 64 + 1_088 + 2 * 33_472 + 128 + 650,
    # embeddings 1000*64 + 64*64 + 2*64 + ln 128, 2 x 49,984 per layer, pooler 64*64+64
    "bert_mini": 68_352 + 2 * 49_984 + 4_160,
    # wte 1000*64, wpe 64*64, 2 x 49,984 per layer, ln_f 128 (the LM head is wte)
    "gpt2_mini": 64_000 + 4_096 + 2 * 49_984 + 128,
    "gpt2_mini_decoder": 64_000 + 4_096 + 2 * 49_984 + 128,  # the same weights, with a cache
}


@pytest.mark.parametrize("name", zoo.MINI_MODELS)
def test_parameter_count_follows_the_configuration(name):
    assert zoo.parameter_count(zoo.build(name)) == MINI_PARAMETERS[name]


@pytest.mark.parametrize("name", zoo.MINI_MODELS)
def test_mini_transformer_matches_onnxruntime_all_resident_and_at_the_smallest_rung(name, tmp_path):
    model = zoo.build(name, seed=2)
    onnx.checker.check_model(model, full_check=True)
    resident, smallest = assert_model_matches_ort(model, example_feeds(model, 5), tmp_path)
    assert smallest < resident


@pytest.mark.parametrize(
    ("name", "written_out", "fused"),
    [
        ("vit_mini", {"Erf"}, "Gelu"),
        ("bert_mini", {"Erf"}, "Gelu"),
        ("gpt2_mini", {"Pow", "Tanh"}, "Gelu"),
    ],
)
def test_gelu_is_written_out_and_flexnn_fuses_it(name, written_out, fused, tmp_path):
    model = zoo.build(name)
    ops = {n.op_type for n in model.graph.node}
    assert written_out <= ops and fused not in ops
    assert "LayerNormalization" in ops
    folder = flexnnd.import_model(save(model, tmp_path / "m.onnx"), tmp_path / "pkg", ladder=False)
    imported = {n.op.op_type for n in read_package(folder).graph.nodes}
    assert fused in imported and not written_out & imported


def test_vit_attention_is_torchs_multihead_attention_written_out():
    model = zoo.build("vit_mini")
    ops = [n.op_type for n in model.graph.node]
    shapes = {n.output[0] for n in model.graph.node if n.op_type == "Shape"}
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] not in shapes]
    # Per layer: the packed in-projection split by three Gathers, two scores MatMuls and a Softmax.
    layers = ops.count("Softmax")
    assert layers == 2
    assert len(gathers) == 3 * layers + 1  # + x[:, 0] before the head
    assert ops.count("Gemm") == layers + 1  # out_proj on the [tokens, width] view, and the head
    assert {"Expand", "Concat", "Squeeze", "Unsqueeze", "Transpose", "Reshape"} <= set(ops)


def test_bert_mask_is_extended_as_the_exporter_writes_it_and_hides_padding():
    model = zoo.build("bert_mini")
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i.type.tensor_type.elem_type == TensorProto.INT64 for i in model.graph.input)
    readers = [n.op_type for n in model.graph.node if "attention_mask" in n.input]
    assert readers == ["Unsqueeze"]
    ops = [n.op_type for n in model.graph.node if n.op_type != "Constant"]
    start = ops.index("Cast")
    assert ops[start - 2 : start + 3] == ["Unsqueeze", "Unsqueeze", "Cast", "Sub", "Mul"]

    feeds = example_feeds(model, 1)
    padded = feeds["attention_mask"][0] == 0
    assert padded.any() and not padded.all()
    other = dict(feeds, input_ids=feeds["input_ids"].copy())
    other["input_ids"][0, padded] = (other["input_ids"][0, padded] + 1) % 1000
    hidden, pooled = _ort(model, feeds)
    other_hidden, other_pooled = _ort(model, other)
    # Tokens behind the mask change nothing the other positions see, only their own rows.
    np.testing.assert_array_equal(other_hidden[0, ~padded], hidden[0, ~padded])
    np.testing.assert_array_equal(other_pooled, pooled)
    assert not np.allclose(other_hidden[0, padded], hidden[0, padded])


def test_gpt2_is_causal_and_its_head_is_the_token_table():
    model = zoo.build("gpt2_mini")
    weights = {t.name: t for t in model.graph.initializer}
    tables = [t for t in weights.values() if list(t.dims) == [1000, 64]]
    assert [t.name for t in tables] == ["transformer.wte.weight"]  # tied: stored once
    last = model.graph.node[-1]
    transpose = next(n for n in model.graph.node if n.output[0] == last.input[1])
    assert (last.op_type, transpose.op_type, transpose.input[0]) == (
        "MatMul",
        "Transpose",
        "transformer.wte.weight",
    )
    masks = [t for t in weights.values() if t.data_type == TensorProto.BOOL]
    assert len(masks) == 2  # one lower-triangular buffer per layer, as each GPT2Attention holds
    assert np.array_equal(numpy_helper.to_array(masks[0])[0, 0], np.tril(np.ones((64, 64), dtype=bool)))
    assert sum(n.op_type == "Where" for n in model.graph.node) == 2

    feeds = example_feeds(model, 3)
    (logits,) = _ort(model, feeds)
    for t in (0, 4, 7):
        changed = feeds["input_ids"].copy()
        changed[0, t] = (changed[0, t] + 1) % 1000
        (other,) = _ort(model, {"input_ids": changed})
        # A token changes its own logits and later ones, never earlier ones.
        np.testing.assert_array_equal(other[0, :t], logits[0, :t])
        assert not np.allclose(other[0, t:], logits[0, t:])


def test_gpt2_decoder_steps_with_the_static_cache_reproduce_the_one_step_logits():
    one_step, decoder = zoo.build("gpt2_mini", seed=4), zoo.build("gpt2_mini_decoder", seed=4)
    assert zoo.parameter_count(decoder) == zoo.parameter_count(one_step)
    ids = example_feeds(one_step, 6)["input_ids"]
    (want,) = _ort(one_step, {"input_ids": ids})
    import onnxruntime as ort

    session = ort.InferenceSession(decoder.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    # Garbage past the position being written: the mask must hide it, as a reused cache holds it.
    cache = {
        i.name: np.full([d.dim_value for d in i.type.tensor_type.shape.dim], 1e4, np.float32)
        for i in decoder.graph.input
        if i.name.startswith("past_key_values")
    }
    assert len(cache) == 4 and outputs[1:] == [n.replace("past_key_values", "present") for n in cache]
    for t in range(ids.shape[1]):
        feeds = {"input_ids": ids[:, t : t + 1], "cache_position": np.array([t]), **cache}
        got = dict(zip(outputs, session.run(None, feeds), strict=True))
        np.testing.assert_allclose(got["logits"][0, 0], want[0, t], rtol=0, atol=1e-5)
        cache = {name: got[name.replace("past_key_values", "present")] for name in cache}


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
