"""The Prometheus text endpoint (GET /metrics): the daemon's live state, read at each scrape.

Off unless `metrics_address` is set; prometheus_client is imported only then. Each daemon has its
own CollectorRegistry (never the global one, so several daemons can live in one test process)
holding the process collector (RSS, CPU, open files) and DaemonCollector, which reads the budget
control's decision and runtime overhead, every model's plan and statistics
(flexnnd.daemon.model_stats.ModelStats), readiness and the swap and pressure counters when scraped:
no gauge to keep in step with the daemon. Plain HTTP without authentication: bind it to loopback,
or to an address only the scrapers can reach.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Callable, Iterator

from flexnnd.daemon.budget import BudgetControl
from flexnnd.daemon.config import is_loopback
from flexnnd.daemon.model_stats import Histogram
from flexnnd.daemon.models import Model, Models
from flexnnd.daemon.monitor import EVENT_NAMES
from flexnnd.errors import ConfigError

log = logging.getLogger("flexnnd.metrics")


class Metrics:
    """The daemon's counters that live nowhere else, and the endpoint serving them with the live state
    of what it is given: the budget control, the models and whether every model is ready."""

    def __init__(self, budget: BudgetControl, models: Models, ready: Callable[[], bool]):
        self.budget, self.models, self.ready = budget, models, ready
        self._pressure: collections.Counter[str] = collections.Counter()  # MemoryEvent kind -> count
        self._lock = threading.Lock()
        self._server = None
        self._thread: threading.Thread | None = None
        self.registry = None
        self.address: tuple[str, int] | None = None  # where it listens, the port resolved

    def count_pressure(self, kind: str, count: int) -> None:
        with self._lock:
            self._pressure[kind] += count

    def pressure_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._pressure)

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Serve /metrics on host:port (port 0 picks one) from a thread; the address bound."""
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(DaemonCollector(self))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise ConfigError(f"metrics_address {_url_host(host, port)}: cannot listen: {e}") from None
        self.address = (host, self._server.server_address[1])
        log.info("metrics on http://%s/metrics", _url_host(*self.address))
        if host != "localhost" and not is_loopback(host):
            log.warning(
                "metrics on %s answer anyone who reaches it, without authentication", _url_host(*self.address)
            )
        return self.address

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None


def _url_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DaemonCollector:
    """Reads the state `Metrics` was given at scrape time. Model series carry a `model` label; a model
    that is unloaded stops being reported, and one loaded again starts its counters from zero."""

    def __init__(self, source: Metrics):
        self.source = source

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        source = self.source
        decision = source.budget.decision
        budget = GaugeMetricFamily(
            "flexnn_budget_bytes",
            "Model budget in force (+Inf: unlimited); `source` says what sets it.",
            labels=["source"],
        )
        if decision is not None:
            budget.add_metric([decision.source], math.inf if decision.budget is None else decision.budget)
        yield budget
        yield GaugeMetricFamily(
            "flexnn_committed_bytes",
            "Bytes the loaded plans hold: arenas and one inference's output copies each.",
            value=source.models.committed,
        )
        yield GaugeMetricFamily(
            "flexnn_runtime_overhead_bytes",
            "RSS beside the models' arenas, measured after start.",
            value=source.budget.runtime_overhead,
        )
        yield GaugeMetricFamily(
            "flexnn_anonymous_memory_bytes",
            "Anonymous resident memory of the daemon (RssAnon): the part the kernel cannot drop.",
            value=_anonymous_rss(),
        )
        yield GaugeMetricFamily(
            "flexnn_ready", "1 when every model is ready to infer.", value=int(source.ready())
        )
        yield CounterMetricFamily(
            "flexnn_swaps", "Plan swaps of loaded models since start.", value=source.models.swaps
        )
        pressure = CounterMetricFamily(
            "flexnn_pressure_events",
            "Memory events seen: PSI triggers (pressure) and memory.events increases (low, high, max, oom, oom_kill).",
            labels=["kind"],
        )
        seen = dict.fromkeys(("pressure", *EVENT_NAMES), 0) | source.pressure_counts()
        for kind, count in seen.items():
            pressure.add_metric([kind], count)
        yield pressure
        yield from _model_families(source.models.all())


# name, help, value from a ModelSnapshot
_MODEL_GAUGES = (
    ("flexnn_model_ready", "1 when the model is ready to infer.", lambda m: int(m.ready)),
    ("flexnn_model_budget_bytes", "The model's share of the budget.", lambda m: m.share or 0),
    (
        "flexnn_model_arena_bytes",
        "Arena of the plan in use.",
        lambda m: m.figures.arena_bytes if m.figures else 0,
    ),
    (
        "flexnn_model_resident_bytes",
        "Weight bytes the plan keeps in its arena.",
        lambda m: m.figures.resident_bytes if m.figures else 0,
    ),
    (
        "flexnn_model_streamed_bytes",
        "Weight bytes the plan reads from disk during each inference.",
        lambda m: m.figures.streamed_bytes if m.figures else 0,
    ),
    (
        "flexnn_model_queue_depth",
        "Requests running or waiting for the model's arena.",
        lambda m: m.queue_depth,
    ),
)
# name, help, ModelStats attribute
_MODEL_HISTOGRAMS = (
    ("flexnn_inference_seconds", "Time of each served inference in the model's session.", "latency"),
    (
        "flexnn_inference_stall_seconds",
        "Per inference: how long compute waited for streamed weights.",
        "stall",
    ),
    ("flexnn_inference_read_bytes", "Per inference: weight bytes read from disk.", "read_bytes"),
    (
        "flexnn_swap_seconds",
        "Plan swaps of the model: building the new arena and loading its weights.",
        "swap_seconds",
    ),
)


def _model_families(models: list[Model]) -> Iterator:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    gauges = {name: GaugeMetricFamily(name, text, labels=["model"]) for name, text, _ in _MODEL_GAUGES}
    histograms = {
        name: HistogramMetricFamily(name, text, labels=["model"]) for name, text, _ in _MODEL_HISTOGRAMS
    }
    inferences = CounterMetricFamily(
        "flexnn_model_inferences",
        "Requests served since the model was loaded (not its warm-up).",
        labels=["model"],
    )
    failures = CounterMetricFamily("flexnn_model_failures", "Requests refused or failed.", labels=["model"])
    for model in models:
        snapshot = model.snapshot()
        for name, _, value in _MODEL_GAUGES:
            gauges[name].add_metric([model.name], value(snapshot))
        with model.stats.lock:
            inferences.add_metric([model.name], model.stats.inferences)
            failures.add_metric([model.name], model.stats.fail.count)
            for name, _, attribute in _MODEL_HISTOGRAMS:
                histogram: Histogram = getattr(model.stats, attribute)
                bounds = [floatToGoString(b) for b in histogram.bounds] + ["+Inf"]
                histograms[name].add_metric(
                    [model.name], list(zip(bounds, histogram.cumulative(), strict=True)), histogram.sum
                )
    yield from gauges.values()
    yield inferences
    yield failures
    yield from histograms.values()


def _anonymous_rss() -> int:
    """RssAnon of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0  # a kernel thread has none; a process always has the line
