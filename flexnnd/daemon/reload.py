"""Reload: what a running daemon takes from files the operator edits.

SIGHUP or an edit of the config file reloads the configuration (Daemon.reload); the settings in
RESTART_ONLY are set up once at start, so a change to them is logged and waits for a restart. A
hand edit of the operator's budget file applies at once, under the budget lock
(BudgetControl.file_changed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from flexnnd.daemon.budget import BudgetControl
from flexnnd.daemon.config import Config
from flexnnd.daemon.watch import watch_files

# Settings a reload cannot change: the endpoints and the log handler are set up once.
RESTART_ONLY = (
    *("socket", "tcp_address", "runtime_dir", "state_dir", "cache_dir", "tls_cert", "tls_key"),
    *("metrics_address", "log_format"),
)


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The RESTART_ONLY settings that differ between `old` and `new`, in Config's order."""
    return [
        f.name
        for f in dataclasses.fields(Config)
        if f.name in RESTART_ONLY and getattr(new, f.name) != getattr(old, f.name)
    ]


class FileWatch:
    """The budget file and, if there is one, the config file, watched for hand edits."""

    def __init__(self, budget: BudgetControl, config_path: Path | None, request_reload: Callable[[], None]):
        self.budget, self.config_path, self.request_reload = budget, config_path, request_reload
        self.observer = None

    def start(self) -> None:
        watched = [self.budget.budget_file] + (
            [Path(self.config_path)] if self.config_path is not None else []
        )
        self.observer = watch_files(watched, self.changed)

    def changed(self, path: Path) -> None:
        if path == self.budget.budget_file.resolve():
            self.budget.file_changed()
        else:
            self.request_reload()

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
