"""The planning issue's bar: GoogLeNet's smallest budget is at most 1/16 of the peak model memory
ONNX Runtime was measured at (benchmarks/results/ladder.json; this test does not run ORT)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import flexnnd
from flexnnd.graph.onnx_import import import_onnx, load_onnx
from flexnnd.graph.package import read_package
from flexnnd.planner.plan_budget import Planner, smallest_plan
from flexnnd.planner.resident import plan_resident
from flexnnd.runtime.session import package_for
from tests.conftest import assert_close_to_reference, ort_run

LADDER_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "ladder.json"


def test_googlenet_smallest_budget_is_a_sixteenth_of_onnxruntime_peak(zoo_model):
    ort_peak = json.loads(LADDER_RESULTS.read_text())["googlenet"]["onnxruntime"]["peak_model_bytes"]
    graph, _ = import_onnx(load_onnx(zoo_model("googlenet")))
    arena = smallest_plan(graph, Planner(graph)).arena_bytes
    assert arena * 16 <= ort_peak, (
        f"GoogLeNet's smallest arena is {arena:,} bytes, 1/{ort_peak / arena:.1f} of ORT's peak "
        f"{ort_peak:,}; the bar is {ort_peak // 16:,} (1/16)"
    )


def test_googlenet_at_its_smallest_budget_matches_onnxruntime(zoo_model, package_cache):
    """The smallest rung runs every mechanism at once: reordered branches, Winograd row bands in
    channel chunks, streamed pieces above the resident band."""
    path = zoo_model("googlenet")
    x = np.random.default_rng(12).standard_normal((1, 3, 224, 224), dtype=np.float32)
    want = ort_run(path, {"input": x})[0]
    package = read_package(package_for(path, package_cache))
    smallest = smallest_plan(package.graph)
    # The maximal slicing itself (the stored ladder's bottom rung may be a coarser plan that fits).
    with flexnnd.Session(package, threads=1, ladder=[smallest, plan_resident(package.graph)]) as sess:
        sess.set_budget(smallest.arena_bytes + sess.output_bytes)
        got = sess.run({"input": x})["logits"]
        assert sess.plan == smallest
    assert_close_to_reference(got, want)
    assert int(got.argmax()) == int(want.argmax())
