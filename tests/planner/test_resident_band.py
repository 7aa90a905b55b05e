"""The always-resident weights get the bottom band of the arena; activations and scratch sit above
it, so a streamed piece grows up from the activations of its step instead of jumping over it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import helper

from flexnnd.graph.onnx_import import import_onnx
from flexnnd.planner.pack import Request, align, place_greedy_by_size
from flexnnd.planner.plan_budget import Planner, pack
from tests.conftest import make_model


def test_a_floor_shifts_every_region_up_by_it():
    requests = [Request("a", 1000, 0, 2), Request("b", 300, 1, 3), Request("c", 700, 3, 4)]
    plain, arena = place_greedy_by_size(requests)
    shifted, shifted_arena = place_greedy_by_size(requests, floor=4096)
    assert [r.offset - 4096 for r in shifted] == [r.offset for r in plain]
    assert shifted_arena == arena + 4096
    with pytest.raises(ValueError, match="floor 100 is not a multiple of 64"):
        place_greedy_by_size(requests, floor=100)


def test_equal_sizes_place_the_longer_lived_first():
    """Placed by start step, b lands on a and d on top of c (320 bytes); b and d first, the short
    ones fill in around them (256)."""
    requests = [
        Request("a", 128, 1, 1),
        Request("b", 128, 1, 2),
        Request("c", 64, 2, 4),
        Request("d", 128, 3, 5),
    ]
    regions, arena = place_greedy_by_size(requests)
    assert arena == 256
    assert {r.name: r.offset for r in regions} == {"d": 0, "b": 0, "a": 128, "c": 128}


def peak_elsewhere_graph():
    """The activations peak at the first pool (401 + 100 KB); the last conv streams a 128 KB weight
    while only 451 KB of activations are alive, and the first conv's 32 KB weight is always resident."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Conv", ["p", "w_small"], ["a"], name="reduce"),
        helper.make_node("MaxPool", ["a"], ["s"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="smooth"),
        helper.make_node("Conv", ["s", "w_big"], ["y"], name="expand"),
    ]
    inits = [
        ("w_small", rng.standard_normal((64, 128, 1, 1)).astype(np.float32)),
        ("w_big", rng.standard_normal((512, 64, 1, 1)).astype(np.float32)),
    ]
    graph, _ = import_onnx(make_model(nodes, [("x", [1, 128, 28, 28])], [("y", None)], inits))
    return graph


def test_streamed_pieces_need_not_jump_over_the_always_resident_band():
    graph = peak_elsewhere_graph()
    planner = Planner(graph)
    lay = planner.layout({})
    always = frozenset(p for p, w in lay.pieces.items() if w.tensor in planner.small)
    assert lay.always_resident == sum(align(lay.piece_bytes[p]) for p in always) > 0
    plan = pack(lay, planner, 1 << 40, always, preload=False)
    band = [plan.region[p] for p in always]
    assert max(r.end for r in band) <= min(r.offset for r in lay.base)
    # With the band on top of the activations, the 128 KB weight must go above it.
    on_top = pack(dataclasses.replace(lay, always_resident=0), planner, 1 << 40, always, preload=False)
    assert plan.arena_bytes < on_top.arena_bytes
