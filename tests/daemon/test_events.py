"""The event bus: every watcher gets every event in order, or is told how many it lost."""

from __future__ import annotations

import threading

from flexnnd.daemon.events import Event, EventBus


def test_watchers_get_events_in_order_and_history_is_bounded():
    bus = EventBus(history=4, capacity=16)
    with bus.subscribe() as a, bus.subscribe() as b:
        for i in range(6):
            bus.publish(Event("budget", f"b{i}"))
        for sub in (a, b):
            assert [sub.get(0).message for _ in range(6)] == [f"b{i}" for i in range(6)]
            assert sub.get(0) is None
    assert [e.message for e in bus.history] == ["b2", "b3", "b4", "b5"]
    assert bus.last["budget"].message == "b5" and bus.watchers == 0


def test_a_slow_watcher_is_told_how_many_events_it_lost():
    bus = EventBus(capacity=4)
    with bus.subscribe() as sub:
        for i in range(10):
            bus.publish(Event("swap", f"s{i}"))
        first = sub.get(0)
        assert first.kind == "error" and first.message.startswith("6 events dropped"), first
        assert [sub.get(0).message for _ in range(4)] == ["s6", "s7", "s8", "s9"]
        assert sub.get(0) is None  # the loss is reported once
        bus.publish(Event("swap", "s10"))
        assert sub.get(0).message == "s10"


def test_closing_the_bus_wakes_a_waiting_watcher():
    bus = EventBus()
    sub = bus.subscribe()
    got = []
    waiter = threading.Thread(target=lambda: got.append(sub.get(timeout=30)))
    waiter.start()
    bus.close()
    waiter.join(10)
    assert not waiter.is_alive() and got == [None] and sub.closed
