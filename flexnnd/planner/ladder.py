"""The ladder: one model's plans for many budgets, from the smallest feasible one to everything
resident, each with its predicted latency, so that a budget change is a switch, not a re-plan."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

from flexnnd import progress
from flexnnd.errors import BudgetTooSmall, StalePlanFile
from flexnnd.graph.ir import Graph, rows_of
from flexnnd.ops.base import Axis
from flexnnd.planner.plan import Plan
from flexnnd.planner.plan_budget import Planner, plan_for_budget, plan_with_slicing, slicing_of, smallest_plan
from flexnnd.planner.plan_file import IndexEntry
from flexnnd.planner.profile import Machine, StepCost, step_costs
from flexnnd.planner.resident import plan_resident
from flexnnd.planner.simulate import Timeline, simulate
from flexnnd.weights_file import DIRECT_ALIGN, weight_offsets

RUNGS = 24  # geometric rungs between the two ends
# In a tenth of the rungs benchmarked here the loader read at 0.67x the calibrated rate or less
# (the storage drifts 2x within minutes). Plans are chosen by their latency averaged over the
# calibrated rate and this share of it, so a plan that only wins while reads are fast is not taken.
SLOW_READS = 0.7

log = logging.getLogger("flexnnd.ladder")


def predict(graph: Graph, plan: Plan, machine: Machine, costs: Mapping[str, StepCost] | None = None) -> float:
    """The simulator's latency for `plan`: a sliced node's time is shared by its parts, each
    paying its dispatch and (channel parts) a read of the operand they share. `costs` (node ->
    StepCost) may be passed when predicting many plans of one graph."""
    return timeline(graph, plan, machine, costs).seconds


def timeline(
    graph: Graph, plan: Plan, machine: Machine, costs: Mapping[str, StepCost] | None = None
) -> Timeline:
    """The simulator's run of `plan` (see `predict`)."""
    return simulate(plan, *_inputs(graph, plan, machine, costs), machine, load_joins(graph, plan))


def expected_timeline(
    graph: Graph, plan: Plan, machine: Machine, costs: Mapping[str, StepCost] | None = None
) -> Timeline:
    """The simulator's run of `plan` at the calibrated read rate, its latency (and so its stall)
    averaged with the run at SLOW_READS of that rate: what the ladder chooses plans by."""
    seconds, loads = _inputs(graph, plan, machine, costs)
    joins = load_joins(graph, plan)
    fast = simulate(plan, seconds, loads, machine, joins)
    slow_machine = dataclasses.replace(machine, read_bytes=machine.read_bytes * SLOW_READS)
    slow = simulate(plan, seconds, loads, slow_machine, joins)
    return dataclasses.replace(fast, seconds=(fast.seconds + slow.seconds) / 2)


def _inputs(
    graph: Graph, plan: Plan, machine: Machine, costs: Mapping[str, StepCost] | None
) -> tuple[list[float], dict[str, int]]:
    """Each step's compute seconds and each load's bytes, as `simulate` takes them."""
    if costs is None:
        costs = {c.node: c for c in step_costs(graph)}
    parts: dict[str, int] = {}
    for step in plan.steps:
        parts[step.node] = parts.get(step.node, 0) + 1
    seconds = [
        costs[s.node].part_seconds(
            machine, parts[s.node], s.part is not None and s.part.axis == Axis.CHANNELS
        )
        for s in plan.steps
    ]
    return seconds, {ld.piece: plan.region[ld.piece].nbytes for ld in plan.loads}


def load_joins(graph: Graph, plan: Plan) -> list[bool]:
    """For each load, whether it continues the previous one in the weights file on a block
    boundary, so that the loader may read both with one preadv."""
    offsets = weight_offsets(graph)
    joins, end = [], -1
    for ld in plan.loads:
        piece = plan.pieces[ld.piece]
        info = graph.tensors[piece.tensor]
        row = info.nbytes // rows_of(info.shape)
        start = offsets[piece.tensor] + row * piece.start
        joins.append(start == end and start % DIRECT_ALIGN == 0)
        end = start + row * (piece.stop - piece.start)
    return joins


def build_ladder(graph: Graph, machine: Machine, rungs: int = RUNGS) -> list[Plan]:
    """Plans from the smallest feasible budget to all-resident, ascending, each with its
    predicted latency; budgets between the ends are geometric."""
    with progress.task(f"planning {graph.name}", total=rungs + 2, detail="the smallest plan") as task:
        return _build_ladder(graph, machine, rungs, task)


