"""Progress of long operations (import, planning, kernel compilation, calibration).

The engine says what it does through one interface and never how it is shown:

    with progress.task("planning mobilenet_v2", total=26) as t:
        for ...:
            t.advance()

Sinks show it: a bar on a terminal (the default when stderr is a TTY and nobody installed sinks),
INFO log lines at most once a second, systemd STATUS= lines, or a queue that carries a child
process's progress back to its parent (see flexnnd.daemon.prepare).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TextIO

log = logging.getLogger("flexnnd.progress")

LOG_INTERVAL_S = 1.0  # a log line at most this often per task, the first a second in, and its end
STATUS_INTERVAL_S = 0.25  # STATUS= at most this often: systemd keeps only the latest anyway
STATUS_PAUSE_S = 5.0  # no STATUS= lines for this long after one could not be sent
BAR_INTERVAL_S = 0.1
QUEUE_INTERVAL_S = 0.1  # a child's updates to its parent


@dataclass
class Task:
    """One long operation: `done` of `total` steps (total None: not known ahead)."""

    name: str
    total: int | None
    done: int = 0
    detail: str = ""  # what the last step was, e.g. the kernel being compiled
    started: float = field(default_factory=time.monotonic)
    finished: bool = False
    failed: bool = False  # it ended with an exception
    key: int = 0  # tells apart tasks of the same name, also when replayed from a child

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def text(self) -> str:
        """'compiling kernels 37/112 (conv.depthwise)', as the STATUS= and log lines say it."""
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        return f"{self.name} {count}" + (f" ({self.detail})" if self.detail else "")

    def advance(self, steps: int = 1, detail: str = "") -> None:
        self.done += steps
        self.detail = detail
        _emit("update", self)


class Sink(Protocol):
    def update(self, kind: str, task: Task) -> None:
        """kind: 'start', 'update' or 'finish'."""


class _Throttled:
    """Passes a task's start and finish, and its updates at most once per `interval` seconds."""

    interval = 1.0

    def __init__(self) -> None:
        self._last: dict[int, float] = {}

    def due(self, kind: str, task: Task) -> bool:
        now = time.monotonic()
        if kind == "update" and now - self._last.get(task.key, 0.0) < self.interval:
            return False
        self._last[task.key] = now
        if kind == "finish":
            self._last.pop(task.key, None)
        return True


class LogSink(_Throttled):
    """INFO lines: 'compiling kernels 37/112 (conv.depthwise)' at most once a second per task, the
    first a second after it started, and one when it is done: a short task says only that."""

    interval = LOG_INTERVAL_S

    def __init__(self, logger: logging.Logger = log) -> None:
        super().__init__()
        self.logger = logger

    def update(self, kind: str, task: Task) -> None:
        if kind == "start":
            self._last[task.key] = time.monotonic()
            return
        if not self.due(kind, task):
            return
        if kind == "finish":
            count = f"{task.done} steps" if task.total is None else f"{task.done}/{task.total}"
            outcome = "stopped by an error after" if task.failed else "done,"
            self.logger.info("%s: %s %s in %.1f s", task.name, outcome, count, task.elapsed)
        else:
            self.logger.info("%s", task.text())


class StatusSink(_Throttled):
    """systemd STATUS= lines through a Notifier (anything with a status(text) method). When the last
    task running ends, `idle()` (if given) is sent: a finished or failed task's line does not stay.
    A send that fails (a receiver not reading: each send waits for its timeout) pauses the lines for
    STATUS_PAUSE_S, so that progress never stalls the work it reports."""

    interval = STATUS_INTERVAL_S

    def __init__(self, notifier, idle: Callable[[], str] | None = None) -> None:
        super().__init__()
        self.notifier, self.idle = notifier, idle
        self._running: set[int] = set()
        self._paused_until = 0.0

    def _send(self, text: str) -> None:
        if time.monotonic() < self._paused_until:
            return
        if self.notifier.status(text) is False and getattr(self.notifier, "enabled", False):
            self._paused_until = time.monotonic() + STATUS_PAUSE_S

    def update(self, kind: str, task: Task) -> None:
        if kind == "finish":
            self._running.discard(task.key)
            if not self._running and self.idle is not None:
                self._send(self.idle())
            return
        self._running.add(task.key)
        if self.due(kind, task):
            self._send(task.text())


