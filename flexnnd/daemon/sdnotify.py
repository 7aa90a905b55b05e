"""A small stdlib sd_notify(3): datagrams to $NOTIFY_SOCKET telling systemd how the daemon is doing.

Without $NOTIFY_SOCKET (not started by systemd as Type=notify) nothing is sent, but every message is
still recorded in `last`, so status and tests can see what would have been said.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

SEND_TIMEOUT_S = 1.0
log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to one address: a path, or "@name" for an abstract socket."""

    def __init__(self, address: str | None):
        self.address = address
        self.last: dict[str, str] = {}  # the latest value sent (or due) for each field
        self._target: str | bytes | None = None
        self._failing = False
        if address and address[0] in "/@":
            # An abstract address starts with a NUL byte, which systemd writes as "@".
            self._target = "\0" + address[1:] if address[0] == "@" else address
        elif address:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract; not notifying systemd", address)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._target is not None

    def notify(self, **fields: str | int) -> bool:
        """Send FIELD=value lines in one datagram; True when it was delivered (False when disabled)."""
        text = {key: str(value) for key, value in fields.items()}
        for key, value in text.items():
            if "\n" in value:
                raise ValueError(f"sd_notify field {key} contains a newline: {value!r}")
        self.last.update(text)
        if self._target is None:
            return False
        payload = "\n".join(f"{key}={value}" for key, value in text.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(
                    SEND_TIMEOUT_S
                )  # a receiver that stopped reading must not stall the main loop
                sock.sendto(payload, self._target)
        except OSError as e:
            # systemd may be re-executing; warn when messages start failing, not on every ping.
            if not self._failing:
                log.warning("sd_notify to %s failed: %s", self.address, e)
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: startup finished (model warm, socket bound)."""
        return self.notify(READY=1, **({"STATUS": status} if status is not None else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING=1, **({"STATUS": status} if status is not None else {}))

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC, which Type=notify-reload (systemd 253+) requires; send
        ready() when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        extra = {"STATUS": status} if status is not None else {}
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec, **extra)

    def extend_timeout(self, usec: int) -> bool:
        """Ask for `usec` more microseconds in the current start/stop/reload before systemd gives up."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(usec))


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when no watchdog is asked for."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None  # the watchdog is meant for another process (we were forked or exec'd by it)
    return int(usec) / 2 / 1e6
