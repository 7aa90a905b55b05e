"""A rate limit for log lines that a peer can trigger at will.

gRPC logs an ERROR with a traceback (logger `grpc._common`) for every request it cannot
deserialize; a fuzzer or a broken client then fills the journal. The filter lets a few lines of
each kind through per interval and reports how many it dropped on the next line it lets through.
Install it once at logging setup with `install_grpc_log_limit()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

GRPC_NOISY_LOGGERS = ("grpc._common", "grpc._server")


class RateLimitFilter(logging.Filter):
    """At most `burst` records per (logger, message template) every `interval_s`; counts the rest."""

    def __init__(self, burst: int = 5, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.burst, self.interval_s, self.clock = burst, interval_s, clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], list] = {}  # key -> [window start, passed, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.interval_s:
                suppressed = window[2] if window is not None else 0
                window = self._windows[key] = [now, 0, 0]
                if suppressed:
                    # The summary rides on the first line let through, so nothing is dropped silently.
                    record.msg = f"{record.msg} [{suppressed} similar line(s) suppressed in the last {self.interval_s:g} s]"
            if window[1] >= self.burst:
                window[2] += 1
                return False
            window[1] += 1
            if len(self._windows) > 1024:  # message templates are few; bound the table anyway
                self._windows = {k: w for k, w in self._windows.items() if now - w[0] < self.interval_s}
            return True


def install_grpc_log_limit(burst: int = 5, interval_s: float = 60.0) -> RateLimitFilter:
    """Attach one shared filter to gRPC's loggers that log per bad request; returns it."""
    limit = RateLimitFilter(burst, interval_s)
    for name in GRPC_NOISY_LOGGERS:
        logging.getLogger(name).addFilter(limit)
    return limit
