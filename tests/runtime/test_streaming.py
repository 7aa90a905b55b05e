"""Budgeted sessions: streamed weights give the same outputs, load faults fail one inference only,
set_budget swaps plans, and sizes parse the way operators write them."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from flexnn_api.sizes import parse_size
from onnx import helper

import flexnnd
from tests.conftest import assert_close_to_reference, make_model, ort_run, save


@pytest.mark.parametrize(
    ("name", "fraction"),
    [
        ("resnet18", 0.5),
        ("resnet18", 0.1),
        ("mobilenet_v2", 0.4),
        ("squeezenet1_1", 0.5),
        ("googlenet", 0.25),
    ],
)
def test_zoo_models_under_a_budget_match_onnxruntime(name, fraction, zoo_model, package_cache):
    path = zoo_model(name)
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224), dtype=np.float32)
    want = ort_run(path, {"input": x})[0]
    with flexnnd.Session(path, threads=1, cache_dir=package_cache) as sess:
        full = sess.stats()["arena_bytes"]
        sess.set_budget(int(full * fraction))
        got = sess.run({"input": x})["logits"]
        stats = sess.stats()
    assert stats["arena_bytes"] <= full * fraction
    assert stats["streamed_bytes"] > 0
    assert_close_to_reference(got, want)


def fc_chain(layers=4, width=256):
    """Fully connected layers big enough to stream (each weight 256 KiB)."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"], transB=1, name=f"fc{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
        inits += [
            (f"w{i}", rng.standard_normal((width, width)).astype(np.float32) / 16),
            (f"b{i}", np.zeros(width, np.float32)),
        ]
        prev = f"r{i}"
    nodes[-1] = helper.make_node("Relu", [f"h{layers - 1}"], ["y"], name=f"relu{layers - 1}")
    return make_model(nodes, [("x", [1, width])], [("y", None)], inits)


@pytest.fixture
def streamed_session(tmp_path):
    path = save(fc_chain(), tmp_path / "fc.onnx")
    with flexnnd.Session(path, budget=400 * 1024, cache_dir=tmp_path / "c") as sess:
        assert len(sess.plan.loads) >= 4
        yield sess


def test_the_kth_load_failing_fails_that_inference_only(streamed_session):
    sess = streamed_session
    x = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)
    want = sess.run({"x": x})["y"]
    loader = sess._executor.loader
    real = loader.reader
    threads_before = threading.active_count()
    fds_before = len(os.listdir("/proc/self/fd"))
    for load in sess.plan.loads:
        at = sess._executor.piece_range(load.piece)[0]

        # The read that covers this load's bytes fails (a read may take several adjacent loads).
        def failing(fd, buffers, offset, at=at):
            if offset <= at < offset + sum(len(b) for b in buffers):
                raise OSError(5, "Input/output error (injected)")
            return real(fd, buffers, offset)

        loader.reader = failing
        with pytest.raises(flexnnd.LoadError, match="injected"):
            sess.run({"x": x})
        loader.reader = real
        np.testing.assert_array_equal(sess.run({"x": x})["y"], want)
    assert threading.active_count() == threads_before
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_stats_report_what_the_last_inference_read_and_waited(streamed_session):
    sess = streamed_session
    sess.run({"x": np.zeros((1, 256), np.float32)})
    stats = sess.stats()
    assert stats["last_read_bytes"] == stats["streamed_bytes"] > 0
    assert stats["last_read_seconds"] > 0
    assert 0 <= stats["last_stall_seconds"] <= stats["last_inference_seconds"]
    sess.set_budget(None)  # all resident: nothing read, nothing waited for
    sess.run({"x": np.zeros((1, 256), np.float32)})
    stats = sess.stats()
    assert (stats["streamed_bytes"], stats["last_read_bytes"], stats["last_stall_seconds"]) == (0, 0, 0.0)


def test_a_short_read_is_a_load_error(streamed_session):
    loader = streamed_session._executor.loader
    loader.reader = lambda fd, buffers, offset: 3
    with pytest.raises(flexnnd.LoadError, match="short read"):
        streamed_session.run({"x": np.zeros((1, 256), np.float32)})


