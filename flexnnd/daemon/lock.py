"""One flexnnd per socket: an flock on a lock file beside the socket, taken before binding.

gRPC unlinks and rebinds a Unix socket path even while another server listens on it, so without
this lock a second daemon would silently steal the socket. The kernel drops an flock when its
holder dies, so a lock file left behind by a crash never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from flexnnd.errors import AlreadyRunning


class InstanceLock:
    """Holds an exclusive flock on `path` (holding our pid) from construction until close()."""

    def __init__(self, path: Path):
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise AlreadyRunning(self.path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        # The file is not unlinked on close: a second instance may already have it open, and an
        # unlinked inode would let a third one lock a new file beside a live holder.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_pid(fd: int) -> int | None:
    """The holder's pid, or None while it has locked the file but not yet written its pid."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None
