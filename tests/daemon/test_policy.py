"""BudgetPolicy: the smallest constraint wins, down at once, up only after quiet and dwell."""

from __future__ import annotations

import dataclasses

import pytest

from flexnnd.daemon.config import Config
from flexnnd.daemon.monitor import EventCounts, MemoryEvent, Reading
from flexnnd.daemon.policy import BudgetPolicy, PolicyConfig

MiB = 1 << 20
GiB = 1 << 30
CFG = PolicyConfig.from_config(Config())  # the daemon's defaults: headroom 8 MiB, quiet 30 s, dwell 5 s
PSI = [MemoryEvent("pressure", "psi:/proc/pressure/memory")]


def reading(limit_max=None, limit_high=None, usage=None, inactive_file=0, available=None) -> Reading:
    version = 2 if limit_max is not None or usage is not None else None
    return Reading(version, limit_max, limit_high, usage, inactive_file, EventCounts(), available)


def cgroup_budget(limit: int, overhead: int) -> int:
    return int(0.9 * limit) - overhead - CFG.headroom


def test_nothing_known_is_unconstrained():
    d = BudgetPolicy(CFG).decide(0.0, reading(), None, 50 * MiB, None)
    assert (d.budget, d.source, d.changed) == (None, "none", False)


def test_smallest_constraint_wins_and_names_its_source():
    r = reading(limit_max=1 * GiB, usage=300 * MiB, available=4 * GiB)
    d = BudgetPolicy(CFG).decide(0.0, r, None, 60 * MiB, None)
    assert (d.budget, d.source, d.changed) == (cgroup_budget(1 * GiB, 60 * MiB), "cgroup", True)
    assert dict(d.constraints) == {"cgroup": d.budget, "system": 4 * GiB - CFG.headroom}

    d = BudgetPolicy(CFG).decide(0.0, r, 200 * MiB, 60 * MiB, None)
    assert (d.budget, d.source) == (200 * MiB, "operator")

    # MemAvailable excludes what our model holds, so it is added back
    low = reading(limit_max=1 * GiB, usage=300 * MiB, available=100 * MiB)
    d = BudgetPolicy(CFG).decide(0.0, low, None, 60 * MiB, None, model_bytes=150 * MiB)
    assert (d.budget, d.source) == (250 * MiB - CFG.headroom, "system")


def test_memory_high_below_max_is_the_limit():
    r = reading(limit_max=1 * GiB, limit_high=512 * MiB, usage=100 * MiB)
    d = BudgetPolicy(CFG).decide(0.0, r, None, 60 * MiB, None)
    assert d.budget == cgroup_budget(512 * MiB, 60 * MiB)


def test_budget_never_negative():
    r = reading(limit_max=64 * MiB, usage=60 * MiB, available=1 * MiB)
    d = BudgetPolicy(CFG).decide(0.0, r, None, 80 * MiB, None, model_bytes=0)
    assert d.budget == 0 and d.changed


def test_operator_applies_at_once_both_ways_and_auto_hands_back():
    policy = BudgetPolicy(CFG)
    r = reading(limit_max=1 * GiB, usage=200 * MiB, available=8 * GiB)
    auto = cgroup_budget(1 * GiB, 60 * MiB)
    d = policy.decide(0.0, r, None, 60 * MiB, None)
    assert d.budget == auto
    d = policy.decide(1.0, r, 100 * MiB, 60 * MiB, auto)
    assert (d.budget, d.source, d.changed) == (100 * MiB, "operator", True)
    # within the dwell and right after pressure, an operator raise still applies at once
    policy.decide(1.5, r, 100 * MiB, 60 * MiB, 100 * MiB, PSI)
    d = policy.decide(2.0, r, 300 * MiB, 60 * MiB, 75 * MiB)
    assert (d.budget, d.source, d.changed) == (300 * MiB, "operator", True)
    d = policy.decide(2.5, r, None, 60 * MiB, 300 * MiB)
    assert (d.budget, d.source, d.changed) == (auto, "cgroup", True)
    # the operator's budget is still capped by the machine
    d = policy.decide(3.0, r, 4 * GiB, 60 * MiB, auto)
    assert (d.budget, d.source) == (auto, "cgroup")


