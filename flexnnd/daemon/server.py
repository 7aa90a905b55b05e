"""flexnnd's lifecycle: startup → main loop → shutdown.

Startup loads the configuration, takes the instance lock, loads the models and their ladders,
warms the kernels, measures the runtime's own memory, binds the socket, and only then tells
systemd READY=1. The main loop waits on memory pressure, re-decides the budget, swaps plans,
pings the watchdog once the inference workers look alive, and reloads on SIGHUP. Shutdown stops
accepting, drains in-flight requests within the grace period, then cancels and says how many.
Signal handlers only set flags. The parts live beside it: budget control (budget.py), health and
the watchdog (health.py), what a reload changes and the watched files (reload.py), the servicers'
Backend (wiring.py), transport (transport.py), status messages (status.py), the models directory
(catalog.py), the metrics endpoint (metrics.py).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc
import psutil
from flexnn_api.sizes import format_size

from flexnnd import progress, zoo
from flexnnd.daemon import heap, prepare, status, transport, wiring
from flexnnd.daemon.budget import BudgetControl
from flexnnd.daemon.catalog import Catalog
from flexnnd.daemon.config import Config, create_dirs, resolve_dirs
from flexnnd.daemon.events import Event, EventBus
from flexnnd.daemon.health import Health, Watchdog
from flexnnd.daemon.lock import InstanceLock
from flexnnd.daemon.logfilter import install_grpc_log_limit
from flexnnd.daemon.metrics import Metrics
from flexnnd.daemon.models import Models
from flexnnd.daemon.reload import FileWatch, apply_config
from flexnnd.daemon.sdnotify import Notifier, watchdog_interval
from flexnnd.errors import ConfigError, FlexnnError
from flexnnd.ops import jit

log = logging.getLogger("flexnnd")

EXIT_OK = 0
EXIT_FAILED = 1  # a failure while serving
EXIT_STARTUP = 3  # configuration, lock, model or socket problems before serving began
EXIT_FORCED = 130  # a second SIGINT cut the drain short

TICK_S = 0.5  # the main loop's longest sleep: the bound on reacting to a signal flag


class Daemon:
    def __init__(
        self,
        config: Config,
        env: Mapping[str, str] | None = None,
        config_path: Path | None = None,
        reload: Callable[[], Config] | None = None,
    ):
        self.env = dict(os.environ if env is None else env)
        self.config = config
        self._load_config = reload or (lambda: self.config)  # SIGHUP: the file again, the flags kept
        self.dirs = resolve_dirs(config, self.env)
        self.events = EventBus()
        self.models = Models(self.dirs.cache, self.events, config.threads or None, config.queue_depth)
        self.budget = BudgetControl(config, self.dirs.state, self.models, self.events)
        self.health = Health(self.models)
        self.budget.on_change = self.health.update
        # the endpoint starts with the servers, if metrics_address is set
        self.metrics = Metrics(self.budget, self.models, ready=self.health.ready)
        self.catalog = Catalog(self.dirs, self.events, lambda: self.config)
        self.file_watch = FileWatch(self.budget, config_path, self.request_reload)
        self.notifier = Notifier.from_env(self.env)
        self.started = time.time()
        self.servers: list[grpc.Server] = []
        self.compiler_pages = heap.CompilerPages()
        self.idle_overhead = 0  # RSS beside the arenas once LLVM's code is out: what trimming aims back at
        self.lock: InstanceLock | None = None
        self.should_exit = threading.Event()
        self.force_exit = False
        self.reload_requested = False
        self._status_sent = ""

    def status_text(self) -> str:
        return status.status_text(self.budget, self.models)

    def install_signal_handlers(self) -> None:
        def on_stop(signum, frame):
            if self.should_exit.is_set() and signum == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting for in-flight requests
            self.should_exit.set()

        def on_hup(signum, frame):
            self.request_reload()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def startup(self) -> None:
        dirs, budget = self.dirs, self.budget
        create_dirs(dirs)
        self.lock = InstanceLock(dirs.lock)
        budget.operator_budget = budget.read_operator_budget()
        budget.warn_if_overridden()
        if self.config.watch_pressure:
            budget.open_monitor(self.env)
        rss, anon = heap.own_memory()
        log.info("runtime before models: RSS %s, anonymous %s", format_size(rss), format_size(anon))
        specs = self.config.models or (zoo.DEFAULT_MODEL,)
        # The first decision has no runtime overhead measured yet; the real one follows warm-up.
        budget.reevaluate([])
        # Imports, planning, calibration and kernel compilation say how far they are: log and STATUS=.
        progress.set_sinks([progress.LogSink(), progress.StatusSink(self.notifier, idle=self.status_text)])
        jit.skip_blas_probe()
        self.models.estimate = True  # READY first: a machine not calibrated yet is calibrated after it
        with jit.compiling():  # a cold numba cache compiles the kernels during each model's warm-up
            self.catalog.load_at_start(self.models, specs, self.notifier.status)
        backend = wiring.backend(
            lambda: self.config, self.models, self.events, self.catalog, budget, self.health, self.started
        )
        self.servers = wiring.start_servers(self.config, dirs.socket, backend, self.health)
        if self.config.metrics_host_port is not None:
            self.metrics.start(*self.config.metrics_host_port)
        # Measured before LLVM's code is paged out: a later compile (a new kernel at a swap) reads it
        # back, and a cgroup budget must leave it room.
        budget.runtime_overhead = max(0, psutil.Process().memory_info().rss - self.models.committed)
        log.info("runtime overhead %s (RSS beside the models' arenas)", format_size(budget.runtime_overhead))
        if released := self.compiler_pages.release_if_used():
            log.info("paged out LLVM's code now that the kernels are loaded: RSS -%s", format_size(released))
        self.idle_overhead = max(0, psutil.Process().memory_info().rss - self.models.committed)
        budget.reevaluate([])
        self.file_watch.start()
        calibration = prepare.calibrate_later(self.models)  # ladders planned with estimated rates
        self.notifier.ready()
        self.notifier.status(self.status_text())
        log.info("serving on %s: %s", dirs.socket, self.status_text())
        if calibration is not None:
            calibration.start()

    def request_reload(self) -> None:
        self.reload_requested = True  # the main loop reloads at its next tick

    def reload(self) -> None:
        """SIGHUP: re-read the config file; budget policy, models and logging apply now."""
        self.reload_requested = False
        self.notifier.reloading()
        try:
            fresh = self._load_config()
        except (ConfigError, OSError) as e:
            self.events.publish(Event("error", f"reload failed, keeping the old configuration: {e}"))
            self.notifier.ready()
            return
        old, self.config = self.config, fresh
        apply_config(old, fresh, self.budget, self.catalog, self.models, self.events)
        self.notifier.ready()

    def main_loop(self) -> None:
        watchdog = Watchdog(self.notifier, self.models, watchdog_interval(self.env))
        budget = self.budget
        budget.pending = False
        while not self.should_exit.is_set():
            monitor = budget.monitor
            pressure = monitor.wait(TICK_S) if monitor is not None else []
            if monitor is None:
                self.should_exit.wait(TICK_S)
            if self.reload_requested:
                self.reload()
            if self.models.check_weights():
                self.health.update()
            for event in pressure:
                self.metrics.count_pressure(event.kind, event.count)
                self.events.publish(
                    Event("pressure", f"{event.kind} ×{event.count} from {event.source}", source="pressure")
                )
            budget.reevaluate(pressure, force=budget.pending)
            budget.pending = False
            heap.trim_if_grown(self.models.committed, self.idle_overhead)
            if released := self.compiler_pages.release_if_used():
                log.debug(
                    "paged out LLVM's code after a compile or cache load: RSS -%s", format_size(released)
                )
            watchdog.tick(time.monotonic())
            text = self.status_text()
            if text != self._status_sent:  # systemd needs changes, not a stream of repeats
                self.notifier.status(text)
                self._status_sent = text

    def in_flight(self) -> int:
        return sum(m.queue_depth for m in self.models.all())

    def shutdown(self) -> int:
        self.notifier.stopping()
        self.health.servicer.enter_graceful_shutdown()
        code = EXIT_OK
        if self.servers:
            pending = self.in_flight()
            grace = 0.0 if self.force_exit else self.config.grace_period_s
            log.info("stopping: %d requests in flight, grace period %.1f s", pending, grace)
            transport.stop_servers(self.servers, grace, forced=lambda: self.force_exit)
            cancelled = self.in_flight()
            if cancelled:
                log.warning("cancelled %d requests still running after the grace period", cancelled)
            else:
                log.info("drained %d requests", pending)
            if self.force_exit:
                code = EXIT_FORCED
        self.events.close()
        self.metrics.stop()
        self.file_watch.stop()
        self.models.close()
        if self.budget.monitor is not None:
            self.budget.monitor.close()
        if self.dirs.socket.exists():
            self.dirs.socket.unlink()
        if self.lock is not None:
            self.lock.close()
        return code

    def serve(self) -> int:
        if not heap.tune_malloc():
            log.info("mallopt unavailable (not glibc): freed request buffers may stay in the heap")
        install_grpc_log_limit()  # a peer sending garbage must not fill the journal
        self.install_signal_handlers()
        try:
            self.startup()
        except FlexnnError as e:
            log.error("startup failed: %s", e)
            self.shutdown_quietly()
            return EXIT_STARTUP
        try:
            self.main_loop()
        except FlexnnError as e:
            log.error("stopping after an error: %s", e)
            self.shutdown()
            return EXIT_FAILED
        return self.shutdown()

    def shutdown_quietly(self) -> None:
        for server in self.servers:
            server.stop(0)
        self.metrics.stop()
        self.models.close()
        if self.budget.monitor is not None:
            self.budget.monitor.close()
        if self.lock is not None:
            self.lock.close()
