"""Calibration measures positive rates once and reuses them from the cache."""

from __future__ import annotations

import json

from flexnnd.planner import calibrate


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
