"""The ONNX importer fuzzer, run as `python -m tests.graph.hostile_fuzz N` in a child process.

The child caps its own address space (RLIMIT_AS) a fixed amount above what it holds after its
imports, so an allocation the importer failed to bound ends this child with MemoryError instead of
taking the machine down. It prints one JSON line: the number of cases and how each ended.
"""

from __future__ import annotations

import collections
import json
import resource
import sys

import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexnnd.errors import ModelImportError
from flexnnd.graph.limits import ImportLimits
from flexnnd.graph.onnx_import import import_onnx, parse_onnx
from flexnnd.ops import registered_ops
from tests.graph.hostile_models import small_model

# Small caps so that everything the importer is allowed to allocate fits well inside RLIMIT_AS.
LIMITS = ImportLimits(max_tensor_bytes=16 << 20, max_total_bytes=64 << 20)
HEADROOM = 1 << 30  # address space the child may grow by: 16x the constants the limits allow
EXTREMES = [-(2**63), -(2**31), -1, 0, 1, 2, 3, 7, 64, 2**16, 2**31 - 1, 2**32, 2**40, 2**62, 2**63 - 1]
SEED_BYTES = small_model().SerializeToString()
OP_TYPES = sorted(
    {*registered_ops(), "Shape", "Gather", "Concat", "ConstantOfShape", "Expand", "Range", "Loop"}
)
outcomes: collections.Counter[str] = collections.Counter()


def vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def check(data: bytes) -> None:
    """Import `data`: a ModelImportError or a graph within the limits; anything else fails the fuzzer."""
    try:
        model = parse_onnx(data, "fuzzed")
        graph, consts = import_onnx(model, limits=LIMITS)
    except ModelImportError as e:
        outcomes[type(e).__name__] += 1
        return
    for info in graph.tensors.values():
        assert all(d > 0 for d in info.shape), info
        assert info.nbytes <= LIMITS.max_tensor_bytes, info
    assert sum(v.nbytes for v in consts.values()) <= LIMITS.max_total_bytes
    outcomes["imported"] += 1


byte_edits = st.lists(
    st.tuples(
        st.integers(0, len(SEED_BYTES) - 1), st.sampled_from(["set", "insert", "delete"]), st.integers(0, 255)
    ),
    min_size=1,
    max_size=8,
)


def fuzz_bytes(edits) -> None:
    data = bytearray(SEED_BYTES)
    for pos, kind, value in edits:
        pos %= max(len(data), 1)
        if kind == "set":
            data[pos] = value
        elif kind == "insert":
            data.insert(pos, value)
        else:
            del data[pos]
    check(bytes(data))


def mutate(model: onnx.ModelProto, draw) -> None:
    """One structural edit of the kinds a hostile or broken exporter produces."""
    g = model.graph
    names = sorted(
        {n for node in g.node for n in [*node.input, *node.output]} | {i.name for i in g.initializer}
    )
    kind = draw(
        st.sampled_from(
            [
                "dim",
                "input_dim",
                "attr",
                "rename_in",
                "rename_out",
                "drop",
                "dup",
                "swap",
                "op",
                "dtype",
                "raw",
                "opset",
            ]
        )
    )
    extreme = st.sampled_from(EXTREMES)
    if kind == "dim" and g.initializer:
        init = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        if init.dims:
            init.dims[draw(st.integers(0, len(init.dims) - 1))] = draw(extreme)
        else:
            init.dims.append(draw(extreme))
    elif kind == "input_dim":
        dims = g.input[0].type.tensor_type.shape.dim
        dims[draw(st.integers(0, len(dims) - 1))].dim_value = draw(extreme)
    elif kind == "attr" and g.node:
        node = g.node[draw(st.integers(0, len(g.node) - 1))]
        ints = [a for a in node.attribute if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)]
        if ints:
            attr = ints[draw(st.integers(0, len(ints) - 1))]
            if attr.type == onnx.AttributeProto.INT:
                attr.i = draw(extreme)
            else:
                attr.ints[draw(st.integers(0, len(attr.ints) - 1))] = draw(extreme)
    elif kind in ("rename_in", "rename_out") and g.node:
        node = g.node[draw(st.integers(0, len(g.node) - 1))]
        field = node.input if kind == "rename_in" else node.output
        if field:
            field[draw(st.integers(0, len(field) - 1))] = draw(st.sampled_from([*names, "", "ghost"]))
    elif kind == "drop" and g.node:
        del g.node[draw(st.integers(0, len(g.node) - 1))]
    elif kind == "dup" and g.node:
        g.node.append(g.node[draw(st.integers(0, len(g.node) - 1))])
    elif kind == "swap" and len(g.node) > 1:
        i, j = draw(st.integers(0, len(g.node) - 1)), draw(st.integers(0, len(g.node) - 1))
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(g.node[i])
        b.CopyFrom(g.node[j])
        g.node[i].CopyFrom(b)
        g.node[j].CopyFrom(a)
    elif kind == "op" and g.node:
        g.node[draw(st.integers(0, len(g.node) - 1))].op_type = draw(st.sampled_from(OP_TYPES))
    elif kind == "dtype" and g.initializer:
        g.initializer[draw(st.integers(0, len(g.initializer) - 1))].data_type = draw(st.integers(0, 25))
    elif kind == "raw" and g.initializer:
        init = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        init.raw_data = init.raw_data[: draw(st.integers(0, len(init.raw_data)))]
    elif kind == "opset":
        model.opset_import[0].version = draw(st.sampled_from([1, 6, 7, 11, 13, 17, 21, 28, 29, 2**40]))


def fuzz_fields(data) -> None:
    model = small_model()
    for _ in range(data.draw(st.integers(1, 3))):
        mutate(model, data.draw)
    check(model.SerializeToString())


def main(examples: int) -> None:
    limit = vm_size() + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # derandomize: the same cases on every run, so CI is stable and a failure reproduces.
    fixed = settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    fixed(given(byte_edits)(fuzz_bytes))()
    fixed(given(st.data())(fuzz_fields))()
    print(json.dumps({"cases": sum(outcomes.values()), "outcomes": dict(outcomes), "rlimit_as": limit}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