def test_pressure_cuts_at_once_and_grows_back_only_after_the_quiet_period():
    policy = BudgetPolicy(CFG)
    r = reading(limit_max=2 * GiB, usage=600 * MiB, inactive_file=100 * MiB, available=8 * GiB)
    full = cgroup_budget(2 * GiB, 60 * MiB)
    assert policy.decide(0.0, r, None, 60 * MiB, None).budget == full

    d = policy.decide(10.0, r, None, 60 * MiB, full, PSI)
    assert (d.budget, d.source, d.changed) == (int(0.75 * full), "pressure", True)
    assert "pressure" in d.reason
    cut = d.budget
    # more pressure before the daemon adopted the cut does not compound
    d = policy.decide(10.5, r, None, 60 * MiB, full, PSI)
    assert d.budget == cut
    # adopted: pressure within settle_s of the cut cuts no more, after it cuts again
    assert policy.decide(11.0, r, None, 60 * MiB, cut, PSI).budget == cut
    d = policy.decide(13.0, r, None, 60 * MiB, cut, PSI)
    assert (d.budget, d.changed) == (int(0.75 * cut), True)
    cut = d.budget

    # quiet since t=13: held until t=43, then straight back to the cgroup constraint
    for now in (20.0, 30.0, 42.9):
        d = policy.decide(now, r, None, 60 * MiB, cut)
        assert (d.budget, d.changed) == (cut, False)
        assert "quiet period" in d.reason
    d = policy.decide(43.0, r, None, 60 * MiB, cut)
    assert (d.budget, d.source, d.changed) == (full, "cgroup", True)
    assert policy.pressure_cap is None


def test_growing_waits_for_the_working_set_to_fall_below_the_low_watermark():
    policy = BudgetPolicy(CFG)
    limit = 1 * GiB
    busy = reading(limit_max=limit, usage=int(0.8 * limit), available=8 * GiB)
    full = cgroup_budget(limit, 60 * MiB)
    policy.decide(0.0, busy, None, 60 * MiB, None)
    cut = policy.decide(1.0, busy, None, 60 * MiB, full, PSI).budget
    d = policy.decide(100.0, busy, None, 60 * MiB, cut)
    assert (d.budget, d.changed) == (cut, False) and "working set" in d.reason
    calm = reading(limit_max=limit, usage=int(0.8 * limit), inactive_file=int(0.2 * limit), available=8 * GiB)
    d = policy.decide(101.0, calm, None, 60 * MiB, cut)
    assert (d.budget, d.changed) == (full, True)


def test_working_set_above_high_watermark_is_pressure():
    policy = BudgetPolicy(CFG)
    limit = 1 * GiB
    full = cgroup_budget(limit, 60 * MiB)
    policy.decide(0.0, reading(limit_max=limit, usage=500 * MiB), None, 60 * MiB, None)
    # page cache does not count: usage over 90 %, working set under it
    cached = reading(limit_max=limit, usage=int(0.95 * limit), inactive_file=200 * MiB)
    assert policy.decide(10.0, cached, None, 60 * MiB, full).budget == full
    hot = reading(limit_max=limit, usage=int(0.95 * limit), inactive_file=0)
    d = policy.decide(11.0, hot, None, 60 * MiB, full)
    assert (d.budget, d.source) == (int(0.75 * full), "pressure")
    assert "working set" in d.reason


@pytest.mark.parametrize(
    ("kind", "cuts"), [("high", True), ("max", True), ("oom_kill", True), ("low", False)]
)
def test_memory_events_that_count_as_pressure(kind, cuts):
    policy = BudgetPolicy(CFG)
    r = reading(limit_max=1 * GiB, usage=100 * MiB)
    full = policy.decide(0.0, r, None, 60 * MiB, None).budget
    d = policy.decide(5.0, r, None, 60 * MiB, full, [MemoryEvent(kind, "/sys/fs/cgroup/x", 3)])
    assert d.changed is cuts


def test_limit_lowered_applies_at_once_raised_waits_for_dwell():
    policy = BudgetPolicy(CFG)
    big, small = reading(limit_max=1 * GiB, usage=100 * MiB), reading(limit_max=512 * MiB, usage=100 * MiB)
    b_big, b_small = cgroup_budget(1 * GiB, 60 * MiB), cgroup_budget(512 * MiB, 60 * MiB)
    assert policy.decide(0.0, big, None, 60 * MiB, None).budget == b_big
    d = policy.decide(100.0, small, None, 60 * MiB, b_big)
    assert (d.budget, d.source, d.changed) == (b_small, "cgroup", True)
    d = policy.decide(102.0, big, None, 60 * MiB, b_small)
    assert (d.budget, d.changed) == (b_small, False) and "dwell" in d.reason
    d = policy.decide(105.0, big, None, 60 * MiB, b_small)
    assert (d.budget, d.changed) == (b_big, True)


