"""Calibration measures positive rates once and reuses them from the cache."""

from __future__ import annotations

import json
import math
import os

import pytest

from flexnnd.runtime import calibrate


def test_rates_are_measured_once_and_cached(tmp_path, monkeypatch):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(4 << 20))
    calls = []
    real = calibrate.measure
    monkeypatch.setattr(calibrate, "measure", lambda path: calls.append(path) or real(path))
    first = calibrate.machine(tmp_path / "cache", weights)
    again = calibrate.machine(tmp_path / "cache", weights)
    assert calls == [weights]
    assert first == again
    for rate in (
        first.gemm_flops,
        first.winograd_flops,
        first.depthwise_flops,
        first.memory_bytes,
        first.read_bytes,
    ):
        assert rate > 0
    assert first.gemm_flops > first.depthwise_flops  # BLAS is the fastest path per FLOP
    assert first.read_cpu >= 0.0
    (entry,) = json.loads((tmp_path / "cache" / "calibration.json").read_text()).values()
    assert entry["version"] == calibrate.CALIBRATION_VERSION


def test_a_corrupt_cache_is_measured_again(tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(1 << 20))
    (tmp_path / "calibration.json").write_text("{ not json")
    assert calibrate.machine(tmp_path, weights).read_bytes > 0


def test_a_model_without_weights_gets_a_real_read_rate(tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"")  # a model of activations only
    assert calibrate.machine(tmp_path / "cache", weights).read_bytes > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "weights.bin"]  # the probe is gone


def test_read_interference_charges_what_a_reader_takes_from_compute(tmp_path, monkeypatch):
    """On one CPU, a 'reader' that spins while it counts bytes takes about half the compute's
    time: the measured cost per byte is that loss over the bytes counted."""
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(4 << 20))

    def spinning_reader(fd, direct, view, size, stop, got):
        while not stop.is_set():
            got[0] += 1000  # a thousand 'bytes' per spin, all on the compute's CPU

    def idle_reader(fd, direct, view, size, stop, got):
        stop.wait()

    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        monkeypatch.setattr(calibrate, "_read_until", spinning_reader)
        costly = calibrate.read_interference(weights, rounds=3)
        monkeypatch.setattr(calibrate, "_read_until", idle_reader)
        free = calibrate.read_interference(weights, rounds=3)
    finally:
        os.sched_setaffinity(0, cpus)
    assert costly > 0
    assert free == 0.0  # nothing read: nothing charged


def test_read_interference_reads_the_file_as_the_loader_does(tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(4 << 20))
    cost = calibrate.read_interference(weights, rounds=2)
    assert math.isfinite(cost) and cost >= 0.0
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(bytes(4096))
    assert calibrate.read_interference(tiny) == 0.0  # too small for one of the loader's reads


def test_a_read_that_fails_while_timing_interference_is_raised(tmp_path, monkeypatch):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(4 << 20))

    def failing_reader(fd, direct, view, size, stop, got):
        got[1] = OSError(5, "Input/output error")

    monkeypatch.setattr(calibrate, "_read_until", failing_reader)
    with pytest.raises(OSError, match="Input/output error"):
        calibrate.read_interference(weights, rounds=1)


def test_a_slow_pass_does_not_set_a_kernel_rate(tmp_path, monkeypatch):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(4 << 20))
    fast = {"gemm_flops": 9e10, "winograd_flops": 1.3e11, "depthwise_flops": 3e10, "memory_bytes": 2.5e10,
            "fc_bytes": 2.6e10, "part_bytes": 2e10}  # fmt: skip
    slow = {k: v / 2.3 for k, v in fast.items()}  # a slow second of the machine, as seen here once
    noisy = dict(fast, part_bytes=9e10)  # a difference of two timings that came out tiny
    passes = iter([slow, fast, noisy])
    monkeypatch.setattr(calibrate, "_kernel_rates", lambda: dict(next(passes)))
    monkeypatch.setattr(calibrate, "KERNEL_PASSES", 3)
    found, measured = calibrate.measure(weights)
    assert measured
    assert found.depthwise_flops == 3e10 and found.memory_bytes == 2.5e10  # the best pass
    assert found.part_bytes == 2e10  # the median pass
