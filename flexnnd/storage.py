"""Atomic file writes (temporary file, fsync, rename) whose failures name the file and the numbers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from flexnnd.errors import StorageError


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path` (-1 if unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def storage_error(what: str, path: str | os.PathLike, error: OSError, needed: int) -> StorageError:
    free = free_bytes(Path(path).parent)
    room = f"{free:,} bytes free there" if free >= 0 else "free space unknown"
    return StorageError(
        f"cannot write {what} {path}: {error.strerror or error} ({needed:,} bytes to write, {room}); "
        "the previous file, if any, is unchanged"
    )


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike, data: str | bytes, what: str = "file") -> None:
    """Write-temp, fsync, rename: a crash or a full disk leaves the old file whole (StorageError)."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        raise storage_error(what, path, e, len(raw)) from None
    finally:
        with contextlib.suppress(OSError):  # a read-only filesystem refuses even a missing file's unlink
            tmp.unlink(missing_ok=True)
