"""The budget file's watcher and `set-budget` share one lock: a stale read cannot undo a newer budget."""

from __future__ import annotations

import threading
import time

from flexnnd.daemon.config import Config, create_dirs
from flexnnd.daemon.server import Daemon


def daemon_in(tmp_path) -> Daemon:
    config = Config(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache", runtime_dir=tmp_path / "run")
    d = Daemon(config, env={})
    create_dirs(d.dirs)
    return d


def test_a_file_event_reads_the_budget_only_under_the_budget_lock(tmp_path):
    d = daemon_in(tmp_path)
    d.budget.budget_file.write_text("64M\n")
    reads = []
    original = d.budget.read_operator_budget

    def recording_read():
        reads.append(d.budget.budget_file.read_text())
        return original()

    d.budget.read_operator_budget = recording_read
    with d.budget.lock:  # what set_operator_budget holds while it writes the file and the budget
        watcher = threading.Thread(target=d.file_watch.changed, args=(d.budget.budget_file.resolve(),))
        watcher.start()
        watcher.join(0.5)
        assert reads == [], "the watcher read the budget file while a budget change held the lock"
        d.budget.budget_file.write_text("32M\n")
        d.budget.operator_budget = 32 << 20
    watcher.join(10)
    assert not watcher.is_alive()
    assert reads == ["32M\n"] and d.budget.operator_budget == 32 << 20


def test_a_hand_edited_budget_file_is_taken_and_a_bad_one_is_an_error_event(tmp_path):
    d = daemon_in(tmp_path)
    d.budget.budget_file.write_text("48M\n")
    d.file_watch.changed(d.budget.budget_file.resolve())
    assert d.budget.operator_budget == 48 << 20
    d.budget.budget_file.write_text("lots\n")
    d.file_watch.changed(d.budget.budget_file.resolve())
    assert d.budget.operator_budget == 48 << 20  # kept: a typo in the file does not drop the budget
    assert d.events.last["error"].message.startswith(str(d.budget.budget_file))


def test_reading_the_budget_file_does_not_trigger_the_watcher_again(tmp_path):
    d = daemon_in(tmp_path)
    d.budget.write_operator_budget(48 << 20)
    calls = []
    original = d.file_watch.changed

    def counting(path):
        calls.append(path)
        original(path)

    d.file_watch.changed = counting
    d.file_watch.start()
    try:
        d.budget.budget_file.write_text("40M\n")  # a hand edit: seen, read once or twice
        deadline = time.monotonic() + 30
        while d.budget.operator_budget != 40 << 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.budget.operator_budget == 40 << 20
        time.sleep(1.0)
        settled = len(calls)
        time.sleep(1.0)  # reads opened the file: those open/close events must not call back
        assert len(calls) == settled, f"{len(calls) - settled} more callbacks with nothing written"
        assert d.file_watch.observer.event_queue.qsize() == 0
    finally:
        d.file_watch.observer.stop()
        d.file_watch.observer.join(10)
