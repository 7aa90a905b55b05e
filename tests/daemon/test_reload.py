"""What a reload may change, and the config file's watcher asking for one."""

from __future__ import annotations

import dataclasses
import threading

from flexnnd.daemon.budget import BudgetControl
from flexnnd.daemon.config import Config
from flexnnd.daemon.events import EventBus
from flexnnd.daemon.models import Models
from flexnnd.daemon.reload import RESTART_ONLY, FileWatch, restart_only_changes


def test_restart_only_names_only_config_fields():
    # a misspelt name would never be compared, and its change never reported
    assert set(RESTART_ONLY) <= {f.name for f in dataclasses.fields(Config)}


def test_restart_only_changes_name_the_endpoints_not_the_policy():
    old = Config()
    new = Config(metrics_address="127.0.0.1:0", log_format="json", threads=2, budget="64M")
    assert restart_only_changes(old, new) == ["metrics_address", "log_format"]
    assert restart_only_changes(old, Config(threads=2)) == []


def test_an_edit_of_the_config_file_asks_for_a_reload_and_leaves_the_budget(tmp_path):
    events = EventBus()
    (tmp_path / "state").mkdir()
    budget = BudgetControl(Config(), tmp_path / "state", Models(tmp_path / "cache", events), events)
    config_file = tmp_path / "flexnnd.toml"
    config_file.write_text("threads = 1\n")
    asked = threading.Event()
    watch = FileWatch(budget, config_file, asked.set)
    watch.start()
    try:
        config_file.write_text("threads = 2\n")
        assert asked.wait(30), "no reload asked for after the config file changed"
        assert budget.operator_budget is None and "budget" not in events.last
    finally:
        watch.stop()
        watch.observer.join(10)
