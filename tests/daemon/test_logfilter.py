"""The rate limit on log lines that peers can trigger (gRPC's per-request deserialization errors)."""

from __future__ import annotations

import logging

import pytest

from flexnnd.daemon.logfilter import GRPC_NOISY_LOGGERS, RateLimitFilter, install_grpc_log_limit


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, name: str = "grpc._common") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, None)


def test_a_burst_passes_then_the_rest_is_counted_and_reported_once():
    clock = Clock()
    limit = RateLimitFilter(burst=3, interval_s=60, clock=clock)
    passed = [limit.filter(record("Exception deserializing message!")) for _ in range(1000)]
    assert passed.count(True) == 3 and passed[:3] == [True] * 3
    clock.now = 61
    summary = record("Exception deserializing message!")
    assert limit.filter(summary)
    assert "997 similar line(s) suppressed" in summary.getMessage()
    follow = record("Exception deserializing message!")
    assert limit.filter(follow) and "suppressed" not in follow.getMessage()


def test_different_messages_and_loggers_have_their_own_windows():
    limit = RateLimitFilter(burst=1, interval_s=60, clock=Clock())
    assert limit.filter(record("a"))
    assert not limit.filter(record("a"))
    assert limit.filter(record("b"))
    assert limit.filter(record("a", name="grpc._server"))


@pytest.fixture
def clean_grpc_loggers():
    yield
    for name in GRPC_NOISY_LOGGERS:
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, RateLimitFilter)]:
            logger.removeFilter(f)


def test_installed_on_grpc_loggers_it_limits_what_reaches_the_handlers(clean_grpc_loggers, caplog):
    install_grpc_log_limit(burst=2, interval_s=60)
    with caplog.at_level(logging.ERROR, logger="grpc._common"):
        for _ in range(50):
            logging.getLogger("grpc._common").error("Exception deserializing message!")
    assert len([r for r in caplog.records if r.name == "grpc._common"]) == 2
