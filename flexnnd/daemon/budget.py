"""Budget control: the operator's budget file, the configured budget, re-evaluation and its events.

Precedence is the policy's (operator > configured > automatic); this module keeps the operator's
budget in the state directory, asks the policy for a decision under one lock (set-budget, the file
watcher and the main loop's ticks never interleave), rebalances the models when the budget moves
and announces only budgets that move a model to another rung.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from flexnn_api.sizes import format_size, parse_size

from flexnnd.daemon.config import Config
from flexnnd.daemon.events import Event, EventBus
from flexnnd.daemon.models import Models
from flexnnd.daemon.monitor import EventCounts, Monitor, MonitorConfig, Reading
from flexnnd.daemon.policy import BudgetPolicy, Decision, PolicyConfig
from flexnnd.errors import BudgetTooSmall, ConfigError, FlexnnError, InvalidRequest, PlanError
from flexnnd.storage import write_atomically

log = logging.getLogger("flexnnd")

NO_READING = Reading(None, None, None, None, None, EventCounts(), None)  # no monitor: no machine constraint
BUDGET_FILE = "budget"  # the operator's budget in the state directory: a size, absent means auto


class BudgetControl:
    """The budget in force and the sources it comes from; `reevaluate` is the one place it changes."""

    def __init__(self, config: Config, state_dir: Path, models: Models, events: EventBus):
        self.config, self.models, self.events = config, models, events
        self.budget_file = state_dir / BUDGET_FILE
        self.policy = BudgetPolicy(PolicyConfig.from_config(config))
        self.monitor: Monitor | None = None
        self.runtime_overhead = 0
        self.operator_budget: int | None = None
        self.decision: Decision | None = None
        self.lock = threading.RLock()
        self.pending = False  # the budget file changed: the next tick re-decides even if nothing else moved
        self.on_change: Callable[[], None] = lambda: None  # after every decision: the daemon's health
        self._reported: int | None = None  # the budget last announced as an event
        self._reported_source = "none"

    def configure(self, config: Config) -> None:
        """A reloaded configuration: its budget and policy settings apply from the next decision."""
        self.config = config
        self.policy = BudgetPolicy(PolicyConfig.from_config(config))

    @property
    def configured_budget(self) -> int | None:
        """`--budget`/the TOML's budget: in force while the operator has set none; None is auto."""
        return self.config.budget_bytes

    def read_operator_budget(self) -> int | None:
        """The operator's persisted budget; no file means none (the configured one is not a fallback here)."""
        try:
            text = self.budget_file.read_text().strip()
        except FileNotFoundError:
            return None
        if text.lower() in ("", "auto"):
            return None
        try:
            return parse_size(text)
        except ValueError as e:
            raise ConfigError(f"{self.budget_file}: {e}") from None

    def warn_if_overridden(self) -> None:
        """An operator's budget persisted by an earlier set-budget outranks --budget: say so, naming both."""
        configured, operator = self.configured_budget, self.operator_budget
        if operator is not None and operator != configured:
            log.warning(
                "the operator's budget %s (set with flexnnctl set-budget, kept in %s) overrides the configured "
                "budget %s; `flexnnctl set-budget auto` hands control back to the configured one",
                format_size(operator),
                self.budget_file,
                "auto" if configured is None else format_size(configured),
            )

    def write_operator_budget(self, budget: int | None) -> None:
        path = self.budget_file
        if budget is None:
            path.unlink(missing_ok=True)
            return
        write_atomically(path, f"{budget}\n", "state file")

    def set_operator_budget(self, text: str) -> Decision:
        """`flexnnctl set-budget`: a size, or "auto" to clear the operator's budget (then the configured
        one, if any, else the machine's constraints apply). Refused (not stored) below the smallest
        plans, or when a plan it needs cannot be read (PlanError naming the file; the old budget stays)."""
        text = text.strip()
        try:
            budget = None if text.lower() == "auto" else parse_size(text)
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        with self.lock:
            if budget is not None and budget < self.models.minimum():
                names = ", ".join(m.name for m in self.models.all())
                raise BudgetTooSmall(budget, self.models.minimum(), names)
            previous = self.operator_budget
            self.write_operator_budget(budget)
            self.operator_budget = budget
            self.models.retry_failed_swaps()  # even at the same budget: the operator asked again
            try:
                decision = self.reevaluate([], force=True, strict=True)
            except PlanError:
                self.operator_budget = previous  # nothing swapped: the budget in force stays the old one
                self.write_operator_budget(previous)
                raise
            self.events.publish(
                Event(
                    "budget",
                    f"operator budget {'auto' if budget is None else format_size(budget)}",
                    source="operator",
                    to_bytes=budget or 0,
                )
            )
            return decision

    def reevaluate(self, pressure: list, force: bool = False, strict: bool = False) -> Decision:
        """Decide the effective budget from every source; rebalance the models when it moved.

        A plan that cannot be read leaves every model on its current plan: strict raises the
        PlanError, else it stands as an error event and the next tick tries again."""
        with self.lock:
            reading = self.reading()
            decision = self.policy.decide(
                time.monotonic(),
                reading,
                self.operator_budget,
                self.runtime_overhead,
                self.models.total,
                pressure,
                model_bytes=self.models.committed,
                configured_budget=self.configured_budget,
            )
            previous = self.models.total
            if decision.budget != previous or force:
                reported, reported_source = self._reported, self._reported_source
                moves = self.rung_moves(decision.budget)
                change = (
                    f"effective budget {fmt(reported)} → {fmt(decision.budget)} ({decision.source}): "
                    f"{decision.reason}"
                )
                # A budget that moves no model to another rung is not news: MemAvailable wobbles every tick.
                if force or moves:
                    self.events.publish(
                        Event(
                            "budget",
                            change + (f"; {', '.join(moves)}" if moves else "; no model changes rung"),
                            source=decision.source,
                            from_bytes=reported or 0,
                            to_bytes=decision.budget or 0,
                        )
                    )
                    self._reported, self._reported_source = decision.budget, decision.source
                else:
                    log.debug("%s; no model changes rung", change)
                try:
                    self.models.rebalance(decision.budget, reason=f"{decision.source} budget")
                except PlanError:
                    self._reported, self._reported_source = reported, reported_source
                    if strict:
                        raise
                    return decision  # not in force: status keeps the decision the models run under
            self.decision = decision
            self.on_change()
            return decision

    def open_monitor(self, env: Mapping[str, str]) -> None:
        """Watch the machine's memory; without a monitor the other budget sources still apply."""
        try:
            monitor = Monitor(MonitorConfig.from_config(self.config, env=env))
            monitor.open()
            log.info(
                "memory signals: %s", ", ".join(monitor.sources) or "none (limits and MemAvailable polled)"
            )
            self.monitor = monitor
        except (OSError, ValueError, FlexnnError) as e:
            # Not silent: logged and shown as an error event; the other budget sources still apply.
            self.events.publish(
                Event("error", f"memory monitor unavailable, budget from the operator only: {e}")
            )

    def reading(self) -> Reading:
        return self.monitor.read() if self.monitor is not None else NO_READING

    def rung_moves(self, budget: int | None) -> list[str]:
        """The models `budget` would move to another rung, each as "name old → new" arena bytes."""
        chosen, _ = self.models.plan_split(budget)
        moves = []
        for model in self.models.all():
            now = model.session.plan.arena_bytes if model.ready and model.session is not None else None
            rung = chosen.get(model.name)
            new = rung.entry.arena_bytes if rung is not None else None
            if new != now:
                moves.append(f"{model.name} {_fmt_arena(now)} → {_fmt_arena(new)}")
        return moves

    def file_changed(self) -> None:
        """The budget file changed on disk (a hand edit): take its budget at the next tick."""
        # under the lock: a set-budget between our read and our write would be undone by a stale read
        with self.lock:
            try:
                budget = self.read_operator_budget()
            except ConfigError as e:
                self.events.publish(Event("error", str(e)))
                return
            if budget != self.operator_budget:
                self.operator_budget = budget
                self.events.publish(Event("budget", f"budget file changed: {fmt(budget)}", source="operator"))
                self.pending = True


def _fmt_arena(arena: int | None) -> str:
    return "no plan" if arena is None else f"arena {format_size(arena)}"


def fmt(budget: int | None) -> str:
    return "unlimited" if budget is None else format_size(budget)
