"""A first start says what it does before READY and calibrates after it, the serving daemon never
loads onnx, and `flexnnd warm` leaves nothing for the next start to compile, plan or calibrate."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.daemon.harness import ROOT, DaemonProcess
from tests.daemon.test_models import fc_model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    fc_model(d / "a.onnx", seed=1)
    fc_model(d / "b.onnx", width=192, seed=2)
    return d


def statuses_before_ready(d: DaemonProcess) -> list[str]:
    d._drain(0.2)
    before = []
    for note in d.notifications:
        if "READY=1" in note:
            return before
        before += re.findall(r"^STATUS=(.*)$", note, re.M)
    raise AssertionError(f"no READY=1 in {d.notifications}")


def mapped_files(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def wait_for_log(d: DaemonProcess, pattern: str, timeout: float = 600) -> re.Match:
    deadline = time.monotonic() + timeout
    while not (found := re.search(pattern, d.log())):
        assert d.proc.poll() is None, f"flexnnd exited with {d.proc.returncode}:\n{d.log()}"
        assert time.monotonic() < deadline, f"no {pattern!r} in the log within {timeout} s:\n{d.log()}"
        time.sleep(0.2)
    return found


def test_a_first_start_reports_its_progress_and_calibrates_after_ready(tmp_path, models_dir):
    d = DaemonProcess(
        tmp_path / "d", ["--models-dir", str(models_dir), "--models", "a.onnx", "--threads", "1"]
    )
    try:
        d.start(settle=False)
        statuses = statuses_before_ready(d)
        assert statuses[0] == "loading a"
        # The import and planning run in a child; its progress reaches systemd through the daemon.
        for expected in ("importing a.onnx 0/3", "planning a "):
            assert any(s.startswith(expected) for s in statuses), (expected, statuses)
        assert re.search(r"flexnnd\.progress: planning a: done, (\d+)/\1 in ", d.log())
        # Calibration waits for READY: the ladder served meanwhile is planned with estimated rates.
        assert not any(s.startswith("calibrating") for s in statuses), statuses
        (package,) = (d.cache / "packages").glob("a-*")
        with d.client() as c:  # loaded while the machine calibrates: planned with estimated rates too
            c.load_model("b", "b.onnx")
        wait_for_log(d, r"a: ladder planned again with this machine's calibration")
        d.wait_for_calibration(600)
        assert (d.cache / "calibration.json").is_file()
        assert sorted(p.name for p in package.glob("plans*")) == ["plans.json"]
        (package_b,) = (d.cache / "packages").glob("b-*")
        assert sorted(p.name for p in package_b.glob("plans*")) == ["plans.json"], d.log()
        with d.client() as c:
            c.unload_model("b")
        # The calibrated ladder serves: a budget that needs a streamed rung swaps to one of its plans.
        with d.client() as c:
            smallest = min(p.budget_bytes for p in c.plans("a"))
            c.set_budget(smallest)
            assert c.infer("a", np.zeros((1, 256), np.float32))["y"].shape == (1, 256)
            (model,) = c.status().models
            assert 0 < model.budget_bytes <= smallest
        # It imported an .onnx file (in a child), yet onnx's library and scipy.linalg's never came in.
        maps = mapped_files(d.proc.pid)
        assert "onnx_cpp2py_export" not in maps
        assert "scipy/linalg" not in maps
        assert "libllvmlite" in maps  # the check reads the right process: it runs numba kernels
    finally:
        d.stop()
        d.close()


def test_a_stop_during_calibration_ends_it_and_the_next_start_calibrates(tmp_path, models_dir):
    cache = tmp_path / "cache"
    args = ["--models-dir", str(models_dir), "--models", "a.onnx", "--threads", "1"]
    d = DaemonProcess(tmp_path / "d1", args, cache=cache)
    try:
        d.start(settle=False)
        assert "calibrating this machine after READY" in d.log()
        assert d.stop() == 0  # the calibrating child is ended, not waited for
    finally:
        d.close()
    (package,) = (cache / "packages").glob("a-*")
    assert (package / "plans.provisional").exists() and not (cache / "calibration.json").exists()
    d = DaemonProcess(tmp_path / "d2", args, cache=cache)
    try:
        d.start()
        wait_for_log(d, r"a: ladder planned again with this machine's calibration")
        assert not (package / "plans.provisional").exists()
    finally:
        d.stop()
        d.close()


def warm(models_dir, cache, numba_cache, *models):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "flexnnd.main",
            "warm",
            *models,
            "--models-dir",
            str(models_dir),
            "--numba-cache",
            str(numba_cache),
        ],
        env={**DaemonProcess(cache).env, "CACHE_DIRECTORY": str(cache)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_warm_fills_the_caches_so_the_next_start_compiles_and_plans_nothing(tmp_path, models_dir):
    cache, numba_cache = tmp_path / "cache", tmp_path / "numba"
    done = warm(models_dir, cache, numba_cache, "a")  # `a` finds a.onnx, as `flexnnctl load a` does
    assert done.returncode == 0, done.stderr
    assert re.search(r"compiling kernels: done, [1-9]\d* steps", done.stderr), done.stderr
    assert list(numba_cache.rglob("*.nbi")) and list(numba_cache.rglob("*.nbc"))
    assert (cache / "calibration.json").is_file()
    assert [p.parent.name for p in (cache / "packages").glob("*/plans.json")] != []

    d = DaemonProcess(
        tmp_path / "d",
        ["--models-dir", str(models_dir), "--models", "a.onnx", "--threads", "1"],
        env={"NUMBA_CACHE_DIR": str(numba_cache)},
        cache=cache,
    )
    try:
        d.start()
        assert statuses_before_ready(d) == ["loading a"]
        assert "compiling kernels" not in d.log() and "planning" not in d.log()
        assert "after READY" not in d.log()  # calibrated by warm: nothing left for after READY
    finally:
        d.stop()
        d.close()


def test_warm_names_a_model_it_cannot_find(tmp_path, models_dir):
    done = warm(models_dir, tmp_path / "cache", tmp_path / "numba", "nosuch")
    assert done.returncode == 1
    assert "no model 'nosuch'" in done.stderr
