"""The ladder: rungs from the smallest feasible budget to all-resident, stored with the package,
and sessions that switch between rungs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import numpy as np
import pytest

import flexnnd
from flexnn_client import EXIT_OK
from flexnn_client.ctl import main as flexnnctl
from flexnnd.graph.package import read_package
from flexnnd.planner.ladder import LADDER_FILE, RUNGS, build_ladder, choose, stored_ladder
from flexnnd.planner.plan import PLAN_VERSION
from flexnnd.planner.plan_file import summary
from flexnnd.planner.profile import Machine
from flexnnd.planner.resident import plan_resident
from tests.conftest import save
from tests.runtime.test_streaming import fc_chain

MACHINE = Machine(
    gemm_flops=5e10, winograd_flops=8e10, depthwise_flops=1e10, memory_bytes=1e10, read_bytes=1e9
)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ladder")
    return read_package(
        flexnnd.import_model(save(fc_chain(layers=6), tmp / "fc.onnx"), tmp / "pkg", ladder=False)
    )


def test_import_stores_the_ladder_and_sessions_only_read_it(tmp_path, monkeypatch):
    onnx_path = save(fc_chain(layers=6), tmp_path / "fc.onnx")
    package = read_package(
        flexnnd.import_model(onnx_path, tmp_path / "pkg", calibration_dir=tmp_path / "cal")
    )
    ladder = stored_ladder(package)
    assert len(ladder) >= 2 and (tmp_path / "cal" / "calibration.json").exists()

    def no_planning(*args, **kwargs):
        raise AssertionError("a session planned although the package holds its ladder")

    monkeypatch.setattr("flexnnd.runtime.session.plan_for_budget", no_planning)
    monkeypatch.setattr("flexnnd.runtime.ladders.build_ladder", no_planning)
    with flexnnd.Session(package.path, budget=ladder[0].arena_bytes + 4096) as sess:
        assert sess.plan == ladder[0]
        sess.set_budget(ladder[-2].arena_bytes + sess.output_bytes)
        assert same_plan(sess._pending, ladder[-2])


def stale_package(onnx_path, folder, cache):
    """An import whose ladder file is then marked as written by an older flexnn."""
    package = read_package(flexnnd.import_model(onnx_path, folder, calibration_dir=cache))
    ladder_file = package.path / LADDER_FILE
    text = ladder_file.read_text()
    ladder_file.write_text(text.replace(f'"version": {PLAN_VERSION}', '"version": 1', 1))
    return package, text


def test_a_session_plans_a_stale_ladder_again_and_stores_it(tmp_path, monkeypatch):
    """Not budget by budget without the simulator, as before: the whole ladder, once, stored."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the calibration the import wrote
    package, current = stale_package(
        save(fc_chain(layers=6), tmp_path / "fc.onnx"), tmp_path / "pkg", tmp_path / "flexnn"
    )

    def no_planning(*args, **kwargs):
        raise AssertionError("planned one budget although the ladder was planned again")

    monkeypatch.setattr("flexnnd.runtime.session.plan_for_budget", no_planning)
    ladder = json.loads(current)
    with flexnnd.Session(package.path) as sess:
        assert json.loads((package.path / LADDER_FILE).read_text()) == ladder  # the same plans, stored
        rungs = stored_ladder(package)
        sess.set_budget(rungs[1].arena_bytes + sess.output_bytes)
        assert same_plan(sess._pending, rungs[1])
    monkeypatch.setattr("flexnnd.runtime.ladders.build_ladder", no_planning)
    flexnnd.Session(package.path).close()  # stored: the next session only reads it


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only tmpfs needs root")
def test_a_stale_ladder_on_a_read_only_package_is_planned_in_memory(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True)
    try:
        package, _ = stale_package(
            save(fc_chain(layers=6), tmp_path / "fc.onnx"), mnt / "pkg", tmp_path / "flexnn"
        )
        stale = (package.path / LADDER_FILE).read_bytes()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with flexnnd.Session(package.path) as sess:
            ladder = sess.ladder
            assert len(ladder) == RUNGS + 2 and all(p.predicted_seconds for p in ladder)
            sess.set_budget(ladder[0].arena_bytes + sess.output_bytes)
            sess.run({"x": np.ones(sess.inputs[0].shape, np.float32)})
            assert sess.plan == ladder[0]
        assert (package.path / LADDER_FILE).read_bytes() == stale
        assert "kept in memory" in caplog.text and "Read-only file system" in caplog.text
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def same_plan(a, b) -> bool:
    """Rungs of neighbouring budgets may share one plan: the same plan but for the budget."""
    return dataclasses.replace(a, budget=None) == dataclasses.replace(b, budget=None)


