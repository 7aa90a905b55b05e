"""The planner: pure functions from a graph (and a budget, and a Machine's rates) to Plans.

plan.py: what a plan is; resident.py: the all-resident plan; plan_budget.py: a plan within a
budget; ladder.py: plans for many budgets; profile.py and simulate.py: their predicted latency;
verify.py: the checks every plan passes. Nothing here measures or runs anything.
"""

from __future__ import annotations

from flexnnd.planner.plan import Plan, Region, Step, scratch_name
from flexnnd.planner.verify import verify

__all__ = ["Plan", "Region", "Step", "scratch_name", "verify"]
