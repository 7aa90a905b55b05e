"""A two-layer graph and a hand-made streaming plan of it, shared by the planner tests."""

from __future__ import annotations

import dataclasses

import numpy as np
from onnx import helper

from flexnnd.graph.onnx_import import import_onnx
from flexnnd.planner.plan import Load
from flexnnd.planner.resident import plan_resident
from tests.conftest import make_model


def two_layer_graph():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2"),
    ]
    inits = [
        ("w1", rng.standard_normal((64, 32)).astype(np.float32)),
        ("b1", np.zeros(64, np.float32)),
        ("w2", rng.standard_normal((16, 64)).astype(np.float32)),
        ("b2", np.zeros(16, np.float32)),
    ]
    graph, _ = import_onnx(make_model(nodes, [("x", [1, 32])], [("y", None)], inits))
    return graph


def regions_with(plan, **changes):
    return tuple(dataclasses.replace(r, **changes[r.name]) if r.name in changes else r for r in plan.regions)


def streamed_plan(graph):
    """fc2's weight streamed: its load is released at the start (after step -1), read at step 1."""
    plan = plan_resident(graph)
    (w2,) = [w for w in graph.constants if graph.tensors[w].shape == (16, 64)]
    return dataclasses.replace(
        plan,
        arena_bytes=plan.arena_bytes + 4096,
        regions=regions_with(plan, **{w2: {"offset": plan.arena_bytes, "first": 0, "last": 1}}),
        resident=tuple(r for r in plan.resident if r != w2),
        loads=(Load(w2, -1, 1),),
    )
