"""The promise, in real memory: a fresh process's peak RSS minus its RSS before the model was
loaded stays within the budget + 2 MiB, at small, middle and full budgets, and across a swap
from large to small (the old arena is released before the new one is built)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SLACK = 2 << 20
ROOT = Path(__file__).resolve().parents[2]


def measure(model: Path, cache: Path, budgets: list[int]) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.memory.probe", str(model), str(cache), *map(str, budgets)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# Budgets as fractions of the model's all-resident arena (1.0 = everything resident).
CASES = {"resnet50": (0.1, 0.4, 1.0), "vgg16": (0.05, 0.4, 1.0)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_peak_memory_stays_within_the_budget(name, zoo_model, package_cache):
    import flexnnd

    path = zoo_model(name)
    with flexnnd.Session(path, cache_dir=package_cache) as sess:
        full = sess.stats()["arena_bytes"] + sess.output_bytes
    budgets = [int(full * f) for f in CASES[name]]
    for budget in budgets:
        (row,) = measure(path, package_cache, [budget])
        assert row["arena"] <= budget
        assert row["adoption"] <= budget + SLACK, row
        assert row["steady"] <= budget + SLACK, row


@pytest.mark.slow
def test_a_swap_from_large_to_small_never_holds_both_plans(zoo_model, package_cache):
    import flexnnd

    path = zoo_model("resnet50")
    with flexnnd.Session(path, cache_dir=package_cache) as sess:
        full = sess.stats()["arena_bytes"] + sess.output_bytes
    large, small = measure(path, package_cache, [full, int(full * 0.1)])
    assert large["steady"] <= full + SLACK
    assert small["adoption"] <= full + SLACK  # the swap itself: old arena gone before the new
    assert small["steady"] <= int(full * 0.1) + SLACK, small


def token_model(path: Path) -> Path:
    """int64 token ids -> a 16 MiB embedding table (Gather) -> LayerNorm -> an MLP with GELU ->
    ReduceMean over the tokens: the op families of issue 17 in one model, built in code."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    vocab, width, hidden = 16384, 256, 1024
    weights = {
        "table": rng.standard_normal((vocab, width)).astype(np.float32),
        "gamma": np.ones(width, np.float32),
        "beta": np.zeros(width, np.float32),
        "w1": rng.standard_normal((width, hidden)).astype(np.float32) / 16,
        "w2": rng.standard_normal((hidden, width)).astype(np.float32) / 32,
        "axes": np.array([1], np.int64),
    }
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),
        helper.make_node("LayerNormalization", ["emb", "gamma", "beta"], ["norm"], axis=-1),
        helper.make_node("MatMul", ["norm", "w1"], ["h"]),
        helper.make_node("Gelu", ["h"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["o"]),
        helper.make_node("ReduceMean", ["o", "axes"], ["y"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tokens",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
def test_a_token_model_stays_within_the_budget(tmp_path):
    """The issue 17 families (int64 input, Gather, LayerNorm, GELU, ReduceMean) keep the promise."""
    import flexnnd

    path = token_model(tmp_path / "tokens.onnx")
    cache = tmp_path / "cache"
    with flexnnd.Session(path, cache_dir=cache) as sess:
        ladder = sess.rungs
        arenas = sorted({e.arena_bytes for e in ladder.index})
        budgets = [a + ladder.output_bytes for a in (arenas[0], arenas[len(arenas) // 2], arenas[-1])]
    assert budgets[0] < budgets[-1] // 2  # the table streams in row pieces, the MLP by channels
    for budget in budgets:
        (row,) = measure(path, cache, [budget])
        assert row["arena"] <= budget
        assert row["adoption"] <= budget + SLACK, row
        assert row["steady"] <= budget + SLACK, row
