"""The plan verifier, run on every plan built, written or read.

It checks what makes a plan safe to execute, not whether it is good: live regions never overlap,
nothing leaves the arena, every region a step touches is reserved at that step, each streamed
piece's region is reserved from the moment its load may start until its last reader ends, loads
are released before their step and issued in file order, every weight piece is either
resident or streamed, exactly once, and the parts of a node that share an operand in their scratch
run one after another, in order, from the first (see operand_reuse).
"""

from __future__ import annotations

from collections import Counter

from flexnnd.errors import PlanError
from flexnnd.graph.ir import Graph, Node, rows_of
from flexnnd.planner.plan import Plan, Step, check_no_overlap, piece_nbytes, scratch_name


def operand_reuse(plan: Plan, graph: Graph) -> tuple[bool, ...]:
    """Per step, whether it reuses the operand its node's previous part left in their scratch (a
    conv's channel parts share its im2col: Op.shares_operand): every such part but the first.

    A fact of the plan derived from its steps, not stored in it (the plan file stays as it was):
    verify() checks that such parts run back to back from the first, with one scratch region
    reserved for all, and the executor passes it to each part's bind().
    """
    nodes = {n.name: n for n in graph.nodes}
    return tuple(_reuses(nodes[step.node], step) for step in plan.steps)


def _reuses(node: Node, step: Step) -> bool:
    return step.part is not None and step.part.start > 0 and node.op.shares_operand(node.in_shapes, step.part)


def verify(plan: Plan, graph: Graph) -> None:
    check_no_overlap(plan)
    nodes = {n.name: n for n in graph.nodes}
    n_steps = len(plan.steps)

    def reserved(name: str, step: int, what: str) -> None:
        region = plan.region.get(name)
        if region is None:
            raise PlanError(
                f"step {step} ({plan.steps[step].label}) uses {what} {name!r}, which has no region"
            )
        if not region.first <= step <= region.last:
            raise PlanError(
                f"step {step} ({plan.steps[step].label}) uses {what} {name!r}, but its region is reserved "
                f"only for steps {region.first}-{region.last}"
            )

    for i, step in enumerate(plan.steps):
        node = nodes.get(step.node)
        if node is None:
            raise PlanError(f"step {i} names node {step.node!r}, which the graph does not have")
        constants = [x for x in node.inputs if x and graph.is_constant(x)]
        if len(constants) != len(step.weights):
            raise PlanError(
                f"step {i} ({step.label}) binds {len(step.weights)} pieces to {len(constants)} weights"
            )
        for tensor, piece_name in zip(constants, step.weights, strict=True):
            piece = plan.pieces.get(piece_name)
            if piece is None or piece.tensor != tensor:
                raise PlanError(f"step {i} ({step.label}) binds piece {piece_name!r} to weight {tensor!r}")
            reserved(piece_name, i, "weight piece")
        for name in (*node.reads, *node.outputs):  # reads: inputs and a guard's conditions
            if name and not graph.is_constant(name):
                reserved(plan.aliases.get(name, name), i, "tensor")
        if scratch_name(node.name) in plan.region:
            reserved(scratch_name(node.name), i, "scratch")
        if _reuses(node, step):
            before = plan.steps[i - 1] if i else None
            if (
                before is None
                or before.node != step.node
                or before.part is None
                or before.part.stop != step.part.start
            ):
                raise PlanError(
                    f"step {i} ({step.label}) reuses the operand the previous part of {step.node!r} left in "
                    f"its scratch, but the step before is {before and before.label}: such parts must run "
                    "back to back, in order"
                )
            reserved(scratch_name(node.name), i - 1, "scratch")  # one region for both parts
            reserved(scratch_name(node.name), i - 1, "scratch")  # one region for both, kept between

    for piece in plan.pieces.values():
        rows = rows_of(graph.tensors[piece.tensor].shape)
        if not 0 <= piece.start < piece.stop <= rows:
            raise PlanError(
                f"piece {piece.name!r} covers rows {piece.start}:{piece.stop} of a weight with {rows} rows"
            )
        region = plan.region.get(piece.name)
        if region is not None and region.nbytes < piece_nbytes(graph, piece):
            raise PlanError(
                f"piece {piece.name!r} has {piece_nbytes(graph, piece)} bytes but a {region.nbytes}-byte region"
            )
    for name, info in graph.tensors.items():
        region = plan.region.get(name)
        if not graph.is_constant(name) and region is not None and region.nbytes < info.nbytes:
            raise PlanError(f"tensor {name!r} has {info.nbytes} bytes but a {region.nbytes}-byte region")

    streamed = [load.piece for load in plan.loads]
    both = set(streamed) & set(plan.resident)
    twice = {p for p, n in Counter(streamed).items() if n > 1}
    if both or twice:
        raise PlanError(
            f"pieces both resident and streamed {sorted(both)}, or streamed twice {sorted(twice)}"
        )
    missing = set(plan.pieces) - set(streamed) - set(plan.resident)
    if missing:
        raise PlanError(f"pieces neither resident nor streamed: {sorted(missing)[:5]}")
    for name in plan.resident:
        region = plan.region[name]
        if region.first > 0 or region.last < n_steps - 1:
            raise PlanError(
                f"resident piece {name!r} is reserved only for steps {region.first}-{region.last} of 0-{n_steps - 1}"
            )

    first_reader: dict[str, int] = {}
    for i, step in enumerate(plan.steps):
        for piece_name in step.weights:
            first_reader.setdefault(piece_name, i)
    position = {name: i for i, name in enumerate(graph.constants)}
    previous: tuple[int, int, int] | None = None  # (file position, rows start, after_step)
    for load in plan.loads:
        region = plan.region[load.piece]
        if not -1 <= load.after_step < load.step < n_steps:
            raise PlanError(
                f"load of {load.piece!r} is released after step {load.after_step}, not before its step {load.step}"
            )
        if region.first > load.after_step + 1 or region.last < load.step:
            raise PlanError(
                f"load of {load.piece!r} may write from step {load.after_step + 1} until step {load.step}, but its "
                f"region is reserved only for steps {region.first}-{region.last}"
            )
        reader = first_reader.get(load.piece)
        if reader != load.step:
            raise PlanError(
                f"load of {load.piece!r} names step {load.step}, but "
                + ("no step reads it" if reader is None else f"step {reader} reads it first")
            )
        piece = plan.pieces[load.piece]
        here = (position[piece.tensor], piece.start, load.after_step)
        if previous is not None and (here[:2] <= previous[:2] or here[2] < previous[2]):
            raise PlanError(
                f"load of {load.piece!r} is out of file order (weights must stream in the order they are stored)"
            )
        previous = here
