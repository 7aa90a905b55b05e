"""The daemon holds each model's ladder index and only the plan it runs: a swap reads its plan from
plans.json through the index; listings come from the index alone; a plans.json that went bad after
start fails the swap, naming the file, while the model serves on with its current plan."""

from __future__ import annotations

import gc
import re
import types

import numpy as np
import pytest

import flexnnd
from flexnn_client import EXIT_FAILED, EXIT_OK
from flexnnd.daemon.events import EventBus
from flexnnd.daemon.models import Models
from flexnnd.graph.package import read_package
from flexnnd.planner.ladder import LADDER_FILE, stored_ladder
from flexnnd.planner.plan import Plan
from tests.daemon.harness import DaemonProcess
from tests.daemon.test_daemon_e2e import models_dir, x_for  # noqa: F401 - shared fixtures
from tests.daemon.test_models import onnx_files  # noqa: F401 - shared fixture


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, models_dir):  # noqa: F811
    tmp = tmp_path_factory.mktemp("plan-index")
    d = DaemonProcess(
        tmp / "d",
        ["--models-dir", str(models_dir), "--models", "a.onnx", "--threads", "1", "--no-watch-pressure"],
        cache=tmp / "cache",  # its own package cache: a test here damages plans.json
    )
    d.start()
    yield d
    d.stop()
    d.close()


def pareto_plans(listed):
    """The listed rungs the daemon's split can choose, cheapest first: each faster than every cheaper
    one (a rung no faster than a cheaper one is never adopted for its own budget)."""
    front = []
    for plan in sorted(listed, key=lambda p: p.budget_bytes):
        if not front or plan.predicted_latency_s < front[-1].predicted_latency_s:
            front.append(plan)
    return front


def package_of(d: DaemonProcess, name: str):
    (path,) = (d.cache / "packages").glob(f"{name}-*")
    return read_package(path)


