"""The daemon's model set: the budget split, loading under a budget, swaps down and up, failed swaps,
admission."""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from flexnnd.daemon.events import EventBus
from flexnnd.daemon.models import Models, ModelState, Rung, split_budget
from flexnnd.errors import BudgetTooSmall, ModelAlreadyLoaded, ModelNotFound, ModelNotReady, Overloaded
from tests.conftest import make_model, save


def fc_model(path, width=256, layers=4, seed=0):
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        out = "y" if i == layers - 1 else f"r{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"], transB=1, name=f"fc{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [out], name=f"relu{i}"))
        inits += [
            (f"w{i}", rng.standard_normal((width, width)).astype(np.float32) / 16),
            (f"b{i}", np.zeros(width, np.float32)),
        ]
        prev = out
    return save(make_model(nodes, [("x", [1, width])], [("y", None)], inits, name=path.stem), path)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"a": fc_model(d / "a.onnx", seed=1), "b": fc_model(d / "b.onnx", width=192, seed=2)}


@pytest.fixture
def models(tmp_path_factory):
    # One cache per module run: packages and their ladders are built once.
    cache = tmp_path_factory.getbasetemp() / "daemon-models-cache"
    m = Models(cache, EventBus(), threads=1, queue_depth=2)
    yield m
    m.close()


def rung(cost, seconds):
    return Rung(cost, seconds, None)


def brute_force(options, total):
    import itertools

    best = None
    names = list(options)
    for combo in itertools.product(*(options[n] for n in names)):
        cost = sum(r.cost for r in combo)
        seconds = sum(r.seconds for r in combo)
        if cost <= total and (best is None or seconds < best[0] - 1e-12):
            best = (seconds, combo)
    return best


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(1, 100), st.floats(0.001, 10)), min_size=1, max_size=5),
        min_size=1,
        max_size=3,
    ),
    st.integers(0, 300),
)
def test_split_is_the_least_total_latency_that_fits(ladders, total):
    options = {f"m{i}": [rung(c, s) for c, s in ladder] for i, ladder in enumerate(ladders)}
    chosen = split_budget(options, total)
    best = brute_force(options, total)
    if best is None:
        assert chosen is None
        return
    assert chosen is not None and set(chosen) == set(options)
    assert sum(r.cost for r in chosen.values()) <= total
    assert sum(r.seconds for r in chosen.values()) == pytest.approx(best[0])


def test_split_without_a_budget_takes_every_largest_rung():
    options = {"a": [rung(10, 2.0), rung(50, 1.0)], "b": [rung(5, 1.0), rung(7, 0.5)]}
    assert {n: r.cost for n, r in split_budget(options, None).items()} == {"a": 50, "b": 7}


def feeds(model, seed=0):
    spec = model.session.inputs[0]
    return {spec.name: np.random.default_rng(seed).standard_normal(spec.shape).astype(np.float32)}


