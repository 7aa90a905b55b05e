"""Budget precedence against the real daemon: operator (set-budget, persisted) > configured (--budget)
> automatic, each capped by the machine's constraints; `auto` clears the operator's budget only."""

from __future__ import annotations

import time

import pytest
from flexnn_api.sizes import format_size

from tests.daemon.harness import DaemonProcess
from tests.daemon.test_daemon_budget_sources import until
from tests.daemon.test_daemon_e2e import cache, models_dir  # noqa: F401 - shared fixtures
from tests.daemon.test_monitor import MiB, v2_tree, write

WATCHER_S = 2.0  # longer than the budget file watcher's reaction (0.45 s measured) and four main-loop ticks


@pytest.fixture
def machine(tmp_path):
    """A fake v2 cgroup with no limit and a MemAvailable the test sets; returns (flags, meminfo path)."""
    monitor_config, cgroup = v2_tree(tmp_path / "fake")
    write(cgroup / "memory.current", f"{10 * MiB}\n")
    for f in ("memory.max", "memory.high"):
        write(cgroup / f, "max\n")
    write(cgroup.parent / "memory.max", "max\n")
    flags = [
        "--proc-root", str(monitor_config.proc_root), "--fs-root", str(monitor_config.fs_root),
        "--headroom", "1M", "--quiet-period-s", "1", "--min-dwell-s", "0.5",
    ]  # fmt: skip
    return flags, monitor_config.proc_root / "meminfo"


def set_available(meminfo, available: int) -> None:
    write(meminfo, f"MemTotal: 8000000 kB\nMemFree: 100 kB\nMemAvailable: {available // 1024} kB\n")


def start(tmp_path, models_dir, cache, machine, *extra) -> DaemonProcess:  # noqa: F811
    flags, _ = machine
    d = DaemonProcess(
        tmp_path / "d",
        ["--models-dir", str(models_dir), "--models", "a.onnx", "--threads", "1", *flags, *extra],
        cache=cache,
    )
    return d.start()


def restart(d: DaemonProcess, *extra) -> None:
    """Stop d and start it again, same directories, with `extra` flags in place of the last ones."""
    assert d.stop() == 0
    base = d.args[: d.args.index("--min-dwell-s") + 2]
    d.args = [*base, *extra]
    d.start()


def budgets(d) -> tuple[int, int, int]:
    """The smallest, a middle and the largest plan budget of model a."""
    with d.client() as c:
        sizes = sorted({p.budget_bytes for p in c.plans("a")})
    assert len(sizes) >= 3, f"model a needs at least three distinct plans for this test, has {sizes}"
    return sizes[0], sizes[len(sizes) // 2], sizes[-1]


def test_auto_hands_back_to_the_configured_budget_and_stays(tmp_path, models_dir, cache, machine):  # noqa: F811
    d = start(tmp_path, models_dir, cache, machine)
    try:
        smallest, middle, _ = budgets(d)
        restart(d, "--budget", str(middle))
        with d.client() as c:
            status = c.status()
            assert (status.budget_source, status.effective_budget_bytes) == ("configured", middle)
            assert (status.operator_budget, status.configured_budget) == ("auto", str(middle))

            reply = c.set_budget(smallest)
            assert (reply.budget_source, reply.effective_budget_bytes) == ("operator", smallest)
            assert (reply.operator_budget, reply.configured_budget) == (str(smallest), str(middle))

            reply = c.set_budget("auto")
            assert (reply.budget_source, reply.effective_budget_bytes) == ("configured", middle)
            assert reply.operator_budget == "auto" and "configured" in reply.reason
            time.sleep(WATCHER_S)  # the state file's removal reaches the watcher: it must change nothing
            status = c.status()
            assert (status.budget_source, status.effective_budget_bytes) == ("configured", middle)
            assert status.operator_budget == "auto" and status.budget_reason == reply.reason
        assert "budget file changed" not in d.log()
    finally:
        d.stop()
        d.close()


def test_a_persisted_operator_budget_outranks_budget_at_restart_with_a_warning(
    tmp_path,
    models_dir,  # noqa: F811
    cache,  # noqa: F811
    machine,
):
    d = start(tmp_path, models_dir, cache, machine)
    try:
        smallest, middle, _ = budgets(d)
        with d.client() as c:
            c.set_budget(smallest)
        restart(d, "--budget", str(middle))
        with d.client() as c:
            status = c.status()
            assert (status.budget_source, status.effective_budget_bytes) == ("operator", smallest)
            assert status.configured_budget == str(middle)
        warning = next(line for line in d.log().splitlines() if "overrides the configured budget" in line)
        assert "WARNING" in warning
        assert format_size(smallest) in warning and format_size(middle) in warning
        with d.client() as c:
            assert c.set_budget("auto").budget_source == "configured"
    finally:
        d.stop()
        d.close()


def test_the_machine_caps_configured_and_operator_budgets_and_auto_means_automatic(
    tmp_path,
    models_dir,  # noqa: F811
    cache,  # noqa: F811
    machine,
):
    _, meminfo = machine
    d = start(tmp_path, models_dir, cache, machine)
    try:
        _, middle, largest = budgets(d)
        with d.client() as c:
            status = c.status()  # neither operator nor configured: the machine's constraint
            assert status.budget_source == "system"
            assert (status.operator_budget, status.configured_budget) == ("auto", "auto")
        restart(d, "--budget", str(largest))
        with d.client() as c:
            held = c.status().models[0].budget_bytes
            # MemAvailable + what the models hold − headroom: a system constraint between middle and largest
            system = (middle + largest) // 2
            set_available(meminfo, system - held + MiB)
            status = until(lambda: (s := c.status()).budget_source == "system" and s, "the system cap")
            assert status.configured_budget == str(largest)
            assert status.effective_budget_bytes < largest

            reply = c.set_budget(largest)  # the operator's budget is capped too
            assert reply.budget_source == "system" and reply.effective_budget_bytes < largest
            assert reply.operator_budget == str(largest)

            # (an operator's budget below the cap is in force: the first test; not here, where the fake
            # MemAvailable would not grow back as a swap down frees memory)
            reply = c.set_budget("auto")  # back to the configured one, capped by the machine
            assert reply.budget_source == "system" and reply.configured_budget == str(largest)
    finally:
        d.stop()
        d.close()


def test_a_budget_change_that_moves_no_rung_is_not_an_event(tmp_path, models_dir, cache, machine):  # noqa: F811
    _, meminfo = machine
    d = start(tmp_path, models_dir, cache, machine)
    try:
        smallest, middle, _ = budgets(d)
        with d.client() as c:
            before = c.status().effective_budget_bytes
            reported = d.log().count("effective budget")
            set_available(meminfo, 2 << 30)  # 3.8G -> 2G available: every plan still fits
            until(lambda: c.status().effective_budget_bytes < before, "the smaller system budget")
            time.sleep(WATCHER_S)
            assert d.log().count("effective budget") == reported, d.log()

            held = c.status().models[0].budget_bytes
            set_available(meminfo, (smallest + middle) // 2 - held + MiB)  # a system budget below middle
            until(lambda: c.status().models[0].budget_bytes < middle, "a swap down")
        line = [line for line in d.log().splitlines() if "effective budget" in line][reported]
        assert "(system)" in line and "a arena" in line, line
    finally:
        d.stop()
        d.close()
