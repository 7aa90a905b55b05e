"""Runs the real flexnnd in a subprocess with temporary directories and a fake NOTIFY_SOCKET."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 600  # a cold numba cache compiles every kernel on first start


class DaemonProcess:
    def __init__(self, tmp: Path, args=(), env=None, cache: Path | None = None, prefix=(), python=None):
        self.prefix = list(prefix)  # e.g. a shell that joins a cgroup, then execs the daemon
        self.python = str(python or sys.executable)  # e.g. a venv with only flexnn's dependencies
        self.tmp = Path(tmp)
        self.args = list(args)
        self.runtime = self.tmp / "run"
        self.state = self.tmp / "state"
        self.cache = cache or self.tmp / "cache"
        self.socket = self.runtime / "flexnnd.sock"
        self.log_path = self.tmp / "flexnnd.log"
        self.notify_path = self.tmp / "notify.sock"
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.notifications: list[str] = []
        self._notify: socket.socket | None = None

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("FLEXNN_ADDRESS", None)
        env.update(
            RUNTIME_DIRECTORY=str(self.runtime),
            STATE_DIRECTORY=str(self.state),
            CACHE_DIRECTORY=str(self.cache),
            NOTIFY_SOCKET=str(self.notify_path),
            PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "clients"), env.get("PYTHONPATH", "")]),
        )
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = True, settle: bool = True) -> DaemonProcess:
        """Start flexnnd; with `wait`, return at READY=1, and with `settle` too once a first start's
        calibration after READY is over (its ladders planned again), so tests see fixed plans."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        if self._notify is None:
            self.notify_path.unlink(missing_ok=True)
            self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._notify.bind(str(self.notify_path))
            self._notify.settimeout(0.2)
            # read all along, as systemd does: a full socket queue would make each sd_notify wait
            threading.Thread(target=self._read_notifications, args=(self._notify,), daemon=True).start()
        self.notifications = []
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes it for its whole life
        self.proc = subprocess.Popen(
            [*self.prefix, self.python, "-m", "flexnnd.main", *self.args],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait:
            self.wait_for("READY=1", START_TIMEOUT_S)
            if settle:
                self.wait_for_calibration(START_TIMEOUT_S)
        return self

    def wait_for_calibration(self, timeout: float) -> None:
        """Until every "calibrating ... after READY" in the log has its "calibration after READY ended"."""
        from flexnnd.daemon.prepare import CALIBRATED, CALIBRATING

        deadline = time.monotonic() + timeout
        while (log := self.log()).count(CALIBRATING) > log.count(CALIBRATED):
            if self.proc.poll() is not None:
                raise AssertionError(f"flexnnd exited with {self.proc.returncode} while calibrating:\n{log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"calibration after READY not over within {timeout} s:\n{log}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _read_notifications(self, sock: socket.socket) -> None:
        while sock.fileno() != -1:
            try:
                self.notifications.append(sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return

    def _drain(self, timeout: float) -> None:
        """Give the reader thread `timeout` seconds to collect what arrives."""
        time.sleep(timeout)

    def wait_for(self, message: str, timeout: float) -> str:
        """The first notification containing `message`; fails with the log if the daemon exits first."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc.poll() is not None
            self._drain(0.0 if exited else 0.2)
            for note in self.notifications:
                if message in note:
                    return note
            if exited:
                raise AssertionError(
                    f"flexnnd exited with {self.proc.returncode} before {message!r}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {message!r} from flexnnd within {timeout} s:\n{self.log()}")

    def client(self, **kw):
        from flexnn_client.client import Client

        return Client(str(self.socket), **kw)

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(self.env, FLEXNN_ADDRESS=str(self.socket))
        return subprocess.run(
            [sys.executable, "-m", "flexnn_client.ctl", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"flexnnd did not stop within {timeout} s:\n{self.log()}") from None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._notify is not None:
            self._notify.close()
            self._notify = None
