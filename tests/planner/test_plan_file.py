"""Plan files: round trip, diffable layout, and stale, foreign, corrupt or invalid files refused."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

import flexnnd
from flexnnd.planner.plan import PLAN_VERSION
from flexnnd.planner.plan_file import read_plans, write_plans
from flexnnd.planner.resident import plan_resident
from tests.planner.plans import streamed_plan

SHA = "ab" * 32


@pytest.fixture
def plans(graph):
    return [plan_resident(graph), streamed_plan(graph)]


def test_round_trip(tmp_path, graph, plans):
    path = tmp_path / "plans.json"
    write_plans(path, plans, graph, SHA)
    again = read_plans(path, graph, SHA)
    assert again == plans
    # One record per line: a region or a load is one line of the file.
    lines = path.read_text().splitlines()
    assert any(line.strip().startswith('["') and "fc2" not in line for line in lines)
    assert len(lines) > sum(len(p.regions) for p in plans)


def test_an_invalid_plan_is_never_written(tmp_path, graph, plans):
    broken = dataclasses.replace(plans[1], arena_bytes=64)
    with pytest.raises(flexnnd.PlanError, match="crosses the arena end"):
        write_plans(tmp_path / "plans.json", [broken], graph, SHA)
    assert not (tmp_path / "plans.json").exists()


def test_an_invalid_plan_is_never_read(tmp_path, graph, plans):
    path = tmp_path / "plans.json"
    write_plans(path, plans, graph, SHA)
    document = json.loads(path.read_text())
    document["plans"][1]["arena_bytes"] = 64
    path.write_text(json.dumps(document))
    with pytest.raises(flexnnd.PlanError, match="crosses the arena end"):
        read_plans(path, graph, SHA)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=0), "plan format version 0"),
        (lambda d: d.update(format="other"), "not a flexnn plan file"),
        (lambda d: d.update(weights_sha256="00" * 32), "planned for other weights"),
        (lambda d: d["plans"][0].pop("regions"), "corrupt"),
    ],
    ids=["stale", "foreign", "other-weights", "missing-field"],
)
def test_bad_files_say_what_to_do(tmp_path, graph, plans, edit, message):
    path = tmp_path / "plans.json"
    write_plans(path, plans, graph, SHA)
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))
    with pytest.raises(flexnnd.PlanError, match=f"{message}.*re-import"):
        read_plans(path, graph, SHA)


def test_truncated_file(tmp_path, graph, plans):
    path = tmp_path / "plans.json"
    write_plans(path, plans, graph, SHA)
    path.write_text(path.read_text()[:100])
    with pytest.raises(flexnnd.PlanError, match="corrupt"):
        read_plans(path, graph, SHA)


def test_one_plan_is_read_by_the_index_alone(tmp_path, graph, plans):
    from flexnnd.planner.plan_file import read_index, read_plan

    path = tmp_path / "plans.json"
    write_plans(path, plans, graph, SHA)
    index = read_index(path, SHA)
    assert [e.arena_bytes for e in index] == [p.arena_bytes for p in plans]
    assert [read_plan(path, e, graph) for e in index] == plans
    # What a listing shows comes from the index alone, as the plan itself would give it.
    streamed = plans[1]
    assert index[1].resident_bytes == sum(streamed.region[p].nbytes for p in streamed.resident)
    assert index[1].streamed_bytes == sum(streamed.region[ld.piece].nbytes for ld in streamed.loads) > 0
    assert index[1].sliced_layers == tuple(sorted({s.node for s in streamed.steps if s.part is not None}))
    assert index[0].streamed_bytes == 0 and index[0].sliced_layers == ()


def test_a_plan_file_gone_or_unreadable_later_is_named(tmp_path, graph, plans):
    from flexnnd.planner.plan_file import read_index, read_plan

    path = tmp_path / "plans.json"
    write_plans(path, plans, graph, SHA)
    entry = read_index(path, SHA)[1]
    path.write_bytes(path.read_bytes()[: entry.offset + entry.length // 2])  # truncated mid-plan
    with pytest.raises(flexnnd.PlanError, match=rf"{re.escape(str(path))} is corrupt.*re-import"):
        read_plan(path, entry, graph)
    path.unlink()
    with pytest.raises(flexnnd.PlanError, match=rf"{re.escape(str(path))}: no plans"):
        read_plan(path, entry, graph)
    path.mkdir()  # not a file at all
    with pytest.raises(flexnnd.PlanError, match=rf"{re.escape(str(path))} is unreadable"):
        read_plan(path, entry, graph)


def test_an_index_that_does_not_match_its_plans_is_corrupt(tmp_path, graph, plans):
    from flexnnd.planner.plan_file import read_index, read_plan

    path = tmp_path / "plans.json"
    write_plans(path, plans, graph, SHA)
    text = path.read_text()
    head, body = text.split('"plans": [', 1)
    path.write_text(head + '"plans": [' + body.replace("\n", "\n  "))  # valid JSON; the plans moved
    (entry, _) = read_index(path, SHA)
    with pytest.raises(flexnnd.PlanError, match=r"corrupt.*re-import"):
        read_plan(path, entry, graph)
    path.write_text(json.dumps(json.loads(text)))  # one line: no index to find
    with pytest.raises(flexnnd.PlanError, match=r"corrupt.*re-import"):
        read_index(path, SHA)


def test_a_stale_ladder_is_planned_again(tmp_path, graph, plans, caplog):
    from types import SimpleNamespace

    from flexnnd.errors import StalePlanFile
    from flexnnd.planner.ladder import LADDER_FILE, stored_ladder, stored_rungs

    path = tmp_path / LADDER_FILE
    write_plans(path, plans, graph, SHA)
    path.write_text(path.read_text().replace(f'"version": {PLAN_VERSION}', '"version": 1', 1))
    with pytest.raises(
        StalePlanFile, match=rf"plan format version 1, this flexnn reads {PLAN_VERSION}.*re-import"
    ):
        read_plans(path, graph, SHA)
    package = SimpleNamespace(path=tmp_path, graph=graph, weights_sha256=SHA)
    assert stored_ladder(package) is None and stored_rungs(package) is None
    assert "planning it again" in caplog.text


def test_rungs_that_share_a_plan_share_its_text(tmp_path, graph, plans):
    """Three rungs, two budgets of one plan: the file holds two plans, the index three rungs, and
    each rung reads back with its own budget."""
    from flexnnd.planner.plan_file import read_index, read_plan

    streamed = plans[1]
    rungs = [
        dataclasses.replace(streamed, budget=streamed.arena_bytes),
        dataclasses.replace(streamed, budget=streamed.arena_bytes + 4096),
        dataclasses.replace(plans[0], budget=plans[0].arena_bytes),
    ]
    path = tmp_path / "plans.json"
    write_plans(path, rungs, graph, SHA)
    assert len(json.loads(path.read_text())["plans"]) == 2
    entries = read_index(path, SHA)
    assert [e.budget for e in entries] == [r.budget for r in rungs]
    assert entries[0].offset == entries[1].offset != entries[2].offset
    assert [read_plan(path, e, graph) for e in entries] == rungs
    assert read_plans(path, graph, SHA) == rungs


def test_part_axes_and_cost_kinds_are_enums_and_files_hold_their_values(tmp_path, graph):
    from flexnnd.ops.base import Axis, CostKind
    from flexnnd.planner.plan_budget import smallest_plan
    from flexnnd.planner.profile import step_costs

    plan = smallest_plan(graph)
    assert {s.part.axis for s in plan.steps if s.part is not None} == {Axis.CHANNELS}
    path = tmp_path / "plans.json"
    write_plans(path, [plan], graph, SHA)
    assert '["channels", ' in path.read_text() and "Axis" not in path.read_text()
    (again,) = read_plans(path, graph, SHA)
    assert all(type(s.part.axis) is Axis for s in again.steps if s.part is not None)
    assert {type(c.kind) for c in step_costs(graph)} == {CostKind}
