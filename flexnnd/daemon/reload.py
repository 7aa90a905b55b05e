"""Reload: what a running daemon takes from files the operator edits.

SIGHUP or an edit of the config file reloads the configuration (Daemon.reload, then
`apply_config`): the budget policy, the log level and the models apply at once; the settings in
RESTART_ONLY are set up once at start, so a change to them is logged and waits for a restart. A
hand edit of the operator's budget file applies at once, under the budget lock
(BudgetControl.file_changed).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from flexnnd import zoo
from flexnnd.daemon.budget import BudgetControl
from flexnnd.daemon.catalog import Catalog
from flexnnd.daemon.config import Config
from flexnnd.daemon.events import Event, EventBus
from flexnnd.daemon.models import Models
from flexnnd.daemon.watch import watch_files

log = logging.getLogger("flexnnd")

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


def apply_config(
    old: Config, fresh: Config, budget: BudgetControl, catalog: Catalog, models: Models, events: EventBus
) -> None:
    """A reloaded configuration in place of `old`: a new policy and log level, models added, removed
    or loaded again, and a forced re-decision of the budget."""
    if needs_restart := restart_only_changes(old, fresh):
        log.warning("reload: %s change only on restart", ", ".join(needs_restart))
    budget.configure(fresh)
    logging.getLogger().setLevel(fresh.log_level.upper())
    catalog.load_wanted(models, fresh.models or (zoo.DEFAULT_MODEL,))
    events.publish(Event("model", "configuration reloaded"))
    budget.reevaluate([], force=True)


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
