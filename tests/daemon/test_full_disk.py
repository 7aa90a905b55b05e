"""A full disk while writing packages, plan caches and state: a clear error, the old files whole.

Needs root to mount a small tmpfs (the only way to get a really full filesystem here).
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import flexnnd
from flexnn_client.client import ClientError
from flexnnd.errors import StorageError
from flexnnd.graph.package import read_package
from flexnnd.planner.ladder import LADDER_FILE, stored_ladder
from flexnnd.planner.plan_file import read_plans, write_plans
from flexnnd.runtime.calibrate import machine
from flexnnd.storage import write_atomically
from tests.daemon.harness import DaemonProcess
from tests.daemon.test_models import fc_model

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def tiny_fs(tmp_path):
    """A 16 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs: Path) -> Path:
    """Write a file until the filesystem refuses a single byte more."""
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(bytes(chunk))
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    return filler


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_plan_cache_and_package_writes_on_a_full_disk_fail_clearly_and_keep_the_old_files(tiny_fs, tmp_path):
    fc_model(tmp_path / "m.onnx", width=192, seed=3)
    pkg = Path(flexnnd.import_model(tmp_path / "m.onnx", tiny_fs / "pkg", calibration_dir=tmp_path / "cal"))
    package = read_package(pkg)
    ladder = stored_ladder(package)  # the import planned and stored it
    assert len(ladder) > 2
    before = digests(pkg)
    fill(tiny_fs)

    with pytest.raises(StorageError) as e:
        write_plans(
            pkg / LADDER_FILE,
            [*ladder[: len(ladder) // 2], ladder[-1]],
            package.graph,
            package.weights_sha256,
        )
    message = str(e.value)
    assert (
        "No space left on device" in message and "plan cache" in message and str(pkg / LADDER_FILE) in message
    )
    assert "bytes to write" in message and "unchanged" in message
    assert [p.arena_bytes for p in read_plans(pkg / LADDER_FILE, package.graph, package.weights_sha256)] == [
        p.arena_bytes for p in ladder
    ]

    with pytest.raises(StorageError, match=r"model package .*No space left on device"):
        flexnnd.import_model(tmp_path / "m.onnx", tiny_fs / "pkg", calibration_dir=tmp_path / "cal")
    assert digests(pkg) == before
    read_package(pkg, verify=True)  # weights still match their checksum

    rates = machine(tmp_path / "calibration", pkg / "weights.bin")  # no room for the read probe: an estimate
    assert rates.read_bytes > 0 and not (tmp_path / "calibration" / "calibration.json").exists()

    with pytest.raises(StorageError, match=r"state file .*No space left"):
        write_atomically(tiny_fs / "budget", "64M\n" * 4096, "state file")
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["filler", "pkg"]  # no temporary files left behind


def test_the_daemon_on_a_full_disk_refuses_loads_and_budgets_clearly_and_keeps_serving(tiny_fs, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    fc_model(models / "a.onnx", seed=1)
    fc_model(models / "b.onnx", width=192, seed=2)
    d = DaemonProcess(
        tmp_path / "d",
        ["--models-dir", str(models), "--models", "a.onnx", "--threads", "1", "--no-watch-pressure"],
    )
    d.state, d.cache = tiny_fs / "state", tiny_fs / "cache"  # the log stays off the full filesystem
    d.start()
    try:
        x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
        with d.client() as c:
            want = c.infer("a", {"x": x})["y"]
            c.set_budget("32M")
            packages = {p.name: digests(p) for p in (tiny_fs / "cache" / "packages").iterdir()}
            budget_before = (tiny_fs / "state" / "budget").read_text()
            filler = fill(tiny_fs)

            with pytest.raises(ClientError, match="No space left on device"):
                c.load_model("b", "b.onnx")
            with pytest.raises(ClientError, match="No space left on device"):
                c.set_budget("24M")
            np.testing.assert_array_equal(c.infer("a", {"x": x})["y"], want)  # still serving, same plan
            assert [m.name for m in c.models()] == ["a"]
            assert (tiny_fs / "state" / "budget").read_text() == budget_before
            assert {p.name: digests(p) for p in (tiny_fs / "cache" / "packages").iterdir()} == packages

            filler.unlink()  # room again: the same requests now succeed
            c.load_model("b", "b.onnx")
            assert sorted(m.name for m in c.models()) == ["a", "b"]
            c.set_budget("24M")
    finally:
        d.stop()
        d.close()
