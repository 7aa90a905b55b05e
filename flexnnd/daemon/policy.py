"""The budget policy: from the machine's memory signals and the operator's word to one budget.

`BudgetPolicy.decide` is pure apart from its own small memory (when the budget last changed, when
pressure was last seen, the pressure cap); the clock is passed in, nothing is read from the system.

Constraints, each in bytes of model budget (weights, activations, scratch; not the runtime):

- operator: the budget set with `flexnnctl set-budget` (persisted); None means `auto`.
- configured: `--budget` or the TOML file's `budget`; active only while the operator's is unset.
  So the requested budget is operator > configured > automatic (neither: only the machine's
  constraints below), and whichever is requested is capped by the machine's constraints.
- cgroup: ⌊high_watermark × limit⌋ − runtime_overhead − headroom, limit = min(memory.max,
  memory.high) (v1: memory.limit_in_bytes). The limit is planned against at its high watermark so
  that a daemon filling its budget does not itself trip the working-set rule below.
- system: MemAvailable + model_bytes − headroom (MemAvailable already excludes what our models hold).
- pressure: a cap, set when pressure is seen to ⌊pressure_step × current budget⌋ and lifted when
  the machine has been quiet long enough.

The effective budget is the smallest active constraint (its name is the decision's `source`; on a
tie the first of operator, cgroup, pressure, system). None of them active: None, unconstrained.

Pressure is: a `pressure` event (PSI trigger, v1 pressure_level, MEMORY_PRESSURE_WATCH), a `high`,
`max`, `oom` or `oom_kill` counter increase, or a working set above high_watermark × limit. The
cap is computed from the budget in force, so several events before the daemon adopted the cut do
not compound; pressure after adoption cuts again, but not within settle_s of the previous cut.

Moves:
- down: at once, whatever lowered the target (limit, MemAvailable, pressure).
- operator: a changed requested budget (operator or configured, or a return to `auto`) applies at
  once in both directions, and clears the pressure cap: it is an explicit command; later pressure
  cuts again.
- up, automatically: only when no pressure was seen for quiet_period_s, the working set is below
  low_watermark × limit (when there is a limit), and min_dwell_s have passed since the last change.
  Then the cap is lifted and the budget goes straight to the smallest other constraint; if that
  was too much, the next pressure event cuts it again, at most once per quiet period.
  Until then the budget in force is held, and the reason says what it waits for.

Never negative: a constraint below zero is zero (the daemon reports it as a budget too small).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flexnnd.daemon.monitor import MemoryEvent, Reading

if TYPE_CHECKING:
    from flexnnd.daemon.config import Config

SOURCES = ("operator", "configured", "cgroup", "pressure", "system")  # tie order of the constraints
PRESSURE_COUNTERS = frozenset({"high", "max", "oom", "oom_kill"})


@dataclass(frozen=True)
class PolicyConfig:
    """The policy's settings: the operator's come from Config only (from_config); the rest are the
    policy's own constants, which no setting changes."""

    headroom: int  # bytes kept free below each limit: page cache, allocator slack
    quiet_period_s: float  # no pressure for this long before the budget may grow again
    min_dwell_s: float  # at least this long between a change and an automatic increase
    pressure_step: float = 0.75  # on pressure, cut to this fraction of the budget in force
    high_watermark: float = 0.9  # working set above this fraction of the limit counts as pressure
    low_watermark: float = 0.7  # growing again needs the working set below this fraction
    settle_s: float = 2.0  # pressure this soon after a cut cuts no more: the cut takes a moment to show

    @classmethod
    def from_config(cls, config: Config) -> PolicyConfig:
        return cls(
            headroom=config.headroom, quiet_period_s=config.quiet_period_s, min_dwell_s=config.min_dwell_s
        )

    def __post_init__(self) -> None:
        if min(self.headroom, self.quiet_period_s, self.min_dwell_s, self.settle_s) < 0:
            raise ValueError(
                f"headroom {self.headroom}, quiet_period_s {self.quiet_period_s}, min_dwell_s "
                f"{self.min_dwell_s} and settle_s {self.settle_s} must not be negative"
            )
        if not 0 < self.pressure_step < 1:
            raise ValueError(f"pressure_step must be in (0, 1), not {self.pressure_step}")
        if not 0 < self.low_watermark < self.high_watermark <= 1:
            raise ValueError(
                f"watermarks must satisfy 0 < low < high <= 1, not low {self.low_watermark}, "
                f"high {self.high_watermark}"
            )


