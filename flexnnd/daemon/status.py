"""Status: every control and OIP message that reports state, built in one place.

GetStatus, SetBudget's reply, ListModels, LoadModel, ListPlans, WatchEvents and systemd's STATUS=
line read the same figures through these builders.
"""

from __future__ import annotations

import time

import psutil
from flexnn_api.proto.flexnn.control.v1 import control_pb2
from flexnn_api.sizes import format_size

from flexnnd.daemon.budget import BudgetControl, fmt
from flexnnd.daemon.events import Event, EventBus
from flexnnd.daemon.models import Model, Models, ModelSnapshot, Rung


def status_text(budget: BudgetControl, models: Models) -> str:
    """systemd's STATUS= line: the budget in force and each model's plan."""
    decision = budget.decision
    text = fmt(decision.budget if decision else None)
    source = decision.source if decision else "none"
    plans = ", ".join(
        f"{m.name} {format_size(m.session.plan.arena_bytes)}" if m.ready else f"{m.name} {m.state}"
        for m in models.all()
    )
    return f"budget {text} ({source}); plans: {plans or 'no models'}"


def status_message(
    budget: BudgetControl, models: Models, events: EventBus, started: float
) -> control_pb2.Status:
    decision = budget.decision
    reading = budget.reading()
    last = events.last.get("pressure")
    return control_pb2.Status(
        effective_budget_bytes=(decision.budget or 0) if decision else 0,
        budget_source=decision.source if decision else "none",
        operator_budget=budget_text(budget.operator_budget),
        configured_budget=budget_text(budget.configured_budget),
        budget_reason=decision.reason if decision else "",
        cgroup_limit_bytes=reading.limit or 0,
        runtime_overhead_bytes=budget.runtime_overhead,
        rss_bytes=psutil.Process().memory_info().rss,
        swaps=models.swaps,
        last_pressure_event=event_message(last) if last is not None else None,
        uptime_s=time.time() - started,
        models=[model_status(m.snapshot()) for m in models.all()],
    )


def budget_text(budget: int | None) -> str:
    """A requested budget on the wire: bytes as text, or "auto" when none is set."""
    return "auto" if budget is None else str(budget)


def plan_info(model: Model, rung: Rung, active: bool) -> control_pb2.PlanInfo:
    """One rung as ListPlans shows it, from its index entry alone: listing reads no plan."""
    entry = rung.entry
    return control_pb2.PlanInfo(
        budget_bytes=rung.cost,
        arena_bytes=entry.arena_bytes,
        resident_bytes=entry.resident_bytes,
        streamed_bytes=entry.streamed_bytes,
        sliced_layers=entry.sliced_layers,
        predicted_latency_s=rung.seconds,
        measured_latency_s=model.measured.get(entry.arena_bytes, 0.0),
        active=active,
    )


def model_status(model: ModelSnapshot) -> control_pb2.ModelStatus:
    figures = model.figures
    return control_pb2.ModelStatus(
        name=model.name,
        ready=model.ready,
        state=model.state,
        reason=model.reason,
        budget_bytes=model.share or 0,
        plan_budget_bytes=figures.held_bytes if figures else 0,
        arena_bytes=figures.arena_bytes if figures else 0,
        resident_bytes=figures.resident_bytes if figures else 0,
        streamed_bytes=figures.streamed_bytes if figures else 0,
        sliced_layers=figures.sliced_layers if figures else 0,
        predicted_latency_s=model.predicted_seconds,
        last_latency_s=model.last_latency_s,  # served requests only, not the warm-up
        inferences=model.inferences,
        queue_depth=model.queue_depth,
    )


def event_message(event: Event) -> control_pb2.Event:
    return control_pb2.Event(
        time=event.time,
        kind=control_pb2.Event.Kind.Value(f"KIND_{event.kind.upper()}"),
        model=event.model,
        message=event.message,
        source=event.source,
        from_bytes=event.from_bytes,
        to_bytes=event.to_bytes,
        duration_s=event.duration_s,
    )
