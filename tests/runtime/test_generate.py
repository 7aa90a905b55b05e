"""Generation with the key/value cache kept in the arena (Graph.state): greedy tokens against a numpy
GPT-2 over the same weights at the full and the smallest budget and across swaps, seeded sampling,
the cache neither fed nor returned, planned live for every step of every rung, and refusals."""

from __future__ import annotations

import dataclasses
import math
import mmap
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import flexnnd
from flexnnd.errors import FeedError, ModelImportError, PackageError
from flexnnd.graph.package import read_package
from flexnnd.planner.lifetimes import in_place_state
from flexnnd.planner.resident import plan_resident
from flexnnd.runtime.arena import Arena
from flexnnd.runtime.generate import cache_state, generate, stream
from flexnnd.zoo.gpt2 import GPT2_MINI, gpt2_cached
from tests.conftest import save

# The mini decoder with room for a prompt of 4 and 32 new tokens (and masked positions past them).
CONFIG = dataclasses.replace(GPT2_MINI, cache=40)
PROMPT = [464, 2, 999, 17]
NEW = 32


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> onnx.ModelProto:
    return gpt2_cached(CONFIG, "gpt2_mini_decoder", seed=3)


@pytest.fixture(scope="module")
def package(decoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("generate")
    path = save(decoder, folder / "decoder.onnx")
    return flexnnd.import_model(path, folder / "pkg", state=cache_state(o.name for o in decoder.graph.output))


@pytest.fixture(scope="module")
def reference(decoder) -> list[int]:
    return reference_greedy(decoder, PROMPT, NEW)


def smallest_budget(session) -> int:
    return min(e.arena_bytes for e in session.rungs.index) + session.output_bytes


def reference_greedy(model: onnx.ModelProto, prompt: list[int], new: int) -> list[int]:
    """Greedy tokens of a numpy GPT-2 (float64, no cache: the whole sequence each step)."""
    w = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    ids = list(prompt)
    for _ in range(new):
        ids.append(int(np.argmax(gpt2_logits(w, ids, CONFIG)[-1])))
    return ids[len(prompt) :]


def gpt2_logits(w: dict[str, np.ndarray], ids: list[int], c) -> np.ndarray:
    """transformers' GPT2LMHeadModel forward over `ids`: [len(ids), vocab]."""

    def norm(x, name):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def linear(x, name):
        return x @ w[f"{name}.weight"] + w[f"{name}.bias"]

    t, d = len(ids), c.head_width
    x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][:t]
    causal = np.tril(np.ones((t, t), bool))
    for layer in range(c.layers):
        name = f"transformer.h.{layer}"
        qkv = linear(norm(x, f"{name}.ln_1"), f"{name}.attn.c_attn")
        q, k, v = (a.reshape(t, c.heads, d).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=-1))
        scores = np.where(causal, q @ k.transpose(0, 2, 1) / math.sqrt(d), -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = (probs @ v).transpose(1, 0, 2).reshape(t, c.hidden)
        x = x + linear(attended, f"{name}.attn.c_proj")
        h = linear(norm(x, f"{name}.ln_2"), f"{name}.mlp.c_fc")
        h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        x = x + linear(h, f"{name}.mlp.c_proj")
    return norm(x, "transformer.ln_f") @ w["transformer.wte.weight"].T


@pytest.mark.parametrize("rung", ["full", "smallest"])
def test_greedy_tokens_equal_the_numpy_reference(package, reference, rung):
    with flexnnd.Session(package, threads=1) as session:
        if rung == "smallest":
            session.adopt(session.plan_for(smallest_budget(session)), None, overlap=False)
            assert session.plan.loads, "the smallest rung streams weights"
        got = generate(session, PROMPT, NEW)
    assert got.tokens == reference
    assert len(got.seconds) == NEW and all(s > 0 for s in got.seconds)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_budget_swap_between_tokens_keeps_the_cache(package, reference, overlap):
    """full -> smallest after 10 tokens -> full after 20: the tokens are those of one plan."""
    with flexnnd.Session(package, threads=1) as session:
        full, smallest = session.plan, session.plan_for(smallest_budget(session))
        assert smallest.arena_bytes < full.arena_bytes
        tokens = []
        for token, _ in stream(session, PROMPT, NEW):
            tokens.append(token)
            if len(tokens) in (10, 20):
                plan = smallest if len(tokens) == 10 else full
                if overlap:
                    session.adopt(plan, None, overlap=True)
                else:
                    session.set_budget(None if plan is full else smallest_budget(session))
            if len(tokens) == 15:
                assert session.plan.arena_bytes == smallest.arena_bytes
    assert tokens == reference


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(package, reference):
    with flexnnd.Session(package, threads=1) as session:
        first = generate(session, PROMPT, NEW, top_k=50, top_p=0.95, temperature=1.5, seed=7).tokens
        again = generate(session, PROMPT, NEW, top_k=50, top_p=0.95, temperature=1.5, seed=7).tokens
        other = generate(session, PROMPT, NEW, top_k=50, top_p=0.95, temperature=1.5, seed=8).tokens
        nucleus = generate(session, PROMPT, NEW, top_p=0.5, seed=7).tokens
        unfiltered = generate(session, PROMPT, NEW, greedy=False, temperature=2.0, seed=7).tokens
        assert unfiltered == generate(session, PROMPT, NEW, greedy=False, temperature=2.0, seed=7).tokens
        assert unfiltered != reference
        assert generate(session, PROMPT, NEW, top_k=1, seed=1).tokens == reference
    assert first == again and first != other and first != reference
    assert all(0 <= t < CONFIG.vocab for t in first + nucleus)


def test_the_cache_is_neither_fed_nor_returned(package):
    with flexnnd.Session(package, threads=1) as session:
        assert [t.name for t in session.inputs] == ["input_ids", "cache_position"]
        assert [t.name for t in session.outputs] == ["logits"]
        assert session.output_bytes == CONFIG.vocab * 4  # the logits' copy, no cache copies
        feeds = {"input_ids": np.array([[5]]), "cache_position": np.array([0])}
        assert list(session.run(feeds)) == ["logits"]
        state = session._executor.state_views()
        assert set(state) == {
            f"past_key_values.{i}.{k}" for i in range(CONFIG.layers) for k in ("key", "value")
        }
        assert all(np.any(v[:, :, 0]) and not np.any(v[:, :, 1:]) for v in state.values())
        session.reset_state()
        assert not any(np.any(v) for v in state.values())
        past = np.zeros((1, CONFIG.heads, CONFIG.cache, CONFIG.head_width), np.float32)
        with pytest.raises(FeedError, match=re.escape("unknown ['past_key_values.0.key']")):
            session.run({**feeds, "past_key_values.0.key": past})


def test_every_rung_keeps_the_cache_live_for_every_step(package):
    graph = read_package(package).graph
    cache = list(graph.state.values())
    cache_bytes = sum(graph.tensors[name].nbytes for name in cache)
    assert len(cache) == 2 * CONFIG.layers
    with flexnnd.Session(package, threads=1) as session:
        assert session.state_bytes == cache_bytes
        plans = session.ladder
    assert len(plans) > 2
    for plan in plans:
        for name in cache:
            region = plan.region[name]
            assert (region.first, region.last) == (0, len(plan.steps) - 1), (plan.budget, name)
        # Each ScatterElements updates its past in place: the arena holds the cache once.
        assert {plan.aliases.get(out) for out in graph.state} == set(cache)
        assert plan.arena_bytes >= cache_bytes
    # Without the state pairs the pasts die at their last reader: the extension is the state's doing.
    stateless = plan_resident(dataclasses.replace(graph, state={}))
    assert all(stateless.region[name].last < len(stateless.steps) - 1 for name in cache)


def test_refusals_name_their_numbers(package, decoder, tmp_path):
    with flexnnd.Session(package, threads=1) as session:
        with pytest.raises(FeedError, match=r"4 tokens and 37 new tokens need 41 cache positions.* holds 40"):
            generate(session, PROMPT, 37)
        with pytest.raises(FeedError, match=r"token id 1000 at prompt position 1 .*\[0, 1000\)"):
            generate(session, [3, 1000], 2)
        with pytest.raises(FeedError, match=r"token id -1 at prompt position 0"):
            generate(session, [-1], 2)
        with pytest.raises(FeedError, match="no token"):
            generate(session, [], 2)
        with pytest.raises(FeedError, match="greedy generation takes no top_k"):
            generate(session, PROMPT, 2, greedy=True, top_k=5)
        with pytest.raises(FeedError, match="top_p must be in"):
            generate(session, PROMPT, 2, top_p=0.0)
        assert generate(session, PROMPT, 36).tokens[:NEW] == generate(session, PROMPT, NEW).tokens
    # The same decoder without its state pairs is no decoder to generate with.
    plain = flexnnd.import_model(save(decoder, tmp_path / "d.onnx"), tmp_path / "plain", ladder=False)
    with flexnnd.Session(plain, threads=1) as session, pytest.raises(FeedError, match="0 state pairs"):
        generate(session, PROMPT, 2)


def test_state_pairs_are_checked_at_import(decoder, tmp_path):
    path = save(decoder, tmp_path / "d.onnx")
    with pytest.raises(ModelImportError, match=r"'logits' -> 'past_key_values\.0\.key'.*cannot become"):
        flexnnd.import_model(path, tmp_path / "a", ladder=False, state={"logits": "past_key_values.0.key"})
    with pytest.raises(ModelImportError, match="must name a graph output and a graph input"):
        flexnnd.import_model(path, tmp_path / "b", ladder=False, state={"present.0.key": "input_ids_typo"})
    with pytest.raises(ModelImportError, match="feed some input twice"):
        flexnnd.import_model(
            path,
            tmp_path / "c",
            ladder=False,
            state={"present.0.key": "past_key_values.0.key", "present.1.key": "past_key_values.0.key"},
        )


def test_a_blocking_swap_returns_the_old_arena_but_the_cache_before_copying_it():
    page = mmap.PAGESIZE
    arena = Arena(5 * page + 100)
    try:
        arena.bytes[:] = 1
        arena.drop_pages_except([(page + 10, 20), (3 * page - 1, 2)])
        kept = np.zeros(arena.nbytes, bool)
        kept[page : 4 * page] = True  # pages 1 and 2 hold the first range, 2 and 3 the second
        assert np.all(arena.bytes[kept] == 1) and not np.any(arena.bytes[~kept])
    finally:
        arena.close()


def test_a_session_imports_an_onnx_decoder_with_its_state(decoder, package, reference, tmp_path):
    path = save(decoder, tmp_path / "decoder.onnx")
    state = cache_state(o.name for o in decoder.graph.output)
    with flexnnd.Session(path, threads=1, cache_dir=tmp_path / "cache", state=state) as session:
        assert session.state == state
        assert generate(session, PROMPT, NEW).tokens == reference
    with pytest.raises(PackageError, match=r"state applies to an \.onnx file"):
        flexnnd.Session(package, state=state)


def test_a_state_read_by_another_node_is_copied_not_updated_in_place(tmp_path):
    """The past is read after its update by another node: sharing its storage would feed that node
    the updated values, so the output keeps its own region and the run ends with a copy."""
    nodes = [
        helper.make_node("ScatterElements", ["past", "at", "new"], ["present"], axis=0),
        helper.make_node("Add", ["past", "present"], ["sum"]),
    ]
    graph = helper.make_graph(
        nodes,
        "state",
        [
            helper.make_tensor_value_info("past", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("at", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("new", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("present", TensorProto.FLOAT, [4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = save(model, tmp_path / "s.onnx")
    folder = flexnnd.import_model(path, tmp_path / "pkg", ladder=False, state={"present": "past"})
    assert in_place_state(read_package(folder).graph) == []
    with flexnnd.Session(folder, threads=1) as session:
        sums = [
            session.run({"at": np.array([i]), "new": np.array([i + 1.0], np.float32)})["sum"]
            for i in range(3)
        ]
    # past before each run: 0000, 1000, 1200; sum = past + present.
    np.testing.assert_array_equal(sums, [[1, 0, 0, 0], [2, 2, 0, 0], [2, 4, 3, 0]])