def test_rungs_span_smallest_to_resident(package):
    ladder = build_ladder(package.graph, MACHINE)
    assert len(ladder) == RUNGS + 2  # a rung per budget, though neighbours may share a plan
    budgets = [p.budget for p in ladder]
    assert budgets == sorted(set(budgets)) and all(p.arena_bytes <= p.budget for p in ladder)
    arenas = [p.arena_bytes for p in ladder]
    assert arenas == sorted(arenas)
    assert arenas[-1] == plan_resident(package.graph).arena_bytes
    assert ladder[0].loads and not ladder[-1].loads
    assert all(p.predicted_seconds > 0 for p in ladder)
    # Streaming costs time: the smallest rung is predicted slower than everything resident.
    assert ladder[0].predicted_seconds > ladder[-1].predicted_seconds
    with pytest.raises(flexnnd.BudgetTooSmall):
        flexnnd.planner.plan_budget.plan_for_budget(package.graph, int(ladder[0].arena_bytes * 0.9))


def test_choose_takes_the_largest_rung_that_fits(package):
    ladder = build_ladder(package.graph, MACHINE)
    middle = ladder[len(ladder) // 2]
    assert choose(ladder, middle.arena_bytes + 100) == middle
    assert choose(ladder, 10**12) == ladder[-1]
    with pytest.raises(flexnnd.BudgetTooSmall, match=f"{ladder[0].arena_bytes:,} bytes"):
        choose(ladder, ladder[0].arena_bytes - 1)


def test_flexnnctl_plans_builds_stores_and_reuses_the_ladder(package, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert flexnnctl(["plans", str(package.path)]) == EXIT_OK
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["budgets", "arena", "resident", "streamed", "sliced", "predicted"]
    stored = package.path / LADDER_FILE
    distinct = {(p.arena_bytes, summary(p)) for p in stored_ladder(package)}  # rungs: this machine's rates
    assert len(table) - 1 == len(distinct)  # one row per distinct plan
    mtime = stored.stat().st_mtime_ns
    assert flexnnctl(["plans", str(package.path)]) == EXIT_OK
    assert stored.stat().st_mtime_ns == mtime
    assert (tmp_path / "flexnn" / "calibration.json").exists()

    ladder = stored_ladder(package)
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    with flexnnd.Session(package.path) as sess:
        want = sess.run({"x": x})["y"]
        for rung in ladder:
            sess.set_budget(rung.arena_bytes + sess.output_bytes)
            np.testing.assert_allclose(sess.run({"x": x})["y"], want, rtol=1e-5, atol=1e-6)
            assert same_plan(sess.plan, rung)


def test_every_rung_of_squeezenet_matches_onnxruntime(zoo_model, package_cache, tmp_path):
    import shutil

    from flexnnd.planner.plan_file import write_plans
    from flexnnd.runtime.session import package_for
    from tests.conftest import assert_close_to_reference, ort_run

    path = zoo_model("squeezenet1_1")
    folder = shutil.copytree(package_for(path, package_cache), tmp_path / "pkg")
    package = read_package(folder)
    ladder = build_ladder(package.graph, MACHINE)
    assert len(ladder) >= 26
    write_plans(folder / LADDER_FILE, ladder, package.graph, package.weights_sha256)
    x = np.random.default_rng(5).standard_normal((1, 3, 224, 224), dtype=np.float32)
    want = ort_run(path, {"input": x})[0]
    with flexnnd.Session(folder, threads=1) as sess:
        for rung in ladder:
            sess.set_budget(rung.arena_bytes + sess.output_bytes)
            got = sess.run({"input": x})["logits"]
            assert same_plan(sess.plan, rung)
            assert_close_to_reference(got, want)