def test_budget_down_and_up_keeps_outputs_and_stays_within_budget(models, onnx_files):
    a = models.load("a", onnx_files["a"])
    x = feeds(a)
    full = models.infer("a", x)["y"]
    top = max(r.cost for r in a.rungs)
    for total in (top // 3, a.minimum, top // 2, None):
        models.rebalance(total, reason="test")
        assert a.ready
        if total is not None:
            assert models.committed <= total
        np.testing.assert_allclose(models.infer("a", x)["y"], full, rtol=1e-5, atol=1e-5)
    swaps = [e for e in models.events.history if e.kind == "swap"]
    assert len(swaps) >= 4 and all(e.duration_s >= 0 for e in swaps)
    assert any("old plan served" in e.message for e in swaps)  # the last step up overlapped


def test_two_models_share_a_budget(models, onnx_files):
    a = models.load("a", onnx_files["a"])
    b = models.load("b", onnx_files["b"])
    total = (max(r.cost for r in a.rungs) + max(r.cost for r in b.rungs)) // 2
    models.rebalance(total)
    assert a.ready and b.ready
    assert a.share + b.share <= total and models.committed <= total
    assert set(models.names()) == {"a", "b"}


def test_too_small_a_budget_leaves_a_model_not_ready_until_it_grows(models, onnx_files):
    models.rebalance(1000)
    a = models.load("a", onnx_files["a"])
    assert a.state is ModelState.NO_FIT and not a.ready and "needs at least" in a.reason
    assert (f"{a.state}", str(a.state)) == ("no-fit", "no-fit")  # the text status and the wire show
    with pytest.raises(ModelNotReady, match="no-fit"):
        models.infer("a", {"x": np.zeros((1, 256), np.float32)})
    with pytest.raises(BudgetTooSmall) as err:
        models.load("b", onnx_files["b"], required=True)
    assert err.value.requested == 1000
    models.rebalance(None)
    assert a.ready
    models.infer("a", feeds(a))


def test_unknown_model_names_the_loaded_ones(models, onnx_files):
    models.load("a", onnx_files["a"])
    with pytest.raises(ModelNotFound, match="loaded: a"):
        models.infer("zzz", {})


def test_a_name_already_loaded_is_refused_naming_its_source(models, onnx_files):
    models.load("a", onnx_files["a"])
    with pytest.raises(ModelAlreadyLoaded) as err:
        models.load("a", onnx_files["b"])
    assert (err.value.name, err.value.source) == ("a", onnx_files["a"])
    assert models.get("a").source == onnx_files["a"]


def test_requests_beyond_the_queue_are_refused(models, onnx_files):
    a = models.load("a", onnx_files["a"])
    x = feeds(a)
    a.session._lock.acquire()  # the arena is busy: requests queue up behind it
    threads = [threading.Thread(target=models.infer, args=("a", x)) for _ in range(a.capacity)]
    try:
        for t in threads:
            t.start()
        for _ in range(3000):  # until every slot is taken (bounded, so a bug fails instead of hanging)
            if a.queue_depth == a.capacity:
                break
            threading.Event().wait(0.01)
        with pytest.raises(Overloaded, match=f"capacity {a.capacity}"):
            models.infer("a", x)
    finally:
        a.session._lock.release()
        for t in threads:
            t.join(30)
    assert a.queue_depth == 0 and a.inferences >= a.capacity


@contextlib.contextmanager
def rotten(path, entry):
    """Bit rot in one weight (a WeightEntry) of a weights file: same inode, size and mtime, so only
    its CRC tells; the bytes come back after."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        saved = os.pread(f.fileno(), entry.nbytes, entry.offset)
        os.pwrite(f.fileno(), bytes(b ^ 0x5A for b in saved), entry.offset)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    try:
        yield
    finally:
        with open(path, "r+b") as f:
            os.pwrite(f.fileno(), saved, entry.offset)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def resident_weight(plan, package):
    """The largest weight `plan` holds whole in its arena: a swap re-reads and CRC-checks it, an
    inference on `plan` does not read it."""
    whole = [name for name in plan.resident if name in package.weights]
    assert whole, f"the {plan.arena_bytes:,}-byte plan holds no whole weight"
    return package.weights[max(whole, key=lambda name: package.weights[name].nbytes)]


def errors_of(models, name):
    return [e for e in models.events.history if e.kind == "error" and e.model == name]


def below_the_top(models, onnx_files):
    """Model a on the rung below the top (some weights stream): its rung, the top rung, a weight it holds."""
    a = models.load("a", onnx_files["a"])
    rungs = sorted(a.rungs, key=lambda r: r.cost)
    models.rebalance(rungs[-2].cost)
    assert a.session.plan.loads
    return a, rungs[-2], rungs[-1], resident_weight(a.session.plan, a.package)


def test_a_failed_swap_up_keeps_serving_the_old_plan_and_retries_on_a_budget_change(models, onnx_files):
    a, old, top, weight = below_the_top(models, onnx_files)
    x = feeds(a)
    before = models.infer("a", x)["y"]
    swaps = len([e for e in models.events.history if e.kind == "swap"])
    with rotten(a.weights_path, weight):
        assert a.weights_problem() is None  # the file looks unchanged: only a read finds the fault
        models.rebalance(None)  # no limit: the swap up overlaps, the old plan serves meanwhile
        assert a.state == "ready" and a.ready and a.share == old.cost
        assert a.session.plan.arena_bytes == old.entry.arena_bytes
        assert models.committed == old.cost  # its old arena is still counted against the budget
        assert "a" in models.plan_split(old.cost)[0]  # and the split still sees it
        (error,) = errors_of(models, "a")
        for part in (f"{old.entry.arena_bytes:,} → {top.entry.arena_bytes:,} bytes", "serves on", "checksum"):
            assert part in error.message and part in a.reason
        np.testing.assert_array_equal(models.infer("a", x)["y"], before)
        # A budget change (both arenas fit: overlapped again) retries; the same failure is announced once.
        models.rebalance(old.cost + top.cost)
        assert len(errors_of(models, "a")) == 1 and a.session.plan.arena_bytes == old.entry.arena_bytes
    models.rebalance(old.cost + top.cost)  # the same budget: no retry, though the file is whole again
    assert a.session.plan.arena_bytes == old.entry.arena_bytes and "serves on" in a.reason
    models.rebalance(None)
    assert a.ready and a.reason == "" and a.session.plan.arena_bytes == top.entry.arena_bytes
    assert models.committed == top.cost
    assert len([e for e in models.events.history if e.kind == "swap"]) == swaps + 1
    np.testing.assert_allclose(models.infer("a", x)["y"], before, rtol=1e-5, atol=1e-5)


def test_a_failed_swap_that_released_the_old_plan_marks_the_model_failed(models, onnx_files):
    a, _, top, weight = below_the_top(models, onnx_files)
    x = feeds(a)
    with rotten(a.weights_path, weight):
        models.rebalance(top.cost)  # old and new arenas do not fit together: the old one goes first
    assert a.state == "failed" and not a.ready and a.share is None
    assert models.committed == 0 and "a" not in models.plan_split(top.cost)[0]
    (error,) = errors_of(models, "a")
    for part in (f"{top.entry.arena_bytes:,}-byte plan", "no plan to serve on", "checksum", "load a"):
        assert part in error.message and part in a.reason
    with pytest.raises(ModelNotReady, match="failed"):
        models.infer("a", x)
