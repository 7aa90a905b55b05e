"""Plans on disk: versioned, diffable JSON (one record per line), verified on every read.

The document opens with an index of its plans (arena size, budget, predicted latency, and where
each plan's text lies in the file), so that a session can read the index and then parse and
verify only the plan it adopts: holding a whole ladder in Python objects would cost more memory
than the slack the budget allows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from flexnnd.errors import PlanError, StalePlanFile
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


@dataclass(frozen=True)
class IndexEntry:
    """One plan of a file, as its index lists it: enough to choose and to list a rung without reading it."""

    model: str
    budget: int | None
    arena_bytes: int
    predicted_seconds: float | None
    resident_bytes: int  # weights loaded once, at adoption
    streamed_bytes: int  # weights read on every inference
    sliced_layers: tuple[str, ...]  # nodes run in parts, sorted
    offset: int  # byte offset of the plan's JSON text in the file
    length: int  # its bytes


def summary(plan: Plan) -> tuple[int, int, tuple[str, ...]]:
    """What a listing shows of a plan besides its sizes: resident bytes, streamed bytes, sliced layers."""
    return (
        sum(plan.region[p].nbytes for p in plan.resident),
        sum(plan.region[ld.piece].nbytes for ld in plan.loads),
        tuple(sorted({s.node for s in plan.steps if s.part is not None})),
    )


_WIDTH = 12  # offsets are zero-padded strings, so the index is as long before as after they are known


def _render(plans: Sequence[Plan], weights_sha256: str) -> bytes:
    # Rungs that share a plan share its text: budgets live in the index, a body has none.
    texts: dict[bytes, int] = {}
    dicts, body_of = [], []
    for p in plans:
        d = plan_to_json(dataclasses.replace(p, budget=None))
        text = _dumps(d).encode()
        if text not in texts:
            texts[text] = len(dicts)
            dicts.append(d)
        body_of.append(texts[text])
    bodies = list(texts)
    summaries = [summary(p) for p in plans]

    def document(offsets: Sequence[int]) -> bytes:
        index = [
            [
                p.model,
                p.budget,
                p.arena_bytes,
                p.predicted_seconds,
                *s,
                f"{offsets[b]:0{_WIDTH}d}",
                f"{len(bodies[b]):0{_WIDTH}d}",
            ]
            for p, s, b in zip(plans, summaries, body_of, strict=True)
        ]
        head = {"format": FORMAT, "version": PLAN_VERSION, "weights_sha256": weights_sha256, "index": index}
        return (_dumps({**head, "plans": dicts}) + "\n").encode()

    draft = document([0] * len(bodies))
    offsets, at = [], 0
    for text in bodies:
        at = draft.index(text, at)
        offsets.append(at)
        at += len(text)
    final = document(offsets)
    assert len(final) == len(draft)  # same widths: the plans did not move
    return final


def write_plans(path: str | os.PathLike, plans: Sequence[Plan], graph: Graph, weights_sha256: str) -> None:
    """Verify, then write atomically (temporary file, fsync, rename): a crash leaves the old file."""
    for plan in plans:
        verify(plan, graph)
    path = Path(path)
    write_atomically(path, _render(plans, weights_sha256), "plan cache")


REDO = "re-import the model (flexnnctl import MODEL.onnx DIR) to plan it again"
HEAD_LIMIT = 1 << 20  # an index longer than this is a corrupt file, not a ladder


def _check_head(path: Path, document: Any, weights_sha256: str) -> None:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PlanError(f"{path} is not a flexnn plan file; {REDO}")
    if document.get("version") != PLAN_VERSION:
        raise StalePlanFile(
            f"{path}: plan format version {document.get('version')}, this flexnn reads {PLAN_VERSION}; {REDO}"
        )
    if document.get("weights_sha256") != weights_sha256:
        raise PlanError(f"{path} was planned for other weights than this package holds; {REDO}")


def _entry(row: Sequence[Any]) -> IndexEntry:
    model, budget, arena, predicted, resident, streamed, sliced, offset, length = row
    return IndexEntry(
        model,
        budget,
        int(arena),
        predicted,
        int(resident),
        int(streamed),
        tuple(sliced),
        int(offset),
        int(length),
    )


def read_index(path: str | os.PathLike, weights_sha256: str) -> list[IndexEntry]:
    """The index of a plan file, without reading its plans; PlanError (StalePlanFile for another
    format version) saying what to do when the file is not a current one."""
    path = Path(path)
    lines = []
    try:
        with open(path, "rb") as f:
            size = 0
            for line in f:
                if line.startswith(b'"plans": ['):
                    break
                lines.append(line)
                size += len(line)
                if size > HEAD_LIMIT:
                    raise PlanError(f"{path} is corrupt (no plans after {HEAD_LIMIT:,} bytes); {REDO}")
    except FileNotFoundError:
        raise PlanError(f"{path}: no plans; {REDO}") from None
    head = b"".join(lines).rstrip().rstrip(b",") + b"}"
    try:
        document = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PlanError(f"{path} is corrupt ({e}); {REDO}") from None
    _check_head(path, document, weights_sha256)
    try:
        return [_entry(row) for row in document["index"]]
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"{path} is corrupt ({type(e).__name__}: {e}); {REDO}") from None


def read_plan(path: str | os.PathLike, entry: IndexEntry, graph: Graph) -> Plan:
    """One plan of the file, found by its index entry, parsed and verified."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            f.seek(entry.offset)
            text = f.read(entry.length)
        plan = dataclasses.replace(plan_from_json(json.loads(text)), budget=entry.budget)
        listed = (
            entry.model,
            entry.arena_bytes,
            entry.resident_bytes,
            entry.streamed_bytes,
            entry.sliced_layers,
        )
        matches = (plan.model, plan.arena_bytes, *summary(plan)) == listed
    except FileNotFoundError:
        raise PlanError(f"{path}: no plans; {REDO}") from None
    except OSError as e:
        raise PlanError(f"{path} is unreadable: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise PlanError(f"{path} is corrupt ({type(e).__name__}: {e}); {REDO}") from None
    if not matches:
        raise PlanError(f"{path} is corrupt (its index does not match its plans); {REDO}")
    try:
        verify(plan, graph)
    except PlanError as e:  # the daemon reads plans long after start: say which file went bad
        raise PlanError(f"{path}: {e}; {REDO}") from None
    return plan


def read_plans(path: str | os.PathLike, graph: Graph, weights_sha256: str) -> list[Plan]:
    """Every rung's plan, verified (a plan several rungs share is parsed once); stale, foreign or
    corrupt files raise PlanError saying what to do."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{path}: no plans; {REDO}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PlanError(f"{path} is corrupt ({e}); {REDO}") from None
    _check_head(path, document, weights_sha256)
    try:
        entries = [_entry(row) for row in document["index"]]
        plans = [plan_from_json(d) for d in document["plans"]]
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"{path} is corrupt ({type(e).__name__}: {e}); {REDO}") from None
    # The plans lie in the file in the order of their offsets: the n-th offset is the n-th plan.
    body = {offset: i for i, offset in enumerate(sorted({e.offset for e in entries}))}
    if len(body) != len(plans):
        raise PlanError(f"{path} is corrupt ({len(body)} plans indexed, {len(plans)} stored); {REDO}")
    for plan in plans:
        verify(plan, graph)
    return [dataclasses.replace(plans[body[e.offset]], budget=e.budget) for e in entries]
