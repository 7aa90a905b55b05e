"""The metrics endpoint scraped over real HTTP from the real daemon, and its JSON log lines."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flexnnd.daemon.config import Config
from flexnnd.daemon.logformat import JsonFormatter
from flexnnd.errors import ConfigError
from tests.daemon.harness import DaemonProcess
from tests.daemon.test_models import fc_model


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    fc_model(models / "a.onnx", seed=1)
    d = DaemonProcess(
        tmp_path_factory.mktemp("daemon"),
        [
            *("--models-dir", str(models), "--models", "a.onnx", "--threads", "1"),
            *("--metrics-address", "127.0.0.1:0", "--log-format", "json"),
        ],
        cache=tmp_path_factory.getbasetemp() / "observability-cache",  # shared with test_triton_extensions
    )
    d.start()
    yield d
    d.stop()
    d.close()


def log_entries(daemon: DaemonProcess) -> list[dict]:
    return [json.loads(line) for line in daemon.log().splitlines()]


def scrape(daemon: DaemonProcess) -> dict[tuple[str, tuple], float]:
    """Every sample of the endpoint, keyed by (name, sorted labels)."""
    (url,) = [
        e["message"].split()[-1] for e in log_entries(daemon) if e["message"].startswith("metrics on http://")
    ]
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_scrape_shows_budget_plan_and_served_inferences(daemon):
    before = scrape(daemon)
    a = (("model", "a"),)
    with daemon.client() as c:
        for seed in range(4):
            c.infer("a", {"x": np.random.default_rng(seed).standard_normal((1, 256)).astype(np.float32)})
        status = c.status()
    after = scrape(daemon)
    assert after[("flexnn_model_inferences_total", a)] - before[("flexnn_model_inferences_total", a)] == 4
    assert after[("flexnn_inference_seconds_count", a)] - before[("flexnn_inference_seconds_count", a)] == 4
    assert (
        after[("flexnn_inference_seconds_bucket", (("le", "+Inf"), *a))]
        == after[("flexnn_inference_seconds_count", a)]
    )
    assert after[("flexnn_inference_seconds_sum", a)] > before[("flexnn_inference_seconds_sum", a)]
    assert (
        after[("flexnn_inference_read_bytes_bucket", (("le", "0.0"), *a))]
        == after[("flexnn_inference_read_bytes_count", a)]
    )  # every weight resident: no inference read any
    (budget,) = [(k, v) for k, v in after.items() if k[0] == "flexnn_budget_bytes"]
    assert budget == (
        ("flexnn_budget_bytes", (("source", status.budget_source),)),
        status.effective_budget_bytes,
    )
    (model,) = status.models
    assert after[("flexnn_model_arena_bytes", a)] == model.arena_bytes > 0
    assert after[("flexnn_model_resident_bytes", a)] == model.resident_bytes
    assert after[("flexnn_model_streamed_bytes", a)] == model.streamed_bytes == 0
    assert after[("flexnn_model_budget_bytes", a)] == model.budget_bytes
    assert after[("flexnn_model_ready", a)] == after[("flexnn_ready", ())] == 1
    assert after[("flexnn_model_queue_depth", a)] == 0
    assert after[("flexnn_committed_bytes", ())] == model.plan_budget_bytes
    assert after[("flexnn_runtime_overhead_bytes", ())] == status.runtime_overhead_bytes
    assert after[("process_resident_memory_bytes", ())] > after[("flexnn_anonymous_memory_bytes", ())] > 0
    assert after[("flexnn_pressure_events_total", (("kind", "oom_kill"),))] >= 0


def test_a_swap_shows_in_the_counters_and_the_budget_source(daemon):
    a = (("model", "a"),)
    before = scrape(daemon)
    with daemon.client() as c:
        smallest = min(p.budget_bytes for p in c.plans("a"))
        c.set_budget(smallest)
        try:
            after = scrape(daemon)
            c.infer("a", {"x": np.ones((1, 256), np.float32)})
            streamed = scrape(daemon)
        finally:
            c.set_budget("auto")
    assert after[("flexnn_swaps_total", ())] == before[("flexnn_swaps_total", ())] + 1
    assert after[("flexnn_swap_seconds_count", a)] == before[("flexnn_swap_seconds_count", a)] + 1
    assert after[("flexnn_budget_bytes", (("source", "operator"),))] == smallest
    assert after[("flexnn_model_streamed_bytes", a)] > 0
    reads = (
        ("flexnn_inference_read_bytes_count", a),
        ("flexnn_inference_read_bytes_bucket", (("le", "0.0"), *a)),
    )
    assert (
        streamed[reads[0]] == after[reads[0]] + 1 and streamed[reads[1]] == after[reads[1]]
    )  # it read weights
    assert streamed[("flexnn_inference_read_bytes_sum", a)] > after[("flexnn_inference_read_bytes_sum", a)]


def test_every_log_line_is_a_json_object(daemon):
    with daemon.client() as c:
        c.infer("a", {"x": np.ones((1, 256), np.float32)})
    entries = log_entries(daemon)  # fails on any line that is not JSON
    assert len(entries) >= 5
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    loaded = [e for e in entries if e.get("event") == "model" and "loaded from" in e["message"]]
    assert [e["model"] for e in loaded] == ["a"]


def test_json_formatter_keeps_extras_and_exceptions():
    import logging

    record = logging.LogRecord("flexnnd.x", logging.ERROR, __file__, 1, "swap %s\nfailed", ("a",), None)
    record.model = "a"
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"], entry["model"]) == (
        "ERROR",
        "flexnnd.x",
        "swap a\nfailed",
        "a",
    )
    assert "ValueError: bad" in entry["exception"]


@pytest.mark.parametrize(
    ("address", "host_port"),
    [("9464", ("127.0.0.1", 9464)), ("[::1]:0", ("::1", 0)), ("", None), ("0.0.0.0:9464", ("0.0.0.0", 9464))],
)
def test_metrics_address(address, host_port):
    assert Config(metrics_address=address).metrics_host_port == host_port


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:99999", "[::1]"])
def test_bad_metrics_address_is_refused_at_start(address):
    with pytest.raises(ConfigError, match="metrics_address"):
        Config(metrics_address=address)


def test_a_busy_metrics_port_stops_the_start_with_its_address(tmp_path):
    import socket

    from flexnnd.daemon.budget import BudgetControl
    from flexnnd.daemon.events import EventBus
    from flexnnd.daemon.metrics import Metrics
    from flexnnd.daemon.models import Models

    events = EventBus()
    models = Models(tmp_path / "cache", events)
    metrics = Metrics(
        BudgetControl(Config(), tmp_path / "state", models, events), models, ready=lambda: False
    )

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}: cannot listen"):
            metrics.start("127.0.0.1", port)
