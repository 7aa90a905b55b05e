"""Where flexnnd's socket is when nothing says otherwise: one rule, read by the daemon's resolve_dirs
and by its clients, so that `flexnnctl` finds a daemon started with the same environment."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

SOCKET_NAME = "flexnnd.sock"
SYSTEM_RUNTIME_DIR = Path("/run/flexnn")  # the systemd unit's RuntimeDirectory=flexnn


def first_absolute(value: str | None) -> Path | None:
    """The first absolute path of a colon-separated list (systemd sets several for several dirs)."""
    for part in (value or "").split(":"):
        if part and os.path.isabs(part):
            return Path(part)
    return None


def runtime_dir(env: Mapping[str, str], uid: int | None = None) -> Path:
    """$RUNTIME_DIRECTORY (systemd), else $XDG_RUNTIME_DIR/flexnn, else /run/flexnn for root, else
    a private folder in the temp dir (no login session: ssh without logind, containers)."""
    uid = os.getuid() if uid is None else uid
    runtime = first_absolute(env.get("RUNTIME_DIRECTORY"))
    if runtime is not None:
        return runtime
    xdg_runtime = first_absolute(env.get("XDG_RUNTIME_DIR"))
    if xdg_runtime is not None:
        return xdg_runtime / "flexnn"
    if uid == 0:
        return SYSTEM_RUNTIME_DIR
    return Path(env.get("TMPDIR") or tempfile.gettempdir()) / f"flexnn-{uid}"


def default_address(env: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """$FLEXNN_ADDRESS, else the socket a daemon started with the same environment binds; when that
    does not exist but the system daemon's does, the system daemon's (a user talking to the service)."""
    env = os.environ if env is None else env
    if env.get("FLEXNN_ADDRESS"):
        return env["FLEXNN_ADDRESS"]
    own = (runtime_dir(env, uid) / SOCKET_NAME).absolute()
    system = SYSTEM_RUNTIME_DIR / SOCKET_NAME
    return str(system if not own.exists() and system.exists() else own)