@dataclass(frozen=True)
class Decision:
    budget: int | None  # bytes; None = unconstrained
    source: str  # "operator", "configured", "cgroup", "pressure", "system" or "none"
    reason: str
    changed: bool  # budget differs from the current_budget passed in
    constraints: tuple[tuple[str, int], ...] = ()  # every active constraint, for status


def _requested_reason(operator_budget: int | None, configured_budget: int | None) -> str:
    if operator_budget is not None:
        return f"operator budget {operator_budget:,}"
    if configured_budget is not None:
        return f"operator: auto, so the configured budget {configured_budget:,}"
    return "operator: auto, none configured: the machine's constraints"


def _standing_reason(source: str, operator_budget: int | None, configured_budget: int | None) -> str:
    """Why the budget in force stays what it is: the constraint that sets it, in words status can show."""
    if source in ("operator", "configured"):
        return _requested_reason(operator_budget, configured_budget)
    asked = _requested_reason(operator_budget, configured_budget)
    return {
        "cgroup": f"{asked}, capped by the cgroup's memory limit",
        "system": f"{asked}, capped by available memory",
        "pressure": f"{asked}, cut after memory pressure",
    }.get(source, asked)


def _lt(a: int | None, b: int | None) -> bool:
    """a < b where None is unbounded."""
    return a is not None and (b is None or a < b)


def _smallest(constraints: dict[str, int]) -> tuple[int | None, str]:
    """The smallest constraint and its name (ties: SOURCES order); (None, "none") when there is none."""
    if not constraints:
        return None, "none"
    value = min(constraints.values())
    return value, next(n for n in SOURCES if constraints.get(n) == value)


