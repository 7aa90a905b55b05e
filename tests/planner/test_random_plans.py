"""Property test: random layered graphs at random budgets plan into verified plans that compute
what the all-resident plan computes."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import helper

import flexnnd
from flexnnd.graph.onnx_import import import_onnx
from flexnnd.planner import verify
from flexnnd.planner.plan_budget import plan_for_budget
from flexnnd.planner.resident import plan_resident
from tests.conftest import make_model, save


@st.composite
def layered_graphs(draw):
    """Conv chains with residual adds and concats, then a big fully connected head."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    channels, size = draw(st.sampled_from([4, 8, 16])), draw(st.sampled_from([6, 9, 12]))
    nodes, inits, prev, c = [], [], "x", 3
    for i in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "residual", "concat"]))
        w = lambda cout, cin, k: rng.standard_normal((cout, cin, k, k)).astype(np.float32) * 0.3  # noqa: E731
        if kind == "conv" or (kind == "residual" and c != channels):
            inits.append((f"w{i}", w(channels, c, 3)))
            nodes.append(
                helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}")
            )
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"t{i}"], name=f"relu{i}"))
            c = channels
        elif kind == "residual":
            inits.append((f"w{i}", w(c, c, 3)))
            nodes.append(
                helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}")
            )
            nodes.append(helper.make_node("Add", [f"c{i}", prev], [f"a{i}"], name=f"add{i}"))
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"t{i}"], name=f"relu{i}"))
        else:
            inits += [(f"w{i}a", w(channels, c, 1)), (f"w{i}b", w(channels, c, 3))]
            nodes.append(helper.make_node("Conv", [prev, f"w{i}a"], [f"p{i}"], name=f"conv{i}a"))
            nodes.append(
                helper.make_node("Conv", [prev, f"w{i}b"], [f"q{i}"], pads=[1, 1, 1, 1], name=f"conv{i}b")
            )
            nodes.append(helper.make_node("Concat", [f"p{i}", f"q{i}"], [f"t{i}"], axis=1, name=f"cat{i}"))
            c = 2 * channels
        prev = f"t{i}"
    hidden = draw(st.sampled_from([256, 512]))
    nodes.append(helper.make_node("Flatten", [prev], ["f"], name="flatten"))
    inits += [("fc_w", rng.standard_normal((hidden, c * size * size)).astype(np.float32) * 0.02)]
    inits += [("fc_b", np.zeros(hidden, np.float32))]
    nodes.append(helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc"))
    return make_model(nodes, [("x", [1, 3, size, size])], [("y", None)], inits)


@given(model=layered_graphs(), fraction=st.floats(0.02, 1.0))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_graphs_plan_into_verified_plans(tmp_path_factory, model, fraction):
    graph, _ = import_onnx(model)
    full = plan_resident(graph).arena_bytes
    try:
        plan = plan_for_budget(graph, int(full * fraction))
    except flexnnd.BudgetTooSmall:
        event("budget too small")
        assert fraction < 1.0
        return
    event("planned, streaming" if plan.loads else "planned, all resident")
    verify(plan, graph)
    assert plan.arena_bytes <= int(full * fraction)

    tmp = tmp_path_factory.mktemp("random")
    path = save(model, tmp / "m.onnx")
    x = np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)
    with flexnnd.Session(path, cache_dir=tmp / "c") as sess:
        want = sess.run({"x": x})["y"]
        sess.set_budget(int(full * fraction) + sess.output_bytes)
        got = sess.run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))
