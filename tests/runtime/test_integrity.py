"""Weights that changed on disk since import fail the inference that reads them, whether they are
resident, streamed, or a weight cut into pieces some of which are resident and some streamed."""

from __future__ import annotations

import os

import numpy as np
import pytest

import flexnnd
from flexnnd.graph.package import read_package
from flexnnd.planner.plan_budget import Planner, _fill
from flexnnd.runtime import loader as loader_mod
from tests.conftest import save
from tests.runtime.test_streaming import fc_chain

X = np.random.default_rng(3).standard_normal((1, 256)).astype(np.float32)


@pytest.fixture
def package(tmp_path):
    return read_package(
        flexnnd.import_model(save(fc_chain(), tmp_path / "fc.onnx"), tmp_path / "pkg", ladder=False)
    )


def flip(package, tensor: str, row: int) -> None:
    """Change one byte of `tensor`'s row `row` in the weights file (a second flip restores it)."""
    entry = package.weights[tensor]
    at = entry.offset + row * (entry.nbytes // entry.shape[0]) + 5
    with open(package.weights_path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x40]))


def mixed_plan(package, streamed: bool):
    """w3 cut into four pieces by output rows: its last two resident and the others streamed
    (`streamed`), or every piece resident."""
    planner = Planner(package.graph)
    lay = planner.layout({"fc3": ("channels", 4)})
    if not streamed:
        return _fill(planner, lay, 1 << 30, latest_first=True)
    two = 2 * lay.piece_bytes["w3[192:256]"]
    budget = (
        _fill(planner, lay, 1 << 30, resident=False).arena_bytes + two + 4096
    )  # the streamed layout and two
    return _fill(planner, lay, budget, latest_first=True, most=two)


def test_a_streamed_weight_that_changed_fails_the_inference_until_it_is_repaired(package):
    with flexnnd.Session(package, budget=400 * 1024) as sess:
        want = sess.run({"x": X})["y"]
        streamed = sess._executor.plan.loads[0].piece
        tensor = sess._executor.plan.pieces[streamed].tensor
    with flexnnd.Session(package, budget=400 * 1024) as sess:  # a new plan adoption checks again
        flip(package, tensor, 0)
        fails_until_repaired(sess, package, tensor, want)


def fails_until_repaired(sess, package, tensor: str, want: np.ndarray) -> None:
    """Every inference fails naming the changed weight, not only the first; once the weight is
    flipped back the session serves the same output, and stops checking."""
    for _ in range(2):
        with pytest.raises(flexnnd.LoadError, match=rf"weight '{tensor}' .* fails its checksum as streamed"):
            sess.run({"x": X})
    flip(package, tensor, 0)
    np.testing.assert_array_equal(sess.run({"x": X})["y"], want)
    assert not sess._executor.loader.verifying  # checked once: later inferences pay nothing


def streamed_weight(sess) -> str:
    executor = sess._executor
    return executor.plan.pieces[executor.plan.loads[0].piece].tensor


def test_a_streamed_weight_changed_in_place_after_a_clean_inference_fails_the_next_one(package):
    with flexnnd.Session(package, budget=400 * 1024) as sess:
        want = sess.run({"x": X})["y"]  # verified whole: later inferences skip the checksums
        tensor = streamed_weight(sess)
        before = os.stat(package.weights_path)
        flip(package, tensor, 0)
        # A filesystem with coarse times may give the write the same mtime: move it on by a second.
        os.utime(package.weights_path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        fails_until_repaired(sess, package, tensor, want)


def test_a_change_the_file_times_do_not_show_is_caught_by_the_periodic_recheck(package, monkeypatch):
    """Bit rot, or a writer that puts the times back: the file looks unchanged (its ctime cannot be
    put back, so the stamp is pinned too), and only the re-check every recheck_seconds catches it."""
    monkeypatch.setattr(loader_mod, "_file_stamp", lambda fd: (0, 0, 0))
    with flexnnd.Session(package, budget=400 * 1024) as sess:
        want = sess.run({"x": X})["y"]
        tensor = streamed_weight(sess)
        sess._executor.loader.recheck_seconds = 0  # every inference is due
        before = os.stat(package.weights_path)
        flip(package, tensor, 0)
        os.utime(package.weights_path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert os.stat(package.weights_path).st_size == before.st_size
        with pytest.raises(flexnnd.LoadError, match=rf"weight '{tensor}' .* fails its checksum as streamed"):
            sess.run({"x": X})
        flip(package, tensor, 0)
        np.testing.assert_array_equal(sess.run({"x": X})["y"], want)


def test_a_changed_resident_piece_of_a_streamed_weight_fails_the_inference(package):
    plan = mixed_plan(package, streamed=True)
    resident_w3 = [p for p in plan.resident if p.startswith("w3[")]
    streamed_w3 = [ld.piece for ld in plan.loads if ld.piece.startswith("w3[")]
    assert resident_w3 and streamed_w3, (plan.resident, [ld.piece for ld in plan.loads])
    flip(package, "w3", 255)  # in the last piece: resident, read once when the plan is adopted
    with (
        flexnnd.Session(package, plan=plan) as sess,
        pytest.raises(flexnnd.LoadError, match=r"weight 'w3' .* fails its checksum as streamed"),
    ):
        sess.run({"x": X})


def test_a_changed_weight_all_of_whose_pieces_are_resident_fails_the_plan_adoption(package):
    plan = mixed_plan(package, streamed=False)
    assert not plan.loads and sum(p.startswith("w3[") for p in plan.resident) == 4
    flip(package, "w3", 100)
    with pytest.raises(flexnnd.LoadError, match=r"weight 'w3' .* fails its checksum"):
        flexnnd.Session(package, plan=plan)


def test_closing_a_streaming_plan_unmaps_its_arena_at_once(package):
    """The checksums hold views of the arena; closing the plan releases them, so the swap that
    closes it returns its memory before the next plan's arena is built."""
    with flexnnd.Session(package, budget=400 * 1024) as sess:
        sess.run({"x": X})
        executor = sess._executor
        assert executor.loader.checks
        mapping = executor.arena._map
        executor.close()
        assert mapping.closed