def test_set_budget_swaps_at_the_next_inference(tmp_path):
    path = save(fc_chain(), tmp_path / "fc.onnx")
    x = np.random.default_rng(2).standard_normal((1, 256)).astype(np.float32)
    with flexnnd.Session(path, cache_dir=tmp_path / "c") as sess:
        want = sess.run({"x": x})["y"]
        full = sess.stats()["arena_bytes"]
        sess.set_budget("400K")
        assert sess.stats()["arena_bytes"] == full  # not yet: at the next inference
        np.testing.assert_allclose(sess.run({"x": x})["y"], want, rtol=1e-5, atol=1e-6)
        small = sess.stats()
        assert small["arena_bytes"] <= 400 * 1024 and small["streamed_bytes"] > 0
        sess.set_budget(None)
        np.testing.assert_allclose(sess.run({"x": x})["y"], want, rtol=1e-5, atol=1e-6)
        assert sess.stats()["arena_bytes"] == full


def test_a_budget_below_the_minimum_names_the_minimum(tmp_path):
    path = save(fc_chain(), tmp_path / "fc.onnx")
    with flexnnd.Session(path, cache_dir=tmp_path / "c") as sess:
        with pytest.raises(
            flexnnd.BudgetTooSmall, match=r"budget 1,000 bytes is below .*: [\d,]+ bytes"
        ) as info:
            sess.set_budget(1000)
        assert info.value.minimum > 1000
        sess.run({"x": np.zeros((1, 256), np.float32)})  # the session still serves


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("128M", 128 << 20),
        ("1.5G", 3 << 29),
        ("512Mi", 512 << 20),
        ("512MiB", 512 << 20),
        ("300MB", 300_000_000),
        ("64k", 64 << 10),
    ],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "12Q", "-5", "M", "1.2.3G", True, -1])
def test_bad_sizes(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_the_simulator_joins_the_loads_the_loader_joins(tmp_path):
    """Which loads share a read is decided by one rule on both sides: the planner's, from the graph's
    file layout, and the loader's, from real file offsets and arena addresses."""
    import dataclasses

    from flexnnd.graph.package import read_package
    from flexnnd.planner.ladder import load_joins
    from flexnnd.planner.plan_budget import Planner, max_slicing, plan_with_slicing
    from flexnnd.planner.profile import Machine
    from flexnnd.planner.simulate import simulate
    from flexnnd.runtime.executor import Executor

    path = flexnnd.import_model(save(fc_chain(), tmp_path / "fc.onnx"), tmp_path / "pkg", ladder=False)
    package = read_package(path)
    graph, planner = package.graph, Planner(package.graph)
    plan = plan_with_slicing(planner, 1 << 30, max_slicing(graph, planner))  # every row block streamed
    joins = load_joins(graph, plan)
    executor = Executor(package, plan)
    try:
        assert joins == executor.loader.joins
    finally:
        executor.close()
    # Each of the 4 weights' row blocks chain up; a bias lies between one weight and the next.
    assert (len(plan.loads), sum(joins)) == (64, 60)
    # All released at once, one byte each, reads costing 1 s apiece: one read per run of joined loads.
    early = dataclasses.replace(
        plan, loads=tuple(dataclasses.replace(ld, after_step=-1) for ld in plan.loads)
    )
    slow = Machine(
        gemm_flops=1, winograd_flops=1, depthwise_flops=1, memory_bytes=1, read_bytes=1e9, read_latency=1.0
    )
    tiny = {ld.piece: 1 for ld in plan.loads}
    apart = simulate(early, [0.0] * len(plan.steps), tiny, slow)
    together = simulate(early, [0.0] * len(plan.steps), tiny, slow, joins)
    assert apart.seconds == pytest.approx(len(plan.loads), rel=1e-6)
    assert together.seconds == pytest.approx(len(plan.loads) - sum(joins), rel=1e-6)
