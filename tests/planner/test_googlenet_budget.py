"""The planning issue's bar: GoogLeNet's smallest budget is at most 1/16 of the peak model memory
ONNX Runtime was measured at (benchmarks/results/ladder.json; this test does not run ORT)."""

from __future__ import annotations

import json
from pathlib import Path

from flexnnd.graph.onnx_import import import_onnx, load_onnx
from flexnnd.planner.stream import Planner, smallest_plan

LADDER_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "ladder.json"


def test_googlenet_smallest_budget_is_a_sixteenth_of_onnxruntime_peak(zoo_model):
    ort_peak = json.loads(LADDER_RESULTS.read_text())["googlenet"]["onnxruntime"]["peak_model_bytes"]
    graph, _ = import_onnx(load_onnx(zoo_model("googlenet")))
    arena = smallest_plan(graph, Planner(graph)).arena_bytes
    assert arena * 16 <= ort_peak, (
        f"GoogLeNet's smallest arena is {arena:,} bytes, 1/{ort_peak / arena:.1f} of ORT's peak "
        f"{ort_peak:,}; the bar is {ort_peak // 16:,} (1/16)"
    )
