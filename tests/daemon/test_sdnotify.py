"""sd_notify against a real datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time

import pytest

from flexnnd.daemon.sdnotify import Notifier, watchdog_interval


@pytest.fixture
def systemd(tmp_path):
    """A bound SOCK_DGRAM socket like the one systemd listens on; yields (socket, its path)."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        yield sock, str(path)


def fields(sock: socket.socket) -> dict[str, str]:
    datagram = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in datagram.split("\n"))


def test_messages_reach_the_socket(systemd):
    sock, path = systemd
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled

    assert notifier.ready(status="serving mobilenet_v2, budget 64M")
    assert fields(sock) == {"READY": "1", "STATUS": "serving mobilenet_v2, budget 64M"}
    assert notifier.status("budget 32M, plan 3/9")
    assert fields(sock) == {"STATUS": "budget 32M, plan 3/9"}
    assert notifier.watchdog()
    assert fields(sock) == {"WATCHDOG": "1"}
    assert notifier.extend_timeout(5_000_000)
    assert fields(sock) == {"EXTEND_TIMEOUT_USEC": "5000000"}
    assert notifier.stopping(status="draining 2 requests")
    assert fields(sock) == {"STOPPING": "1", "STATUS": "draining 2 requests"}
    assert notifier.last["STATUS"] == "draining 2 requests" and notifier.last["READY"] == "1"


def test_reloading_carries_the_monotonic_clock(systemd):
    sock, path = systemd
    notifier = Notifier(path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    got = fields(sock)
    assert got["RELOADING"] == "1"
    assert before <= int(got["MONOTONIC_USEC"]) <= after


def test_abstract_address():
    name = f"flexnn-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert fields(sock) == {"READY": "1"}


def test_without_notify_socket_nothing_is_sent_but_state_is_kept():
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready(status="up") is False
    assert notifier.watchdog() is False
    assert notifier.last == {"READY": "1", "STATUS": "up", "WATCHDOG": "1"}


def test_unsupported_address_is_reported_not_used(caplog):
    with caplog.at_level(logging.WARNING):
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "neither a path nor @abstract" in caplog.text


def test_newline_in_a_field_is_refused(systemd):
    _, path = systemd
    with pytest.raises(ValueError, match="newline"):
        Notifier(path).status("two\nlines")


def test_a_vanished_systemd_warns_once_and_recovers(tmp_path, caplog):
    path = tmp_path / "notify"
    notifier = Notifier(str(path))
    with caplog.at_level(logging.WARNING):
        assert notifier.watchdog() is False
        assert notifier.watchdog() is False
    assert len([r for r in caplog.records if "sd_notify" in r.getMessage()]) == 1
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        assert notifier.watchdog() is True
        assert fields(sock) == {"WATCHDOG": "1"}


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env, interval):
    assert watchdog_interval(env) == interval
