"""Plans on disk: versioned, diffable JSON (one record per line), verified on every read."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from flexnnd.errors import PlanError
from flexnnd.graph.ir import Graph
from flexnnd.ops.base import Part
from flexnnd.planner.plan import PLAN_VERSION, Load, Plan, Region, Step, WeightPiece
from flexnnd.planner.verify import verify
from flexnnd.storage import write_atomically

FORMAT = "flexnn-plans"


def plan_to_json(plan: Plan) -> dict[str, Any]:
    return {
        "model": plan.model,
        "budget": plan.budget,
        "arena_bytes": plan.arena_bytes,
        "predicted_seconds": plan.predicted_seconds,
        "steps": [
            [s.node, None if s.part is None else [s.part.axis, s.part.start, s.part.stop], list(s.weights)]
            for s in plan.steps
        ],
        "regions": [[r.name, r.offset, r.nbytes, r.first, r.last] for r in plan.regions],
        "pieces": [[p.name, p.tensor, p.start, p.stop] for p in plan.pieces.values()],
        "resident": list(plan.resident),
        "loads": [[ld.piece, ld.after_step, ld.step] for ld in plan.loads],
        "aliases": [[name, root, plan.offsets.get(name, 0)] for name, root in plan.aliases.items()],
    }


def plan_from_json(d: dict[str, Any]) -> Plan:
    aliases = {name: root for name, root, _ in d["aliases"]}
    offsets = {name: offset for name, _, offset in d["aliases"] if offset}
    return Plan(
        model=d["model"],
        budget=d["budget"],
        arena_bytes=int(d["arena_bytes"]),
        steps=tuple(
            Step(node, None if part is None else Part(*part), tuple(w)) for node, part, w in d["steps"]
        ),
        regions=tuple(Region(*r) for r in d["regions"]),
        resident=tuple(d["resident"]),
        aliases=MappingProxyType(aliases),
        offsets=MappingProxyType(offsets),
        pieces=MappingProxyType({p[0]: WeightPiece(*p) for p in d["pieces"]}),
        loads=tuple(Load(*ld) for ld in d["loads"]),
        predicted_seconds=d["predicted_seconds"],
    )


def _dumps(document: dict[str, Any]) -> str:
    """JSON with one list item per line, so that two plans diff line by line."""
    lines = ["{"]
    items = list(document.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, list) and value and isinstance(value[0], dict):
            body = ",\n".join(_dumps(v) for v in value)
            lines.append(f"{json.dumps(key)}: [\n{body}\n]{comma}")
        elif isinstance(value, list) and value:
            body = ",\n ".join(json.dumps(v) for v in value)
            lines.append(f"{json.dumps(key)}: [\n {body}\n]{comma}")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("}")
    return "\n".join(lines)


def write_plans(path: str | os.PathLike, plans: Sequence[Plan], graph: Graph, weights_sha256: str) -> None:
    """Verify, then write atomically (temporary file, fsync, rename): a crash leaves the old file."""
    for plan in plans:
        verify(plan, graph)
    path = Path(path)
    document = {
        "format": FORMAT,
        "version": PLAN_VERSION,
        "weights_sha256": weights_sha256,
        "plans": [plan_to_json(p) for p in plans],
    }
    write_atomically(path, _dumps(document) + "\n", "plan cache")


def read_plans(path: str | os.PathLike, graph: Graph, weights_sha256: str) -> list[Plan]:
    """Read and verify every plan; stale, foreign or corrupt files raise PlanError saying what to do."""
    path = Path(path)
    redo = "re-import the model (flexnnctl import MODEL.onnx DIR) to plan it again"
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{path}: no plans; {redo}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PlanError(f"{path} is corrupt ({e}); {redo}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PlanError(f"{path} is not a flexnn plan file; {redo}")
    if document.get("version") != PLAN_VERSION:
        raise PlanError(
            f"{path}: plan format version {document.get('version')}, this flexnn reads {PLAN_VERSION}; {redo}"
        )
    if document.get("weights_sha256") != weights_sha256:
        raise PlanError(f"{path} was planned for other weights than this package holds; {redo}")
    try:
        plans = [plan_from_json(d) for d in document["plans"]]
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"{path} is corrupt ({type(e).__name__}: {e}); {redo}") from None
    for plan in plans:
        verify(plan, graph)
    return plans
