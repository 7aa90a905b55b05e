"""flexnnd's lifecycle: startup → main loop → shutdown.

Startup loads the configuration, takes the instance lock, loads the models and their ladders,
warms the kernels, measures the runtime's own memory, binds the socket, and only then tells
systemd READY=1. The main loop waits on memory pressure, re-decides the budget, swaps plans,
pings the watchdog once the inference workers look alive, and reloads on SIGHUP. Shutdown stops
accepting, drains in-flight requests within the grace period, then cancels and says how many.
Signal handlers only set flags.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hmac
import ipaddress
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil
from flexnn_api.proto import inference_pb2, inference_pb2_grpc
from flexnn_api.proto.flexnn.control.v1 import control_pb2, control_pb2_grpc
from flexnn_api.sizes import format_size, parse_size
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flexnnd import progress, zoo
from flexnnd.daemon import prepare, services
from flexnnd.daemon.config import Config, create_dirs, resolve_dirs
from flexnnd.daemon.events import Event, EventBus
from flexnnd.daemon.lock import InstanceLock
from flexnnd.daemon.logfilter import install_grpc_log_limit
from flexnnd.daemon.metrics import Metrics
from flexnnd.daemon.models import Model, Models
from flexnnd.daemon.monitor import EventCounts, Monitor, MonitorConfig, Reading
from flexnnd.daemon.policy import BudgetPolicy, Decision, PolicyConfig
from flexnnd.daemon.prepare import in_child
from flexnnd.daemon.sdnotify import Notifier, watchdog_interval
from flexnnd.errors import BudgetTooSmall, ConfigError, FlexnnError, InvalidRequest, PlanError
from flexnnd.ops import jit
from flexnnd.storage import write_atomically

log = logging.getLogger("flexnnd")

EXIT_OK = 0
EXIT_FAILED = 1  # a failure while serving
EXIT_STARTUP = 3  # configuration, lock, model or socket problems before serving began
EXIT_FORCED = 130  # a second SIGINT cut the drain short

NO_READING = Reading(None, None, None, None, None, EventCounts(), None)  # no monitor: no machine constraint
BUDGET_FILE = "budget"
LOADED_FILE = "models.json"  # models loaded with LoadModel: name -> path in the models directory  # the operator's budget in the state directory: a size, absent means auto
MAX_WATCHERS = 8
TRIM_SLACK = 16 << 20  # RSS beyond runtime + plans that makes the main loop return free heap pages
CHANGES = frozenset(
    {"created", "modified", "moved", "deleted", "closed"}
)  # watchdog event types that change a file
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
        self.config, self.config_path = config, config_path
        self._load_config = reload or (lambda: self.config)  # SIGHUP: the file again, the flags kept
        self.dirs = resolve_dirs(config, self.env)
        self.events = EventBus()
        self.metrics = Metrics(self)  # the endpoint starts with the servers, if metrics_address is set
        self.models = Models(self.dirs.cache, self.events, config.threads or None, config.queue_depth)
        self.notifier = Notifier.from_env(self.env)
        self.policy = BudgetPolicy(self._policy_config(config))
        self.max_watchers = MAX_WATCHERS
        self.operator_budget: int | None = None
        self.decision: Decision | None = None
        self.runtime_overhead = 0
        self.started = time.time()
        self.monitor: Monitor | None = None
        self.servers: list[grpc.Server] = []
        self.health = health.HealthServicer()
        self.lock: InstanceLock | None = None
        self._budget_lock = threading.RLock()
        self.should_exit = threading.Event()
        self.force_exit = False
        self.reload_requested = False
        self._observer = None
        self._reported: int | None = None  # the budget last announced as an event
        self._reported_source = "none"
        self._status_sent = ""

    # ----- budget -----------------------------------------------------------------------------

    @staticmethod
    def _policy_config(config: Config) -> PolicyConfig:
        return PolicyConfig(
            headroom=config.headroom,
            quiet_period_s=config.quiet_period_s,
            min_dwell_s=config.min_dwell_s,
        )

    @property
    def config_max_bytes(self) -> int:
        return self.config.max_message_bytes

    @property
    def budget_file(self) -> Path:
        return self.dirs.state / BUDGET_FILE

    @property
    def configured_budget(self) -> int | None:
        """`--budget`/the TOML's budget: in force while the operator has set none; None is auto."""
        return self.config.budget_bytes

    def _read_operator_budget(self) -> int | None:
        """The operator's persisted budget; no file means none (the configured one is not a fallback here)."""
        try:
            text = self.budget_file.read_text().strip()
        except FileNotFoundError:
            return None
        if text.lower() in ("", "auto"):
            return None
        try:
            return parse_size(text)
        except ValueError as e:
            raise ConfigError(f"{self.budget_file}: {e}") from None

    def _warn_if_overridden(self) -> None:
        """An operator's budget persisted by an earlier set-budget outranks --budget: say so, naming both."""
        configured, operator = self.configured_budget, self.operator_budget
        if operator is not None and operator != configured:
            log.warning(
                "the operator's budget %s (set with flexnnctl set-budget, kept in %s) overrides the configured "
                "budget %s; `flexnnctl set-budget auto` hands control back to the configured one",
                format_size(operator),
                self.budget_file,
                "auto" if configured is None else format_size(configured),
            )

    def _write_operator_budget(self, budget: int | None) -> None:
        path = self.budget_file
        if budget is None:
            path.unlink(missing_ok=True)
            return
        write_atomically(path, f"{budget}\n", "state file")

    def set_operator_budget(self, text: str) -> Decision:
        """`flexnnctl set-budget`: a size, or "auto" to clear the operator's budget (then the configured
        one, if any, else the machine's constraints apply). Refused (not stored) below the smallest
        plans, or when a plan it needs cannot be read (PlanError naming the file; the old budget stays)."""
        text = text.strip()
        try:
            budget = None if text.lower() == "auto" else parse_size(text)
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        with self._budget_lock:
            if budget is not None and budget < self.models.minimum():
                names = ", ".join(m.name for m in self.models.all())
                raise BudgetTooSmall(budget, self.models.minimum(), names)
            previous = self.operator_budget
            self._write_operator_budget(budget)
            self.operator_budget = budget
            self.models.retry_failed_swaps()  # even at the same budget: the operator asked again
            try:
                decision = self.reevaluate([], force=True, strict=True)
            except PlanError:
                self.operator_budget = previous  # nothing swapped: the budget in force stays the old one
                self._write_operator_budget(previous)
                raise
            self.events.publish(
                Event(
                    "budget",
                    f"operator budget {'auto' if budget is None else format_size(budget)}",
                    source="operator",
                    to_bytes=budget or 0,
                )
            )
            return decision

    def reevaluate(self, pressure: list, force: bool = False, strict: bool = False) -> Decision:
        """Decide the effective budget from every source; rebalance the models when it moved.

        A plan that cannot be read leaves every model on its current plan: strict raises the
        PlanError, else it stands as an error event and the next tick tries again."""
        with self._budget_lock:
            reading = self.monitor.read() if self.monitor is not None else NO_READING
            decision = self.policy.decide(
                time.monotonic(),
                reading,
                self.operator_budget,
                self.runtime_overhead,
                self.models.total,
                pressure,
                model_bytes=self.models.committed,
                configured_budget=self.configured_budget,
            )
            previous = self.models.total
            if decision.budget != previous or force:
                reported, reported_source = self._reported, self._reported_source
                moves = self._rung_moves(decision.budget)
                change = (
                    f"effective budget {_fmt(reported)} → {_fmt(decision.budget)} ({decision.source}): "
                    f"{decision.reason}"
                )
                # A budget that moves no model to another rung is not news: MemAvailable wobbles every tick.
                if force or moves:
                    self.events.publish(
                        Event(
                            "budget",
                            change + (f"; {', '.join(moves)}" if moves else "; no model changes rung"),
                            source=decision.source,
                            from_bytes=reported or 0,
                            to_bytes=decision.budget or 0,
                        )
                    )
                    self._reported, self._reported_source = decision.budget, decision.source
                else:
                    log.debug("%s; no model changes rung", change)
                try:
                    self.models.rebalance(decision.budget, reason=f"{decision.source} budget")
                except PlanError:
                    self._reported, self._reported_source = reported, reported_source
                    if strict:
                        raise
                    return decision  # not in force: status keeps the decision the models run under
            self.decision = decision
            self._update_health()
            return decision

    def _rung_moves(self, budget: int | None) -> list[str]:
        """The models `budget` would move to another rung, each as "name old → new" arena bytes."""
        chosen, _ = self.models.plan_split(budget)
        moves = []
        for model in self.models.all():
            now = model.session.plan.arena_bytes if model.ready and model.session is not None else None
            rung = chosen.get(model.name)
            new = rung.entry.arena_bytes if rung is not None else None
            if new != now:
                moves.append(f"{model.name} {_fmt_arena(now)} → {_fmt_arena(new)}")
        return moves

    # ----- models -----------------------------------------------------------------------------

    def _resolve_model(self, spec: str) -> Path:
        """A model named in the configuration: a file or package inside the models directory, or a zoo name."""
        models_dir = self.dirs.models.resolve()
        candidate = (models_dir / spec).resolve()
        if not candidate.is_relative_to(models_dir):
            raise InvalidRequest(
                f"model {spec!r} resolves to {candidate}, outside the models directory {models_dir}"
            )
        if candidate.exists():
            return candidate
        named = candidate.with_name(candidate.name + ".onnx")  # `load sq` means sq.onnx as well as sq/
        if named.exists() and named.is_relative_to(models_dir):
            return named
        if spec in zoo.MODELS:
            path = zoo.cached_path(spec, self.dirs.cache / "zoo")
            return path if path.exists() else Path(in_child(prepare.zoo_model, spec, str(path.parent)))
        raise InvalidRequest(
            f"no model {spec!r} in {models_dir} (an .onnx file or a package folder), and it is not a built-in "
            f"model ({', '.join(zoo.MODELS)})"
        )

    def load_model(self, name: str, path: str) -> Model:
        """LoadModel: only files inside the models directory (or built-in zoo names); remembered across restarts."""
        if not name:
            raise InvalidRequest("a model name is required")
        model = self.models.load(name, self._resolve_model(path or name), required=True)
        self._remember(name, path or name)
        self._update_health()
        return model

    def unload_model(self, name: str) -> None:
        self.models.unload(name)
        self._remember(name, None)
        self._update_health()

    @property
    def loaded_file(self) -> Path:
        return self.dirs.state / LOADED_FILE

    def _remembered(self) -> dict[str, str]:
        try:
            loaded = json.loads(self.loaded_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            self.events.publish(Event("error", f"ignoring {self.loaded_file}: {e}"))
            return {}
        return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}

    def _remember(self, name: str, spec: str | None) -> None:
        """Models loaded over the API, kept in the state directory so a restart brings them back."""
        loaded = self._remembered()
        if spec is None:
            loaded.pop(name, None)
        else:
            loaded[name] = spec
        write_atomically(self.loaded_file, json.dumps(loaded, indent=1) + "\n", "state file")

    @property
    def ready(self) -> bool:
        models = self.models.all()
        return bool(models) and all(m.ready for m in models)

    def _update_health(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", "inference.GRPCInferenceService"):
            self.health.set(service, status)

    # ----- status -----------------------------------------------------------------------------

    def status_text(self) -> str:
        decision = self.decision
        budget = _fmt(decision.budget if decision else None)
        source = decision.source if decision else "none"
        plans = ", ".join(
            f"{m.name} {format_size(m.session.plan.arena_bytes)}" if m.ready else f"{m.name} {m.state}"
            for m in self.models.all()
        )
        return f"budget {budget} ({source}); plans: {plans or 'no models'}"

    def status_message(self) -> control_pb2.Status:
        decision = self.decision
        reading = self.monitor.read() if self.monitor is not None else NO_READING
        last = self.events.last.get("pressure")
        return control_pb2.Status(
            effective_budget_bytes=(decision.budget or 0) if decision else 0,
            budget_source=decision.source if decision else "none",
            operator_budget=_budget_text(self.operator_budget),
            configured_budget=_budget_text(self.configured_budget),
            budget_reason=decision.reason if decision else "",
            cgroup_limit_bytes=reading.limit or 0,
            runtime_overhead_bytes=self.runtime_overhead,
            rss_bytes=psutil.Process().memory_info().rss,
            swaps=self.models.swaps,
            last_pressure_event=services.event_message(last) if last is not None else None,
            uptime_s=time.time() - self.started,
            models=[services.model_status(m) for m in self.models.all()],
        )

    # ----- lifecycle --------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def on_stop(signum, frame):
            if self.should_exit.is_set() and signum == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting for in-flight requests
            self.should_exit.set()

        def on_hup(signum, frame):
            self.reload_requested = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def startup(self) -> None:
        dirs = self.dirs
        create_dirs(dirs)
        self.lock = InstanceLock(dirs.lock)
        self.operator_budget = self._read_operator_budget()
        self._warn_if_overridden()
        if self.config.watch_pressure:
            self.monitor = self._open_monitor()
        rss, anon = _own_memory()
        log.info("runtime before models: RSS %s, anonymous %s", format_size(rss), format_size(anon))
        specs = self.config.models or (zoo.DEFAULT_MODEL,)
        # The first decision has no runtime overhead measured yet; the real one follows warm-up.
        self.reevaluate([])
        # Imports, planning, calibration and kernel compilation say how far they are: log and STATUS=.
        progress.set_sinks([progress.LogSink(), progress.StatusSink(self.notifier, idle=self.status_text)])
        jit.skip_blas_probe()
        self.models.estimate = True  # READY first: a machine not calibrated yet is calibrated after it
        with jit.compiling():  # a cold numba cache compiles the kernels during each model's warm-up
            for spec in specs:
                self.notifier.status(f"loading {_name(spec)}")
                self.models.load(_name(spec), self._resolve_model(spec))
            for name, spec in self._remembered().items():
                if name not in self.models.names():
                    self.notifier.status(f"loading {name}")
                    try:
                        self.models.load(name, self._resolve_model(spec))
                    except FlexnnError as e:
                        self.events.publish(
                            Event("error", f"cannot load {name} again after the restart: {e}", model=name)
                        )
        self.servers = self._start_servers()
        if self.config.metrics_host_port is not None:
            self.metrics.start(*self.config.metrics_host_port)
        self.runtime_overhead = max(0, psutil.Process().memory_info().rss - self.models.committed)
        log.info("runtime overhead %s (RSS beside the models' arenas)", format_size(self.runtime_overhead))
        self.reevaluate([])
        self._watch_files()
        calibration = prepare.calibrate_later(self.models)  # ladders planned with estimated rates
        self.notifier.ready()
        self.notifier.status(self.status_text())
        log.info("serving on %s: %s", self.dirs.socket, self.status_text())
        if calibration is not None:
            calibration.start()

    def _open_monitor(self) -> Monitor | None:
        try:
            monitor = Monitor(
                MonitorConfig(
                    proc_root=self.config.proc_root,
                    fs_root=self.config.fs_root,
                    psi_trigger=self.config.pressure_trigger,
                    env=self.env,
                )
            )
            monitor.open()
            log.info(
                "memory signals: %s", ", ".join(monitor.sources) or "none (limits and MemAvailable polled)"
            )
            return monitor
        except (OSError, ValueError, FlexnnError) as e:
            # Not silent: logged and shown as an error event; the other budget sources still apply.
            self.events.publish(
                Event("error", f"memory monitor unavailable, budget from the operator only: {e}")
            )
            return None

    def _grpc_server(self, interceptors: list) -> grpc.Server:
        """A server with every service; its thread pool bounds the RPCs it runs at once."""
        max_bytes = self.config_max_bytes
        workers = 8 + self.max_watchers + 4 * (1 + self.config.queue_depth)
        server = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flexnnd-rpc"),
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.max_send_message_length", max_bytes),
            ],
            interceptors=interceptors,
            maximum_concurrent_rpcs=workers,
        )
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(services.InferenceService(self), server)
        control_pb2_grpc.add_ControlServicer_to_server(services.ControlService(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (
            inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
            control_pb2.DESCRIPTOR.services_by_name["Control"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        return server

    def _start_servers(self) -> list[grpc.Server]:
        """The Unix socket (guarded by its file mode) and, if configured, TCP (TLS and a bearer token)."""
        servers = []
        if self.config.tcp_address:
            token = _read_token(self.config.token_file)
            tcp = self._grpc_server([TokenInterceptor(token)] if token is not None else [])
            self._add_tcp_port(tcp, self.config.tcp_address, token)
            servers.append(tcp)
        local = self._grpc_server([])
        socket_path = self.dirs.socket
        if socket_path.exists() or socket_path.is_symlink():
            socket_path.unlink()  # ours: the instance lock is held, so no live daemon owns it
        if local.add_insecure_port(f"unix:{socket_path}") == 0:
            raise ConfigError(f"cannot bind the socket {socket_path}")
        servers.insert(0, local)
        for server in servers:
            server.start()
        os.chmod(socket_path, 0o660)
        return servers

    def _add_tcp_port(self, server: grpc.Server, address: str, token: str | None) -> None:
        config = self.config
        if config.tls_cert and config.tls_key:
            if token is None:
                raise ConfigError("TCP serving with TLS also needs token_file (a bearer token)")
            creds = grpc.ssl_server_credentials(
                [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())]
            )
            port = server.add_secure_port(address, creds)
        elif config.allow_insecure_loopback and _is_loopback(address):
            port = server.add_insecure_port(address)
        else:
            raise ConfigError(
                f"tcp_address {address!r} needs tls_cert, tls_key and token_file "
                "(or allow_insecure_loopback with a 127.0.0.1/[::1] address)"
            )
        if port == 0:
            raise ConfigError(f"cannot bind {address}")
        log.info("also serving on %s", address)

    def _watch_files(self) -> None:
        """The operator may edit the budget file or the config file by hand: watchdog tells us."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watched = {self.budget_file.resolve()}
        if self.config_path is not None:
            watched.add(Path(self.config_path).resolve())
        daemon = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if (
                    event.event_type not in CHANGES
                ):  # our own read opens the file: reacting to that loops forever
                    return
                for p in (event.src_path, getattr(event, "dest_path", "")):
                    if p and Path(p).resolve() in watched:
                        daemon._file_changed(Path(p).resolve())

        observer = Observer()
        for d in {p.parent for p in watched}:
            observer.schedule(Handler(), str(d), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def _file_changed(self, path: Path) -> None:
        if path == self.budget_file.resolve():
            # under the lock: a set-budget between our read and our write would be undone by a stale read
            with self._budget_lock:
                try:
                    budget = self._read_operator_budget()
                except ConfigError as e:
                    self.events.publish(Event("error", str(e)))
                    return
                if budget != self.operator_budget:
                    self.operator_budget = budget
                    self.events.publish(
                        Event("budget", f"budget file changed: {_fmt(budget)}", source="operator")
                    )
                    self._pending_reevaluate = True
        else:
            self.reload_requested = True

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
        needs_restart = [
            f.name
            for f in dataclasses.fields(Config)
            if f.name
            in (
                *("socket", "tcp_address", "runtime_dir", "state_dir", "cache_dir", "tls_cert", "tls_key"),
                *("metrics_address", "log_format"),  # the endpoint and the log handler are set up once
            )
            and getattr(fresh, f.name) != getattr(self.config, f.name)
        ]
        if needs_restart:
            log.warning("reload: %s change only on restart", ", ".join(needs_restart))
        self.config = fresh
        self.policy = BudgetPolicy(self._policy_config(fresh))
        logging.getLogger().setLevel(fresh.log_level.upper())
        wanted = {_name(s): s for s in fresh.models or (zoo.DEFAULT_MODEL,)}
        wanted.update({n: s for n, s in self._remembered().items() if n not in wanted})
        for name in set(self.models.names()) - set(wanted):
            self.models.unload(name)
        for name, spec in wanted.items():
            if name not in self.models.names() or self.models.get(name).state == "failed":
                try:
                    self.models.load(name, self._resolve_model(spec))
                except FlexnnError as e:
                    self.events.publish(Event("error", f"reload: cannot load {name}: {e}", model=name))
        self.events.publish(Event("model", "configuration reloaded"))
        self.reevaluate([], force=True)
        self.notifier.ready()

    def workers_alive(self, limit_s: float) -> bool:
        """No inference has been running for longer than `limit_s` (a stuck kernel or loader)."""
        return all(m.stuck_seconds < limit_s for m in self.models.all())

    def _trim_if_grown(self) -> None:
        """Trim the heap when RSS beside the plans exceeds the runtime measured at start by TRIM_SLACK."""
        rss, _ = _own_memory()
        if rss - self.models.committed - self.runtime_overhead > TRIM_SLACK:
            trim_malloc()

    def main_loop(self) -> None:
        interval = watchdog_interval(self.env)
        last_ping = 0.0
        self._pending_reevaluate = False
        while not self.should_exit.is_set():
            pressure = self.monitor.wait(TICK_S) if self.monitor is not None else []
            if self.monitor is None:
                self.should_exit.wait(TICK_S)
            if self.reload_requested:
                self.reload()
            if self.models.check_weights():
                self._update_health()
            for event in pressure:
                self.metrics.count_pressure(event.kind, event.count)
                self.events.publish(
                    Event("pressure", f"{event.kind} ×{event.count} from {event.source}", source="pressure")
                )
            self.reevaluate(pressure, force=self._pending_reevaluate)
            self._pending_reevaluate = False
            self._trim_if_grown()
            now = time.monotonic()
            if interval and now - last_ping >= interval:
                if self.workers_alive(limit_s=2 * interval):
                    self.notifier.watchdog()
                    last_ping = now
                else:
                    log.error(
                        "an inference has run for over %.0f s: withholding the watchdog ping", 2 * interval
                    )
            status = self.status_text()
            if status != self._status_sent:  # systemd needs changes, not a stream of repeats
                self.notifier.status(status)
                self._status_sent = status

    def in_flight(self) -> int:
        return sum(m.queue_depth for m in self.models.all())

    def shutdown(self) -> int:
        self.notifier.stopping()
        self.health.enter_graceful_shutdown()
        code = EXIT_OK
        if self.servers:
            pending = self.in_flight()
            grace = 0.0 if self.force_exit else self.config.grace_period_s
            log.info("stopping: %d requests in flight, grace period %.1f s", pending, grace)
            done = [server.stop(grace) for server in self.servers]
            deadline = time.monotonic() + grace + 1.0
            while not all(event.wait(0.1) for event in done):
                if self.force_exit:
                    for server in self.servers:
                        server.stop(0)
                if time.monotonic() > deadline:
                    break
            cancelled = self.in_flight()
            if cancelled:
                log.warning("cancelled %d requests still running after the grace period", cancelled)
            else:
                log.info("drained %d requests", pending)
            if self.force_exit:
                code = EXIT_FORCED
        self.events.close()
        self.metrics.stop()
        if self._observer is not None:
            self._observer.stop()
        self.models.close()
        if self.monitor is not None:
            self.monitor.close()
        if self.dirs.socket.exists():
            self.dirs.socket.unlink()
        if self.lock is not None:
            self.lock.close()
        return code

    def serve(self) -> int:
        if not tune_malloc():
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
        if self.monitor is not None:
            self.monitor.close()
        if self.lock is not None:
            self.lock.close()


class TokenInterceptor(grpc.ServerInterceptor):
    """Bearer token on every RPC but health checks and ServerLive; compared in constant time."""

    EXEMPT = ("/grpc.health.v1.Health/", "/inference.GRPCInferenceService/ServerLive")

    def __init__(self, token: str):
        self._token = token.encode()

        def deny(request, context):
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "a valid 'authorization: Bearer <token>' header is required"
            )

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def authorized(self, metadata) -> bool:
        given = dict(metadata or ()).get("authorization", "")
        scheme, _, value = given.partition(" ")
        # compare_digest takes as long for a near miss as for a wild guess
        return hmac.compare_digest(value.strip().encode(), self._token) and scheme.lower() == "bearer"

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(self.EXEMPT) or self.authorized(
            handler_call_details.invocation_metadata
        ):
            return continuation(handler_call_details)
        return self._deny


def _read_token(path) -> str | None:
    if not path:
        return None
    token = Path(path).read_text().strip()
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _name(spec: str) -> str:
    """The served name of a configured model: a file's stem, or the zoo name itself."""
    return Path(spec).stem if "/" in spec or spec.endswith(".onnx") else spec


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters from glibc's malloc.h
MMAP_THRESHOLD = 128 << 10


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold: request buffers (a camera frame is ~0.6 MB) are then mmapped and
    returned on free. Left dynamic, the threshold rises after the first free and every later buffer
    stays in the heap, RSS the budget cannot see."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, MMAP_THRESHOLD)
        )
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False


def trim_malloc() -> bool:
    """Give free heap pages back to the OS (glibc's malloc_trim): gRPC receives a big message as many
    small frames whose freed chunks stay in malloc's arenas, hundreds of MiB after a burst."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


def _own_memory() -> tuple[int, int]:
    """(RSS, anonymous RSS) of this process, from /proc/self/status."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0]) * 1024
    return fields.get("VmRSS", 0), fields.get("RssAnon", 0)


def _budget_text(budget: int | None) -> str:
    """A requested budget on the wire: bytes as text, or "auto" when none is set."""
    return "auto" if budget is None else str(budget)


def _fmt_arena(arena: int | None) -> str:
    return "no plan" if arena is None else f"arena {format_size(arena)}"


def _fmt(budget: int | None) -> str:
    return "unlimited" if budget is None else format_size(budget)
