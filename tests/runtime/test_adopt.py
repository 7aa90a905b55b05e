"""Session.adopt: swaps now, overlapped or blocking; inferences in flight finish; a failed build is reported."""

import threading

import numpy as np
import pytest
from onnx import helper

import flexnnd
from flexnnd.errors import LoadError
from tests.conftest import make_model, save


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Four 256×256 fully connected layers: big enough that a third of the arena must stream."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(4):
        out = "y" if i == 3 else f"r{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"], transB=1, name=f"fc{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [out], name=f"relu{i}"))
        inits += [
            (f"w{i}", rng.standard_normal((256, 256)).astype(np.float32) / 16),
            (f"b{i}", np.zeros(256, np.float32)),
        ]
        prev = out
    return save(
        make_model(nodes, [("x", [1, 256])], [("y", None)], inits),
        tmp_path_factory.mktemp("adopt") / "m.onnx",
    )


def _feeds(sess):
    spec = sess.inputs[0]
    return {spec.name: np.random.default_rng(1).standard_normal(spec.shape).astype(np.float32)}


@pytest.mark.parametrize("overlap", [True, False])
def test_adopt_switches_now_and_outputs_agree(model, tmp_path, overlap):
    with flexnnd.Session(model, cache_dir=tmp_path) as sess:
        feeds = _feeds(sess)
        full = sess.run(feeds)
        small = sess.plan_for(sess.plan.arena_bytes // 3 + sess.output_bytes)
        swap = sess.adopt(small, small.arena_bytes, overlap=overlap)
        assert sess.plan is small and swap.to_arena == small.arena_bytes < swap.from_arena
        assert swap.overlapped is overlap and sess.loaded
        out = sess.run(feeds)
        for name, y in full.items():
            np.testing.assert_allclose(out[name], y, rtol=1e-5, atol=1e-5)


def test_blocking_adopt_waits_for_the_inference_in_flight(model, tmp_path):
    with flexnnd.Session(model, cache_dir=tmp_path) as sess:
        feeds = _feeds(sess)
        sess.run(feeds)
        small = sess.plan_for(sess.plan.arena_bytes // 3 + sess.output_bytes)
        order = []
        sess._lock.acquire()  # an inference "in flight" holds the session
        t = threading.Thread(target=lambda: order.append(sess.adopt(small, None, overlap=False)))
        t.start()
        t.join(0.2)
        assert t.is_alive() and not order  # the swap waits for the inference
        sess._lock.release()
        t.join(10)
        assert order and sess.plan is small


def test_failed_blocking_adopt_leaves_a_clear_error_and_a_later_adopt_recovers(model, tmp_path):
    with flexnnd.Session(model, cache_dir=tmp_path) as sess:
        feeds = _feeds(sess)
        expected = sess.run(feeds)
        plan = sess.plan
        weights = sess.package.weights_path
        saved = weights.read_bytes()
        weights.write_bytes(saved[: len(saved) // 2])  # truncated under the running daemon
        try:
            with pytest.raises(LoadError):
                sess.adopt(plan, None, overlap=False)
            assert not sess.loaded
            with pytest.raises(LoadError, match="last plan adoption failed"):
                sess.run(feeds)
        finally:
            weights.write_bytes(saved)
        sess.adopt(plan, None, overlap=True)
        assert sess.loaded
        np.testing.assert_array_equal(sess.run(feeds)[next(iter(expected))], next(iter(expected.values())))


def test_a_budget_swap_that_fails_at_the_next_run_leaves_a_clear_error(model, tmp_path):
    """set_budget swaps at the next run; if the new arena cannot be built there, that run and the
    ones after raise LoadError (not outputs from a released arena) until a budget change works."""
    with flexnnd.Session(model, cache_dir=tmp_path) as sess:
        feeds = _feeds(sess)
        expected = sess.run(feeds)
        smaller = sess.stats()["arena_bytes"] // 2
        weights = sess.package.weights_path
        saved = weights.read_bytes()
        weights.write_bytes(saved[: len(saved) // 2])
        try:
            sess.set_budget(smaller)
            with pytest.raises(LoadError):
                sess.run(feeds)
            assert not sess.loaded
            with pytest.raises(LoadError, match="last plan adoption failed"):
                sess.run(feeds)
        finally:
            weights.write_bytes(saved)
        sess.adopt(sess.plan_for(None), None, overlap=False)
        for name, y in sess.run(feeds).items():
            np.testing.assert_allclose(y, expected[name], rtol=1e-5, atol=1e-6)


def test_failed_overlapped_adopt_keeps_the_old_plan_serving(model, tmp_path):
    with flexnnd.Session(model, cache_dir=tmp_path) as sess:
        feeds = _feeds(sess)
        expected = sess.run(feeds)
        plan, executor = sess.plan, sess._executor
        assert not plan.loads  # every weight is in the arena: serving on reads nothing from the file
        weights = sess.package.weights_path
        saved = weights.read_bytes()
        weights.write_bytes(saved[: len(saved) // 2])
        try:
            with pytest.raises(LoadError):
                sess.adopt(sess.plan_for(None), None, overlap=True)
            assert sess.loaded and sess.plan is plan and sess._executor is executor
            for name, y in sess.run(feeds).items():
                np.testing.assert_array_equal(y, expected[name])
        finally:
            weights.write_bytes(saved)


def test_an_arena_the_system_refuses_is_an_arena_error_and_the_old_plan_serves(model, tmp_path):
    """A petabyte arena: the kernel's overcommit check refuses it (ENOMEM), for real."""
    import dataclasses

    with flexnnd.Session(model, cache_dir=tmp_path) as sess:
        feeds = _feeds(sess)
        expected = sess.run(feeds)
        huge = dataclasses.replace(sess.plan, arena_bytes=1 << 50)
        with pytest.raises(
            flexnnd.ArenaError, match=r"cannot map a 1,125,899,906,842,624-byte arena \(.*available"
        ) as e:
            sess.adopt(huge, None, overlap=True)
        assert isinstance(e.value, MemoryError) and e.value.requested == 1 << 50
        assert sess.loaded and sess.plan is not huge
        for name, y in sess.run(feeds).items():
            np.testing.assert_array_equal(y, expected[name])
