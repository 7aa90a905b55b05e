"""Per-model statistics: histograms, what a served request records, and that the warm-up run at load
is not a served request (status showed it as the last latency)."""

from __future__ import annotations

import numpy as np
import pytest

from flexnnd.daemon import oip
from flexnnd.daemon.events import EventBus
from flexnnd.daemon.model_stats import BYTES_BUCKETS, SECONDS_BUCKETS, Histogram, ModelStats
from flexnnd.daemon.models import Models
from flexnnd.daemon.status import model_status
from flexnnd.errors import Overloaded
from tests.daemon.test_models import fc_model


def test_histogram_counts_a_value_equal_to_a_bound_under_it():
    h = Histogram((1.0, 2.0, 4.0))
    for value in (0.5, 1.0, 1.5, 2.0, 4.0, 4.5, 100.0):
        h.observe(value)
    assert h.counts == [2, 2, 1, 2]
    assert h.cumulative() == [2, 4, 5, 7] and h.count == 7
    assert h.sum == pytest.approx(113.5)


def test_buckets_are_increasing():
    for bounds in (SECONDS_BUCKETS, BYTES_BUCKETS):
        assert list(bounds) == sorted(set(bounds))
    assert BYTES_BUCKETS[0] == 0 and BYTES_BUCKETS[-1] == 4 << 30


def test_stats_split_a_request_into_its_parts():
    stats = ModelStats()
    stats.ran(queue_s=0.002, infer_s=0.010, stall_s=0.001, read_bytes=70_000)
    stats.answered(input_s=0.0005, output_s=0.0002, total_s=0.0127)
    stats.failed(0.003)
    entry = oip.model_statistics("net", "1", stats, memory_bytes=4096)
    assert (entry.inference_count, entry.execution_count) == (1, 1)
    assert entry.last_inference > 0
    s = entry.inference_stats
    assert (s.success.count, s.success.ns) == (1, 12_700_000)
    assert (s.fail.count, s.fail.ns) == (1, 3_000_000)
    assert (s.queue.ns, s.compute_input.ns, s.compute_infer.ns, s.compute_output.ns) == (
        2_000_000,
        500_000,
        10_000_000,
        200_000,
    )
    assert [(m.type, m.byte_size) for m in entry.memory_usage] == [("CPU", 4096)]
    assert stats.read_bytes.counts[2] == 1  # 70,000 bytes: above 64 KiB, within 256 KiB
    assert stats.last_latency_s == 0.010


@pytest.fixture
def models(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "daemon-models-cache"  # shared with test_models: built once
    m = Models(cache, EventBus(), threads=1, queue_depth=2)
    yield m
    m.close()


def test_the_warm_up_run_is_not_a_served_request(models, tmp_path):
    model = models.load("a", fc_model(tmp_path / "a.onnx", seed=1))
    assert model.session.last_inference_seconds is not None  # the warm-up ran at load
    status = model_status(model.snapshot())
    assert (status.inferences, status.last_latency_s) == (0, 0.0)
    assert model.stats.latency.count == 0 and model.measured == {}

    model.run({"x": np.ones((1, 256), np.float32)})
    status = model_status(model.snapshot())
    assert status.inferences == 1
    assert status.last_latency_s == model.session.last_inference_seconds == model.stats.last_latency_s
    assert model.stats.latency.count == 1 and model.stats.queue.count == 1
    assert model.stats.read_bytes.counts[0] == 1  # every weight resident: nothing read per inference


def test_a_swap_is_counted_for_its_model(models, tmp_path):
    model = models.load("a", fc_model(tmp_path / "a.onnx", seed=1))
    smallest = min(r.cost for r in model.rungs)
    assert smallest < model.share  # the test needs a rung to swap down to
    models.rebalance(smallest, reason="test")
    assert models.swaps == 1 and model.stats.swap_seconds.count == 1
    model.run({"x": np.ones((1, 256), np.float32)})
    assert model.stats.read_bytes.counts[0] == 0  # a streamed plan reads weights in every inference


def test_concurrent_requests_are_each_counted_once(models, tmp_path):
    import threading

    model = models.load("a", fc_model(tmp_path / "a.onnx", seed=1))
    x = {"x": np.ones((1, 256), np.float32)}
    served = []

    def client():
        for _ in range(5):
            try:
                model.run(x)
                served.append(1)
            except Overloaded:
                pass  # capacity 3: the others are refused, and not counted as runs

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = model.stats
    assert (
        served
        and stats.inferences == len(served) == stats.latency.count == stats.queue.count == stats.stall.count
    )
    assert stats.compute_infer.ns == pytest.approx(stats.latency.sum * 1e9, rel=1e-6)
    assert model.queue_depth == 0