class BudgetPolicy:
    def __init__(self, config: PolicyConfig):
        self.config = config
        self.pressure_cap: int | None = None
        self.last_change = -math.inf
        self.last_pressure = -math.inf
        self.last_cut = -math.inf
        self._requested: tuple[int | None, int | None] = (None, None)  # (operator, configured) last seen
        self._source = "none"

    def constraints(
        self,
        reading: Reading,
        operator_budget: int | None,
        runtime_overhead: int,
        model_bytes: int,
        configured_budget: int | None = None,
    ) -> dict[str, int]:
        """The active constraints by name, pressure cap included, each clamped at 0."""
        cfg = self.config
        out: dict[str, int] = {}
        if operator_budget is not None:
            out["operator"] = operator_budget
        elif configured_budget is not None:
            out["configured"] = configured_budget
        if reading.limit is not None:
            out["cgroup"] = math.floor(cfg.high_watermark * reading.limit) - runtime_overhead - cfg.headroom
        if self.pressure_cap is not None:
            out["pressure"] = self.pressure_cap
        if reading.mem_available is not None:
            out["system"] = reading.mem_available + model_bytes - cfg.headroom
        return {name: max(0, out[name]) for name in SOURCES if name in out}

    def _pressure(self, reading: Reading, events: Iterable[MemoryEvent]) -> str | None:
        """Why this is a moment of pressure, or None."""
        kinds = sorted({e.kind for e in events if e.kind == "pressure" or e.kind in PRESSURE_COUNTERS})
        if kinds:
            return "memory " + "/".join(kinds) + " event"
        ws, limit = reading.working_set, reading.limit
        if ws is not None and limit is not None and ws > self.config.high_watermark * limit:
            return f"working set {ws:,} above {self.config.high_watermark:.0%} of limit {limit:,}"
        return None

    def decide(
        self,
        now: float,
        reading: Reading,
        operator_budget: int | None,
        runtime_overhead: int,
        current_budget: int | None,
        events: Iterable[MemoryEvent] = (),
        *,
        model_bytes: int | None = None,
        configured_budget: int | None = None,
    ) -> Decision:
        """The budget to adopt now; `model_bytes` is what our models hold (default: current_budget)."""
        cfg = self.config
        held = model_bytes if model_bytes is not None else (current_budget or 0)
        # Only the budget asked for counts: a configured one changing under an operator's is not a command.
        requested = (operator_budget, configured_budget if operator_budget is None else None)
        explicit = requested != self._requested
        self._requested = requested
        if explicit:
            self.pressure_cap = None

        why_pressure = self._pressure(reading, events)
        if why_pressure is not None:
            self.last_pressure = now
            others = self.constraints(reading, operator_budget, runtime_overhead, held, configured_budget)
            base = current_budget if current_budget is not None else min(others.values(), default=None)
            if base is None and held > 0:
                base = held
            cut = math.floor(cfg.pressure_step * base) if base is not None else None
            if _lt(cut, self.pressure_cap) and now - self.last_cut >= cfg.settle_s:
                self.pressure_cap, self.last_cut = cut, now

        active = self.constraints(reading, operator_budget, runtime_overhead, held, configured_budget)
        target, source = _smallest(active)
        listed = tuple(active.items())
        if explicit and target != current_budget:
            who = _requested_reason(operator_budget, configured_budget)
            return self._decision(now, target, source, who, current_budget, listed)
        if _lt(target, current_budget):
            reason = why_pressure if source == "pressure" and why_pressure else f"{source} constraint lowered"
            return self._decision(now, target, source, reason, current_budget, listed)

        # target >= current: is there room above the current budget once the pressure cap is lifted?
        ceiling_constraints = {n: v for n, v in active.items() if n != "pressure"}
        ceiling, ceiling_source = _smallest(ceiling_constraints)
        if not _lt(current_budget, ceiling):
            standing = why_pressure or _standing_reason(source, operator_budget, configured_budget)
            return self._decision(now, target, source, standing, current_budget, listed)
        waits = []
        if now - self.last_pressure < cfg.quiet_period_s:
            waits.append(f"quiet period ({cfg.quiet_period_s - (now - self.last_pressure):.0f} s left)")
        if now - self.last_change < cfg.min_dwell_s:
            waits.append(f"dwell ({cfg.min_dwell_s - (now - self.last_change):.0f} s left)")
        ws, limit = reading.working_set, reading.limit
        if ws is not None and limit is not None and ws >= cfg.low_watermark * limit:
            waits.append(f"working set {ws:,} to fall below {cfg.low_watermark:.0%} of limit {limit:,}")
        if waits:
            note = f"{why_pressure}; " if why_pressure else ""
            reason = note + "holding: waiting for " + ", ".join(waits)
            return Decision(current_budget, self._source, reason, False, listed)
        self.pressure_cap = None
        quiet = f" for {now - self.last_pressure:.0f} s" if math.isfinite(self.last_pressure) else ""
        reason = f"no pressure{quiet}: up to the {ceiling_source} constraint"
        return self._decision(
            now, ceiling, ceiling_source, reason, current_budget, tuple(ceiling_constraints.items())
        )

    def _decision(
        self,
        now: float,
        budget: int | None,
        source: str,
        reason: str,
        current_budget: int | None,
        listed: tuple[tuple[str, int], ...],
    ) -> Decision:
        changed = budget != current_budget
        if changed:
            self.last_change = now
        if budget is not None or changed:
            self._source = source
        return Decision(budget, source, reason, changed, listed)