class BarSink(_Throttled):
    """A one-line bar redrawn in place on a terminal; the finished task's line is kept."""

    interval = BAR_INTERVAL_S
    WIDTH = 30

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr

    def update(self, kind: str, task: Task) -> None:
        if not self.due(kind, task):
            return
        if task.total:
            filled = min(self.WIDTH, self.WIDTH * task.done // task.total)
            bar = "[" + "#" * filled + "." * (self.WIDTH - filled) + "] "
        else:
            bar = ""
        end = f" {'failed after ' if task.failed else ''}{task.elapsed:.1f} s\n" if kind == "finish" else ""
        self.stream.write(f"\r\x1b[K{bar}{task.text()}{end}")
        self.stream.flush()


class QueueSink(_Throttled):
    """Puts a task's fields on a multiprocessing queue for `replay` in the parent (time.monotonic is
    the machine's, so its start time means the same there)."""

    interval = QUEUE_INTERVAL_S

    def __init__(self, queue) -> None:
        super().__init__()
        self.queue = queue

    def update(self, kind: str, task: Task) -> None:
        if self.due(kind, task):
            self.queue.put(
                (kind, task.name, task.total, task.done, task.detail, task.key, task.failed, task.started)
            )


_sinks: list[Sink] | None = None  # None: nobody chose; a terminal then gets a bar
_lock = threading.Lock()
_keys = itertools.count(1)
_replayed: dict[tuple[int, int], Task] = {}


def set_sinks(sinks: list[Sink] | None) -> list[Sink] | None:
    """Install the sinks every task reports to (None: the default); returns those installed before."""
    global _sinks
    with _lock:
        old, _sinks = _sinks, (list(sinks) if sinks is not None else None)
    return old


@contextlib.contextmanager
def sinks(*installed: Sink) -> Iterator[None]:
    """The tasks inside report to `installed` only."""
    old = set_sinks(list(installed))
    try:
        yield
    finally:
        set_sinks(old)


def _current() -> list[Sink]:
    if _sinks is not None:
        return _sinks
    return [BarSink()] if sys.stderr is not None and sys.stderr.isatty() else []


def _emit(kind: str, task: Task) -> None:
    with _lock:
        for sink in _current():
            sink.update(kind, task)


@contextlib.contextmanager
def task(name: str, total: int | None = None, detail: str = "") -> Iterator[Task]:
    """A long operation of `total` steps; call advance() after each. `detail`: what it does first."""
    t = Task(name, total, detail=detail, key=next(_keys))
    _emit("start", t)
    try:
        yield t
    except BaseException:
        t.failed = True
        raise
    finally:
        t.finished = True
        _emit("finish", t)


def replay(message: tuple, source: int = 0) -> None:
    """Report a QueueSink's message (from the process `source`) to this process's sinks."""
    kind, name, total, done, detail, key, failed, started = message
    t = _replayed.get((source, key))
    if t is None:
        t = _replayed[source, key] = Task(name, total, started=started, key=next(_keys))
    t.done, t.detail, t.total, t.failed = done, detail, total, failed
    if kind == "finish":
        t.finished = True
        del _replayed[source, key]
    _emit(kind, t)


def end_replay(source: int = 0) -> None:
    """The process `source` is gone: its tasks still open ended with it (a crash), as failed."""
    for key in [k for k in _replayed if k[0] == source]:
        t = _replayed.pop(key)
        t.finished = t.failed = True
        _emit("finish", t)
