"""Progress of long operations: what import and planning report, how each sink shows it, and a
spawned child's progress reaching its parent."""

from __future__ import annotations

import io
import logging

import pytest

from flexnnd import progress
from flexnnd.daemon.prepare import in_child
from tests.daemon.test_models import fc_model


class Recorder:
    """A sink that keeps every (kind, name, done, total) it is given."""

    def __init__(self):
        self.seen: list[tuple[str, str, int, int | None]] = []

    def update(self, kind, task):
        self.seen.append((kind, task.name, task.done, task.total))

    def finished(self) -> dict[str, tuple[int, int | None]]:
        return {name: (done, total) for kind, name, done, total in self.seen if kind == "finish"}


class Notifier:
    """systemd's side of STATUS=: records what it is sent."""

    def __init__(self):
        self.sent = []

    def status(self, text):
        self.sent.append(text)


def test_import_reports_each_stage_and_each_rung(tmp_path):
    from flexnnd.runtime.ladders import import_model

    source = fc_model(tmp_path / "fc.onnx")
    recorder = Recorder()
    with progress.sinks(recorder):
        import_model(source, tmp_path / "pkg", calibration_dir=tmp_path / "cal")
    finished = recorder.finished()
    assert finished["importing fc.onnx"] == (3, 3)
    done, total = finished["planning fc"]
    assert done == total and total > 2  # the smallest plan, the rungs between, the top
    assert finished["calibrating this machine"] == (4, 4)  # a fresh calibration dir measures again
    updates = [d for kind, name, d, _ in recorder.seen if name == "planning fc" and kind == "update"]
    assert updates == sorted(updates) and len(updates) >= 3


def test_a_failed_task_says_so_in_the_log(caplog):
    caplog.set_level(logging.INFO, logger="flexnnd.progress")
    with (
        progress.sinks(progress.LogSink()),
        pytest.raises(ValueError),
        progress.task("reading", total=4) as t,
    ):
        t.advance()
        raise ValueError("broken file")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("reading: stopped by an error after 1/4 in ")


def test_log_lines_are_throttled_to_one_a_second(caplog):
    caplog.set_level(logging.INFO, logger="flexnnd.progress")
    with progress.sinks(progress.LogSink()), progress.task("compiling kernels", total=1000) as t:
        for _ in range(1000):
            t.advance()
    # A task of 1000 steps in well under a second: only its end is logged.
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("compiling kernels: done, 1000/1000 in ")


def test_status_sink_sends_status_lines_to_the_notifier():
    notifier = Notifier()
    with progress.sinks(progress.StatusSink(notifier)), progress.task("planning resnet50", total=26) as t:
        t.advance()
    assert notifier.sent[0] == "planning resnet50 0/26"  # at once, not after a second


def test_bar_redraws_one_line_and_keeps_the_finished_one():
    stream = io.StringIO()
    with progress.sinks(progress.BarSink(stream)), progress.task("importing vgg16.onnx", total=3) as t:
        for _ in range(3):
            t.advance()
    out = stream.getvalue()
    assert out.startswith("\r\x1b[K[") and out.endswith("\n") and out.count("\n") == 1
    assert "importing vgg16.onnx 3/3" in out.splitlines()[-1].split("\r")[-1]


def test_default_sink_draws_a_bar_only_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, expect_bar in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr("sys.stderr", stream)
        old = progress.set_sinks(None)
        try:
            with progress.task("importing x.onnx", total=1) as t:
                t.advance()
        finally:
            progress.set_sinks(old)
        assert ("importing x.onnx 1/1" in stream.getvalue()) == expect_bar


def _counting_child(steps: int) -> int:
    with progress.task("child work", total=steps) as t:
        for _ in range(steps):
            t.advance()
    return steps


def test_a_spawned_childs_progress_reaches_the_parents_sinks():
    recorder = Recorder()
    with progress.sinks(recorder):
        assert in_child(_counting_child, 5) == 5
    kinds = [(kind, done) for kind, name, done, _ in recorder.seen if name == "child work"]
    assert kinds[0] == ("start", 0) and kinds[-1] == ("finish", 5)


def _dying_child() -> None:
    import os

    with progress.task("child work", total=3) as t:
        t.advance()
        os._exit(9)  # a crash: no finish is ever sent


def test_a_crashed_childs_open_task_ends_as_failed_and_status_goes_back_to_idle():
    from concurrent.futures.process import BrokenProcessPool

    notifier = Notifier()
    sinks = progress.sinks(progress.StatusSink(notifier, idle=lambda: "serving"), progress.LogSink())
    with sinks, pytest.raises(BrokenProcessPool):
        in_child(_dying_child)
    assert notifier.sent[0].startswith("child work 0/3") and notifier.sent[-1] == "serving"


def test_status_lines_pause_after_a_send_fails_so_progress_does_not_stall_the_work(tmp_path):
    import socket

    from flexnnd.daemon.sdnotify import Notifier

    class CountingNotifier(Notifier):  # the real sd_notify sends, counted
        def __init__(self, address):
            super().__init__(address)
            self.results = []

        def status(self, text):
            self.results.append(super().status(text))
            return self.results[-1]

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unread:  # bound, never read: it fills up
        unread.bind(str(path))
        notifier = CountingNotifier(str(path))
        sink = progress.StatusSink(notifier)
        sink.interval = 0.0  # every update is due: the queue fills within the task
        with progress.sinks(sink), progress.task("planning resnet50", total=200) as t:
            for _ in range(200):
                t.advance()
    assert False in notifier.results  # the queue did fill
    assert notifier.results[-1] is False and notifier.results.count(False) == 1  # then no more sends