def _build_ladder(graph: Graph, machine: Machine, rungs: int, task: progress.Task) -> list[Plan]:
    planner = Planner(graph)  # lifetimes, scratch sizes, layouts: computed once for every rung
    top_plan = plan_resident(graph)
    top = top_plan.arena_bytes
    if not planner.life.steps:  # every node only renames a tensor: one plan serves every budget
        return [
            dataclasses.replace(top_plan, budget=top, predicted_seconds=predict(graph, top_plan, machine))
        ]
    costs = {c.node: c for c in step_costs(graph)}
    run = lambda p: expected_timeline(graph, p, machine, costs)  # noqa: E731
    bottom_plan = smallest_plan(graph, planner)
    bottom = bottom_plan.arena_bytes
    fastest = (bottom_plan, run(bottom_plan).seconds)
    try:  # maximal slicing sets the smallest budget; a coarser slicing may fit it and run faster
        coarser = plan_for_budget(graph, bottom, planner, run)
        if (seconds := run(coarser).seconds) < fastest[1]:
            bottom_plan = dataclasses.replace(coarser, budget=bottom)
            fastest = (bottom_plan, seconds)
    except BudgetTooSmall:
        pass  # only the maximal slicing fits there
    plans, budgets = [bottom_plan], [bottom]
    task.advance()
    ratio = (top / bottom) ** (1 / (rungs + 1)) if bottom < top else 1.0
    for k in range(1, rungs + 1):
        budget = int(bottom * ratio**k)
        if budget >= top:
            break
        try:
            plan = plan_for_budget(graph, budget, planner, run)
        except BudgetTooSmall:  # refining never reaches the smallest plan's slicing here
            plans.append(fastest[0])  # the fastest rung below serves this budget
            budgets.append(budget)
            task.advance()
            continue
        # A faster rung below fits here too: its slicing, with more weights resident, or itself.
        seconds = run(plan).seconds
        if seconds > fastest[1]:
            again = plan_with_slicing(planner, budget, slicing_of(fastest[0]))
            plan, seconds = min(
                [(p, run(p).seconds) for p in (again,) if p is not None] + [fastest], key=lambda c: c[1]
            )
        if seconds <= fastest[1]:  # on a tie the bigger plan: the rungs' arenas keep ascending
            fastest = (plan, seconds)
        plans.append(plan)
        budgets.append(budget)
        task.advance()
    plans.append(top_plan)
    budgets.append(top)
    task.done = task.total - 1  # the geometric rungs may stop short of `rungs` under the top
    task.advance(detail="predicting each plan's latency")
    # Neighbouring budgets often get the same plan: each keeps its rung, the file holds it once.
    predicted: dict[int, float] = {}
    for p in plans:
        if id(p) not in predicted:
            predicted[id(p)] = predict(graph, p, machine, costs)
    return [
        dataclasses.replace(p, budget=b, predicted_seconds=predicted[id(p)])
        for p, b in zip(plans, budgets, strict=True)
    ]


def choose(ladder: Sequence[Plan | IndexEntry], budget: int) -> Plan | IndexEntry:
    """The largest rung that fits `budget`; BudgetTooSmall naming the smallest rung otherwise."""
    fitting = [p for p in ladder if p.arena_bytes <= budget]
    if not fitting:
        raise BudgetTooSmall(budget, min(p.arena_bytes for p in ladder), ladder[0].model)
    return max(fitting, key=lambda p: (p.arena_bytes, -(p.predicted_seconds or 0)))


LADDER_FILE = "plans.json"
PROVISIONAL = "plans.provisional"  # beside LADDER_FILE while its plans are planned with estimated rates
NEXT_LADDER = "plans.next.json"  # a ladder planned again, for the daemon to put in LADDER_FILE's place


def stored_ladder(package) -> list[Plan] | None:
    """The package's ladder, every plan verified; None when none was built yet, or when it was
    stored in another format version (said in the log: it is to be planned again)."""
    from flexnnd.planner.plan_file import read_plans

    path = package.path / LADDER_FILE
    if not path.exists():
        return None
    try:
        return read_plans(path, package.graph, package.weights_sha256)
    except StalePlanFile as e:
        log.warning("%s: planning it again", e)
        return None


def stored_rungs(package) -> list[IndexEntry] | None:
    """The index of the package's ladder (read a plan with `plan_file.read_plan`); None as for
    `stored_ladder`."""
    from flexnnd.planner.plan_file import read_index

    path = package.path / LADDER_FILE
    if not path.exists():
        return None
    try:
        return read_index(path, package.weights_sha256)
    except StalePlanFile as e:
        log.warning("%s: planning it again", e)
        return None


def provisional(package) -> bool:
    """Whether the package's ladder was planned with estimated rates (build_and_store's `estimate`)."""
    return (package.path / PROVISIONAL).exists()
