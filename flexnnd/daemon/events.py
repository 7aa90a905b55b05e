"""Events the daemon reports (budget changes, swaps, pressure, model state, errors) and their bus.

Every event is logged once and fanned out to watchers (`flexnnctl watch`). A watcher that does not
keep up loses its oldest events, never blocks the daemon; it is told how many it lost.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("flexnnd.events")

KINDS = ("budget", "swap", "pressure", "model", "error")


@dataclass(frozen=True)
class Event:
    kind: str  # one of KINDS
    message: str
    model: str = ""
    source: str = ""  # what moved the budget: operator, configured, cgroup, pressure, system
    from_bytes: int = 0
    to_bytes: int = 0
    duration_s: float = 0.0
    time: float = dataclasses.field(default_factory=time.time)


class Subscription:
    """One watcher's queue of events, bounded; `get` waits up to a timeout."""

    def __init__(self, bus: EventBus, capacity: int):
        self._bus = bus
        self._items: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._cond = threading.Condition()
        self.dropped = 0
        self._reported = 0  # drops already told to the watcher
        self.closed = False

    def _put(self, event: Event) -> None:
        with self._cond:
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(event)
            self._cond.notify()

    def get(self, timeout: float) -> Event | None:
        """The next event; after an overflow, first an error event saying how many were lost."""
        with self._cond:
            if self.dropped > self._reported:
                lost, self._reported = self.dropped - self._reported, self.dropped
                return Event(
                    "error",
                    f"{lost} events dropped: this watcher reads slower than they arrive "
                    f"(it may fall {self._items.maxlen} behind)",
                )
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._bus._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self, history: int = 64, capacity: int = 256):
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._capacity = capacity
        self.history: collections.deque[Event] = collections.deque(maxlen=history)
        self.last: dict[str, Event] = {}

    def publish(self, event: Event) -> Event:
        level = logging.WARNING if event.kind == "error" else logging.INFO
        fields = {"event": event.kind, "model": event.model, "source": event.source}  # for --log-format json
        extra = {k: v for k, v in fields.items() if v}
        model = f" [{event.model}]" if event.model else ""
        log.log(level, "%s%s: %s", event.kind, model, event.message, extra=extra)
        with self._lock:
            self.history.append(event)
            self.last[event.kind] = event
            subs = list(self._subs)
        for sub in subs:
            sub._put(event)
        return event

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self._capacity)
        with self._lock:
            self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def close(self) -> None:
        """Ends every watch (at shutdown)."""
        with self._lock:
            subs, self._subs = self._subs, []
        for sub in subs:
            with sub._cond:
                sub.closed = True
                sub._cond.notify_all()

    @property
    def watchers(self) -> int:
        with self._lock:
            return len(self._subs)
