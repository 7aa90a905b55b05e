"""InstanceLock: a second process gets AlreadyRunning naming the holder's pid; a dead holder frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flexnnd.daemon.lock import InstanceLock
from flexnnd.errors import AlreadyRunning, FlexnnError

REPO = Path(__file__).resolve().parents[2]

# Tries the lock and reports on stdout; with "hold", keeps it until stdin closes.
CHILD = """
import sys
from flexnnd.daemon.lock import InstanceLock
from flexnnd.errors import AlreadyRunning
try:
    lock = InstanceLock(sys.argv[1])
except AlreadyRunning as e:
    print("refused", e.pid, e, flush=True)
    sys.exit(3)
print("locked", flush=True)
if sys.argv[2] == "hold":
    sys.stdin.read()
lock.close()
"""


def child(path: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def test_second_process_is_refused_with_our_pid(tmp_path):
    path = tmp_path / "flexnnd.sock.lock"
    with InstanceLock(path) as lock:
        assert lock.held
        assert path.read_text() == f"{os.getpid()}\n"
        proc = child(path, "try")
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 3, out
        assert out.split()[:2] == ["refused", str(os.getpid())]
        assert str(path) in out
    assert not lock.held
    proc = child(path, "try")  # released on close
    out, _ = proc.communicate(timeout=60)
    assert (proc.returncode, out.strip()) == (0, "locked")


def test_we_are_refused_while_another_process_holds_it(tmp_path):
    path = tmp_path / "flexnnd.sock.lock"
    holder = child(path, "hold")
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(AlreadyRunning) as info:
            InstanceLock(path)
        assert info.value.pid == holder.pid
        assert isinstance(info.value, FlexnnError)
        assert f"pid {holder.pid}" in str(info.value)
    finally:
        holder.communicate(timeout=60)  # closes its stdin: it releases the lock and exits
    InstanceLock(path).close()


def test_a_killed_holder_leaves_a_file_but_no_lock(tmp_path):
    path = tmp_path / "flexnnd.sock.lock"
    holder = child(path, "hold")
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=60)
    assert path.read_text() == f"{holder.pid}\n"  # stale pid left behind
    with InstanceLock(path):
        assert path.read_text() == f"{os.getpid()}\n"


def test_the_same_process_cannot_take_it_twice(tmp_path):
    # flock belongs to the open file, so a second open in one process conflicts as well.
    path = tmp_path / "lock"
    with InstanceLock(path), pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
        InstanceLock(path)


def test_holder_without_pid_yet(tmp_path):
    import fcntl

    path = tmp_path / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(AlreadyRunning, match="pid is not yet written") as info:
            InstanceLock(path)
        assert info.value.pid is None
    finally:
        os.close(fd)


def test_unwritable_place_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        InstanceLock(tmp_path / "missing" / "lock")