def test_a_swap_adopts_the_plan_read_through_the_index(daemon, models_dir, tmp_path):  # noqa: F811
    x = x_for(seed=11)
    with daemon.client() as c:
        plans = pareto_plans(c.plans("a"))
        assert len(plans) >= 3, "the test needs a ladder with a middle rung"
        try:
            for plan in (plans[len(plans) // 2], plans[0]):  # down from the top, then to the bottom
                c.set_budget(plan.budget_bytes)
                model = c.status().models[0]
                assert model.ready and model.arena_bytes == plan.arena_bytes
                got = c.infer("a", {"x": x})["y"]
                # The daemon's own package: a fresh import would plan with another calibration.
                with flexnnd.Session(
                    package_of(daemon, "a").path, budget=plan.budget_bytes, threads=1
                ) as sess:
                    assert sess.plan.arena_bytes == plan.arena_bytes
                    np.testing.assert_array_equal(got, sess.run({"x": x})["y"])
        finally:
            c.set_budget("auto")


def test_the_plan_listing_is_what_the_full_plans_give(daemon):
    package = package_of(daemon, "a")
    ladder = stored_ladder(package)
    out_bytes = sum(t.nbytes for t in package.graph.outputs)
    with daemon.client() as c:
        listed = c.plans("a")
        active = c.status().models[0].arena_bytes
    assert len(listed) == len(ladder)
    for info, plan in zip(listed, ladder, strict=True):
        assert info.budget_bytes == plan.arena_bytes + out_bytes
        assert info.arena_bytes == plan.arena_bytes
        assert info.resident_bytes == sum(plan.region[p].nbytes for p in plan.resident)
        assert info.streamed_bytes == sum(plan.region[ld.piece].nbytes for ld in plan.loads)
        assert list(info.sliced_layers) == sorted({s.node for s in plan.steps if s.part is not None})
        assert info.predicted_latency_s == pytest.approx(plan.predicted_seconds)
        assert info.active == (plan.arena_bytes == active)
    assert any(info.streamed_bytes for info in listed) and any(info.sliced_layers for info in listed)
    out = daemon.ctl("plans", "a")
    assert out.returncode == EXIT_OK, out.stderr
    rows = out.stdout.splitlines()[1:]
    distinct = dict.fromkeys(
        (i.budget_bytes, i.arena_bytes, i.resident_bytes, i.streamed_bytes, len(i.sliced_layers))
        for i in listed
    )  # one row per distinct plan, in budget order
    assert len(rows) == len(distinct)
    assert [int(row.split()[4]) for row in rows] == [d[4] for d in sorted(distinct, key=lambda d: d[0])]


def plans_reachable(root: object) -> list[Plan]:
    """Every Plan reachable from `root` through object references (modules and classes not followed)."""
    seen, found, todo = set(), [], [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, Plan):
            found.append(obj)
            continue  # its own parts are not plans
        todo.extend(gc.get_referents(obj))
    return found


def test_a_model_holds_no_plan_but_the_one_it_runs(tmp_path, onnx_files):  # noqa: F811
    models = Models(tmp_path / "cache", EventBus(), threads=1, queue_depth=1)
    try:
        a = models.load("a", onnx_files["a"])
        assert len(stored_ladder(a.package)) >= 3
        top = max(r.cost for r in a.rungs)
        for total in (top // 2, a.minimum, None):  # a swap down, to the bottom, and back up
            models.rebalance(total)
            assert a.ready
            assert [id(p) for p in plans_reachable(models)] == [id(a.session.plan)]
    finally:
        models.close()


def test_plans_json_gone_or_corrupt_fails_set_budget_and_serving_goes_on(daemon, models_dir, tmp_path):  # noqa: F811
    path = package_of(daemon, "a").path / LADDER_FILE
    intact = path.read_bytes()
    x = x_for(seed=12)
    with daemon.client() as c:
        plans = pareto_plans(c.plans("a"))
        before = c.status()
        want = c.infer("a", {"x": x})["y"]
        target = plans[len(plans) // 2]
        assert target.arena_bytes != before.models[0].arena_bytes
        try:
            for damage in (path.unlink, lambda: path.write_bytes(intact[: len(intact) // 3])):
                damage()
                out = daemon.ctl("set-budget", str(target.budget_bytes))
                assert out.returncode == EXIT_FAILED, out.stdout
                assert str(path) in out.stderr and "keeps its" in out.stderr, out.stderr
                status = c.status()
                model = status.models[0]
                assert model.ready and model.state == "ready"
                assert model.arena_bytes == before.models[0].arena_bytes
                assert status.operator_budget == before.operator_budget  # the refused budget is not stored
                assert status.effective_budget_bytes == before.effective_budget_bytes
                np.testing.assert_array_equal(c.infer("a", {"x": x})["y"], want)
            path.write_bytes(intact)
            out = daemon.ctl("set-budget", str(target.budget_bytes))
            assert out.returncode == EXIT_OK, out.stderr
            assert c.status().models[0].arena_bytes == target.arena_bytes
        finally:
            path.write_bytes(intact)
            c.set_budget("auto")


def test_a_rebalance_that_cannot_read_a_plan_changes_nothing(tmp_path, onnx_files):  # noqa: F811
    models = Models(tmp_path / "cache", EventBus(), threads=1, queue_depth=1)
    try:
        a = models.load("a", onnx_files["a"])
        x = {"x": x_for(seed=13)}
        want = models.infer("a", x)["y"]
        path = a.package_dir / LADDER_FILE
        intact = path.read_bytes()
        path.unlink()
        running, total = a.session.plan, models.total
        for _ in range(2):  # as the main loop retries each tick
            with pytest.raises(
                flexnnd.PlanError,
                match=rf"keeps its {running.arena_bytes:,}-byte plan.*{re.escape(str(path))}",
            ):
                models.rebalance(a.minimum, reason="pressure")
        assert a.ready and a.session.plan is running and models.total == total
        errors = [e for e in models.events.history if e.kind == "error"]
        assert len(errors) == 1 and str(path) in errors[0].message  # one event, not one per tick
        np.testing.assert_array_equal(models.infer("a", x)["y"], want)
        path.write_bytes(intact)
        models.rebalance(a.minimum, reason="pressure")
        assert a.ready and a.session.plan.arena_bytes == a.minimum - a.session.output_bytes
    finally:
        models.close()