def test_pressure_with_no_budget_in_force_cuts_from_what_the_model_holds():
    policy = BudgetPolicy(CFG)
    d = policy.decide(0.0, reading(), None, 60 * MiB, None, PSI, model_bytes=400 * MiB)
    assert (d.budget, d.source) == (300 * MiB, "pressure")


@pytest.mark.parametrize(
    "bad",
    [
        dict(pressure_step=1.0),
        dict(pressure_step=0.0),
        dict(low_watermark=0.9, high_watermark=0.8),
        dict(headroom=-1),
    ],
)
def test_config_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        dataclasses.replace(CFG, **bad)


@pytest.mark.parametrize(
    ("operator", "configured", "source", "budget"),
    [
        (None, None, "cgroup", cgroup_budget(1 * GiB, 60 * MiB)),  # automatic: the machine's constraint
        (None, 200 * MiB, "configured", 200 * MiB),  # configured below the machine: in force
        (None, 2 * GiB, "cgroup", cgroup_budget(1 * GiB, 60 * MiB)),  # configured above: capped
        (100 * MiB, 200 * MiB, "operator", 100 * MiB),  # operator over configured, downwards
        (300 * MiB, 200 * MiB, "operator", 300 * MiB),  # and upwards
        (2 * GiB, 200 * MiB, "cgroup", cgroup_budget(1 * GiB, 60 * MiB)),  # operator capped too
    ],
)
def test_precedence_operator_over_configured_over_automatic_each_capped(operator, configured, source, budget):
    r = reading(limit_max=1 * GiB, usage=200 * MiB, available=8 * GiB)
    d = BudgetPolicy(CFG).decide(0.0, r, operator, 60 * MiB, None, configured_budget=configured)
    assert (d.budget, d.source) == (budget, source)
    assert [name for name, _ in d.constraints if name in ("operator", "configured")] == (
        ["operator"] if operator is not None else ["configured"] if configured is not None else []
    )


def test_auto_returns_to_the_configured_budget_at_once_and_says_why():
    policy = BudgetPolicy(CFG)
    r = reading(limit_max=1 * GiB, usage=200 * MiB, available=8 * GiB)
    d = policy.decide(0.0, r, None, 60 * MiB, None, configured_budget=300 * MiB)
    assert (d.budget, d.source) == (300 * MiB, "configured")
    d = policy.decide(1.0, r, 100 * MiB, 60 * MiB, d.budget, configured_budget=300 * MiB)
    assert (d.budget, d.source) == (100 * MiB, "operator")
    # up again at once, inside the dwell time: clearing the operator's budget is a command, not the machine
    d = policy.decide(1.5, r, None, 60 * MiB, d.budget, configured_budget=300 * MiB)
    assert (d.budget, d.source, d.changed) == (300 * MiB, "configured", True)
    assert "configured budget" in d.reason
    held = policy.decide(2.0, r, None, 60 * MiB, d.budget, configured_budget=300 * MiB)
    assert (held.budget, held.source, held.changed, held.reason) == (300 * MiB, "configured", False, d.reason)


def test_a_configured_budget_changing_under_the_operators_is_not_a_command():
    policy = BudgetPolicy(CFG)
    r = reading(limit_max=1 * GiB, usage=200 * MiB, available=8 * GiB)
    d = policy.decide(0.0, r, 100 * MiB, 60 * MiB, None, configured_budget=300 * MiB)
    policy.decide(1.0, r, 100 * MiB, 60 * MiB, d.budget, PSI, configured_budget=300 * MiB)
    assert policy.pressure_cap == 75 * MiB
    d = policy.decide(1.5, r, 100 * MiB, 60 * MiB, 75 * MiB, configured_budget=400 * MiB)  # a reload
    assert policy.pressure_cap == 75 * MiB and (d.budget, d.source) == (75 * MiB, "pressure")


def test_the_policy_takes_the_operators_settings_from_config_only():
    with pytest.raises(TypeError):
        PolicyConfig()  # no defaults of its own to drift from Config's
    config = Config(headroom=3 << 20, quiet_period_s=7.0, min_dwell_s=1.5)
    policy = PolicyConfig.from_config(config)
    assert (policy.headroom, policy.quiet_period_s, policy.min_dwell_s) == (3 << 20, 7.0, 1.5)
