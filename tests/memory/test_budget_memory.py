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
