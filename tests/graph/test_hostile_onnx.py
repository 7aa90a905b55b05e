"""Hostile ONNX files: every one is a clear ModelImportError (or a correct import), in bounded memory.

Declared sizes here are absurd (2**40 bytes and more) or checked against small limits: if a check
were missing, numpy would refuse the allocation at once (MemoryError) rather than fill the machine.
The fuzzer runs in a child process under RLIMIT_AS.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import flexnnd
from flexnnd.errors import (
    ExternalDataError,
    MalformedGraph,
    ModelFormatError,
    ModelImportError,
    ShapeError,
    TensorTooLarge,
)
from flexnnd.graph import passes
from flexnnd.graph.ir import Node
from flexnnd.graph.limits import ImportLimits
from flexnnd.graph.onnx_import import import_onnx, load_onnx, parse_onnx
from flexnnd.ops import op_class
from tests.conftest import assert_close_to_reference, make_model, ort_run, save
from tests.graph.hostile_models import add_model, relu_model, small_model, tensor

ROOT = Path(__file__).resolve().parents[2]
TINY = ImportLimits(max_tensor_bytes=1 << 20, max_total_bytes=4 << 20)
FUZZ_EXAMPLES = 2000  # per strategy (bytes, fields): 4000 fuzzed models


def shapes(graph):
    return {n: i.shape for n, i in graph.tensors.items()}


# ----- declared sizes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dims, error, words",
    [
        ((1 << 20, 1 << 20), TensorTooLarge, "4,398,046,511,104 bytes"),
        ((1 << 62, 1 << 62, 1 << 62), TensorTooLarge, "above the limit"),  # overflows int64: Python ints
        ((4, -3), ShapeError, "dimension 1 is -3"),
        ((1,) * 100, ShapeError, "100 dimensions"),
    ],
)
def test_initializer_with_absurd_dims_is_refused_before_allocation(dims, error, words):
    model = relu_model([tensor("huge", dims)], [helper.make_node("Relu", ["huge"], ["unused"], name="r0")])
    with pytest.raises(error, match=words) as info:
        import_onnx(model)
    assert "'huge'" in str(info.value)


def test_raw_data_that_does_not_match_the_dims_is_refused():
    model = relu_model([tensor("w", (4, 4), raw=b"\0" * 60)])
    with pytest.raises(ModelFormatError, match=r"initializer 'w'.*60 bytes.*needs 64"):
        import_onnx(model)


def test_typed_data_with_the_wrong_count_is_refused():
    t = tensor("w", (3,))
    t.float_data.extend([1.0, 2.0])
    with pytest.raises(ModelFormatError, match=r"'w'.*float_data holds 2 values.*needs 3"):
        import_onnx(relu_model([t]))


def test_string_and_unknown_data_types_are_refused():
    for data_type, words in ((TensorProto.STRING, "STRING"), (99, "data type 99")):
        with pytest.raises(ModelFormatError, match=words):
            import_onnx(relu_model([tensor("w", (1,), data_type=data_type)]))


def test_constant_node_declaring_a_huge_tensor_is_refused():
    value = tensor("v", (1 << 30, 1 << 30))
    node = helper.make_node("Constant", [], ["c"], value=value, name="const")
    with pytest.raises(TensorTooLarge, match=r"node 'const' attribute 'value'"):
        import_onnx(relu_model(extra_nodes=[node]))


@pytest.mark.parametrize(
    "nodes, inits, where",
    [
        (
            [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="cos")],
            [("shape", [1 << 20, 1 << 20])],
            "cos",
        ),
        (
            [helper.make_node("Expand", ["one", "shape"], ["big"], name="expand")],
            [("shape", [1 << 21, 1 << 21])],
            "expand",
        ),
        ([helper.make_node("Range", ["start", "limit", "delta"], ["big"], name="range")], [], "range"),
        ([helper.make_node("Add", ["col", "row"], ["big"], name="outer")], [], "outer"),
    ],
)
def test_folding_that_would_grow_a_huge_constant_is_refused_before_it_runs(nodes, inits, where):
    values = {
        "one": np.ones(1, np.float32),
        "start": np.array(0, np.int64),
        "limit": np.array(1 << 45, np.int64),
        "delta": np.array(1, np.int64),
        "col": np.ones((1 << 18, 1), np.float32),  # 1 MiB each: their broadcast sum is 256 GiB
        "row": np.ones((1, 1 << 18), np.float32),
    }
    used = {n for node in nodes for n in node.input}
    consts = [(k, np.asarray(v, dtype=np.int64)) for k, v in inits] + [
        (k, v) for k, v in values.items() if k in used
    ]
    model = make_model(
        [*nodes, helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], [("y", None)], consts
    )
    with pytest.raises(TensorTooLarge, match=f"node '{where}'"):
        import_onnx(model)


def test_repeated_doubling_stops_at_the_total_limit():
    """Each Concat doubles a constant: the sizes stay under the per-tensor cap but not the total."""
    nodes = [
        helper.make_node("Concat", [f"c{i}", f"c{i}"], [f"c{i + 1}"], axis=0, name=f"double{i}")
        for i in range(12)
    ]
    model = make_model(
        [*nodes, helper.make_node("Relu", ["x"], ["y"])],
        [("x", [1, 4])],
        [("y", None)],
        [("c0", np.ones(1024, np.float32))],
    )
    limits = ImportLimits(max_tensor_bytes=16 << 20, max_total_bytes=8 << 20)
    with pytest.raises(TensorTooLarge, match=r"node 'double\d+'.*constants held during import"):
        import_onnx(model, limits=limits)


def test_huge_and_negative_input_dims_are_refused():
    for dims, error, words in (
        ([1, 3, 1 << 40, 1 << 40], TensorTooLarge, "input 'x'"),
        ([1, -5], ShapeError, "-5"),
        ([1, (1 << 63) - 1], TensorTooLarge, "input 'x'"),
    ):
        with pytest.raises(error, match=words):
            import_onnx(relu_model(input_shape=dims))


def test_an_inferred_activation_above_the_limit_is_refused():
    """Pads of 2**20 on a 3x3 Conv declare an output of 4 * 2**42 bytes; nothing is computed."""
    w = np.ones((4, 1, 3, 3), np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1 << 20] * 4, name="padded")
    model = make_model([node], [("x", [1, 1, 8, 8])], [("y", None)], [("w", w)])
    with pytest.raises(TensorTooLarge, match=r"node 'padded' \(Conv\) output 'y'"):
        import_onnx(model)
    with pytest.raises(TensorTooLarge, match="node 'padded'"):
        import_onnx(
            make_model(
                [helper.make_node("Conv", ["x", "w"], ["y"], pads=[400] * 4, name="padded")],
                [("x", [1, 1, 8, 8])],
                [("y", None)],
                [("w", w)],
            ),
            limits=TINY,
        )


def test_folding_an_op_on_constants_is_bounded_in_work(tmp_path):
    """A Conv on constant inputs is computed at import: within max_fold_flops, or an error naming it."""
    rng = np.random.default_rng(5)
    data = rng.standard_normal((1, 16, 32, 32)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["data", "w"], ["folded"], pads=[1, 1, 1, 1], name="const_conv"),
        helper.make_node("Add", ["x", "folded"], ["y"], name="add"),
    ]
    model = make_model(nodes, [("x", [1, 16, 32, 32])], [("y", None)], [("data", data), ("w", w)])
    with pytest.raises(
        ModelImportError, match=r"node 'const_conv' \(Conv\).*FLOPs to fold, above the limit of 1,000,000"
    ):
        import_onnx(model, limits=ImportLimits(max_fold_flops=10**6))
    graph, consts = import_onnx(model)
    assert [n.op_type for n in graph.nodes] == ["Add"]
    (folded,) = [consts[n] for n in graph.nodes[0].inputs if n in consts]
    want = ort_run(save(model, tmp_path / "m.onnx"), {"x": np.zeros((1, 16, 32, 32), np.float32)})[0]
    assert_close_to_reference(folded.reshape(want.shape), want)


# ----- graph structure -------------------------------------------------------------------------


def test_a_cycle_is_named():
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
        helper.make_node("Relu", ["b"], ["y"], name="out"),
    ]
    model = make_model(nodes, [("x", [1, 4])], [("y", None)])
    with pytest.raises(MalformedGraph, match=r"cycle: node '(first|second)' reads '(a|b)'"):
        import_onnx(model)


def test_a_self_loop_is_a_cycle():
    nodes = [helper.make_node("Add", ["x", "y"], ["y"], name="loop")]
    with pytest.raises(MalformedGraph, match="cycle: node 'loop' reads 'y'"):
        import_onnx(make_model(nodes, [("x", [1, 4])], [("y", None)]))


def test_a_missing_initializer_names_node_and_tensor():
    nodes = [helper.make_node("Conv", ["x", "weights"], ["y"], name="conv1")]
    model = make_model(nodes, [("x", [1, 3, 8, 8])], [("y", None)])
    with pytest.raises(MalformedGraph, match=r"node 'conv1' \(Conv\) reads 'weights'.*missing initializer"):
        import_onnx(model)


def test_a_tensor_produced_twice_is_refused():
    nodes = [
        helper.make_node("Relu", ["x"], ["y"], name="one"),
        helper.make_node("Sigmoid", ["x"], ["y"], name="two"),
    ]
    with pytest.raises(MalformedGraph, match="'y' is produced twice: by node 'one' and by node 'two'"):
        import_onnx(make_model(nodes, [("x", [1, 4])], [("y", None)]))


def test_a_node_overwriting_an_input_is_refused():
    nodes = [helper.make_node("Relu", ["x"], ["x"], name="clobber"), helper.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(MalformedGraph, match=r"node 'clobber' .*writes 'x'"):
        import_onnx(make_model(nodes, [("x", [1, 4])], [("y", None)]))


def test_an_unsorted_acyclic_graph_imports_like_the_sorted_one():
    model = small_model()
    want, want_consts = import_onnx(model)
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(model)
    nodes = list(shuffled.graph.node)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(reversed(nodes))
    got, got_consts = import_onnx(shuffled)
    assert [n.op_type for n in got.nodes] == [n.op_type for n in want.nodes]
    assert shapes(got) == shapes(want)
    for name in want_consts:
        np.testing.assert_array_equal(got_consts[name], want_consts[name])


def test_nodes_that_share_one_name_still_compute_the_model(tmp_path):
    """Passes key nodes by name: the nodes here share names, and the outputs still match ONNX Runtime."""
    rng = np.random.default_rng(9)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="dup_2"
        ),  # what "dup" #2 became
        helper.make_node("Relu", ["c1"], ["r1"], name="dup"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="dup"),
        helper.make_node("Sigmoid", ["c2"], ["s2"], name="dup"),
        helper.make_node("Add", ["s2", "r1"], ["y"], name="dup"),
    ]
    model = make_model(nodes, [("x", [1, 3, 8, 8])], [("y", None)], [("w1", w1), ("w2", w2)])
    graph, _ = import_onnx(model)
    assert len({n.name for n in graph.nodes}) == len(graph.nodes)
    path = save(model, tmp_path / "m.onnx")
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    with flexnnd.Session(path, cache_dir=tmp_path / "c") as sess:
        got = sess.run({"x": x})["y"]
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"  # ONNX Runtime refuses duplicate names: the reference gets unique ones
    assert_close_to_reference(got, ort_run(save(model, tmp_path / "unique.onnx"), {"x": x})[0])


def test_a_chain_of_identities_is_removed_in_linear_work():
    """Counted comparisons of tensor names, not time: the quadratic version made ~n**2 of them."""
    compared = [0]

    class Name(str):
        __hash__ = str.__hash__

        def __eq__(self, other):
            compared[0] += 1
            return str.__eq__(self, other)

    n = 2000
    relu = op_class("Relu")()
    identity = op_class("Identity")()
    nodes = [Node("relu", relu, (Name("x"),), (Name("t0"),))]
    nodes += [Node(f"id{i}", identity, (Name(f"t{i}"),), (Name(f"t{i + 1}"),)) for i in range(n)]
    nodes += [Node("last", relu, (Name(f"t{n}"),), (Name("y"),))]
    draft = passes.Draft(nodes, {}, {}, ["x"], ["y"])
    passes.remove_identities(draft)
    assert [(node.name, node.inputs, node.outputs) for node in draft.nodes] == [
        ("relu", ("x",), ("t0",)),
        ("last", ("t0",), ("y",)),
    ]
    assert compared[0] < 20 * n, f"{compared[0]:,} name comparisons for {n} identities"


def test_a_long_identity_chain_imports():
    n = 20_000
    nodes = [helper.make_node("Identity", [f"t{i}"], [f"t{i + 1}"]) for i in range(n)]
    model = make_model(
        [helper.make_node("Relu", ["x"], ["t0"]), *nodes, helper.make_node("Sigmoid", [f"t{n}"], ["y"])],
        [("x", [1, 4])],
        [("y", None)],
    )
    graph, _ = import_onnx(model)
    assert [node.op_type for node in graph.nodes] == ["Relu", "Sigmoid"]


# ----- not ONNX, truncated -----------------------------------------------------------------------


GARBAGE = {
    "empty.onnx": b"",
    "png.onnx": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "text.onnx": b'{"graph": {"node": [1, 2, 3]}}\n',
    "zeros.onnx": b"\0" * 4096,
    "ones.onnx": b"\xff" * 4096,
    "deep.onnx": b"\x3a\x02" * 5000,  # a graph field nested in itself, thousands deep
    "varint.onnx": b"\x08" + b"\xff" * 64,
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_non_onnx_files_are_format_errors(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(GARBAGE[name])
    with pytest.raises(ModelFormatError, match=name):
        load_onnx(path)


def test_a_directory_or_missing_file_is_a_format_error(tmp_path):
    with pytest.raises(ModelFormatError, match="no such model file"):
        load_onnx(tmp_path)
    with pytest.raises(ModelFormatError, match="no such model file"):
        load_onnx(tmp_path / "nope.onnx")


def test_a_file_above_the_size_limit_is_not_read(tmp_path):
    path = save(small_model(), tmp_path / "m.onnx")
    with pytest.raises(ModelFormatError, match="above the limit of 1,000 bytes"):
        load_onnx(path, ImportLimits(max_file_bytes=1000))


def test_truncations_of_a_zoo_model_are_format_errors_or_the_whole_model(zoo_model):
    data = zoo_model("squeezenet1_1").read_bytes()
    whole, _ = import_onnx(parse_onnx(data))
    # Every byte of the head (header, nodes), then every k-th byte of the weights, and the last bytes.
    cuts = [*range(0, 4096), *range(4096, len(data), len(data) // 2000), *range(len(data) - 64, len(data))]
    outcomes = {}
    for cut in cuts:
        try:
            graph, _ = import_onnx(parse_onnx(data[:cut], f"cut at {cut}"))
            # Only a cut inside the trailing metadata leaves the graph whole.
            assert shapes(graph) == shapes(whole), cut
            outcome = "whole model"
        except ModelImportError as e:
            outcome = type(e).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(f"{len(cuts)} truncations: {outcomes}")
    assert outcomes["ModelFormatError"] > len(cuts) - 64
    assert set(outcomes) <= {"ModelFormatError", "whole model"}


def test_partial_graphs_of_a_zoo_model_are_import_errors(zoo_model):
    """Structured truncation: the first k nodes, or the first k initializers, of squeezenet."""
    model = onnx.load(str(zoo_model("squeezenet1_1")))
    full, _ = import_onnx(model)
    cases = 0
    for keep_nodes in range(len(model.graph.node)):
        partial = onnx.ModelProto()
        partial.CopyFrom(model)
        del partial.graph.node[keep_nodes:]
        with pytest.raises(ModelImportError, match=r"output|produced|reads"):
            import_onnx(partial)
        cases += 1
    for keep in range(len(model.graph.initializer)):
        partial = onnx.ModelProto()
        partial.CopyFrom(model)
        del partial.graph.initializer[keep:]
        with pytest.raises(MalformedGraph, match="missing initializer"):
            import_onnx(partial)
        cases += 1
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    cut.graph.initializer[-1].raw_data = cut.graph.initializer[-1].raw_data[:-1]
    with pytest.raises(ModelFormatError, match="raw_data holds"):
        import_onnx(cut)
    print(f"{cases + 1} partial squeezenet graphs ({len(full.nodes)} nodes when whole)")


# ----- external data -------------------------------------------------------------------------------


def external_model(folder: Path, location: str, offset=None, length=None, shape=(4,)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    t = tensor("c", shape)
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    if offset is not None:
        t.external_data.add(key="offset", value=str(offset))
    if length is not None:
        t.external_data.add(key="length", value=str(length))
    model = make_model(
        [helper.make_node("Add", ["x", "c"], ["y"], name="add")], [("x", list(shape))], [("y", None)]
    )
    model.graph.initializer.append(t)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())  # onnx.save would try to write the external data itself
    return path


def test_external_data_inside_the_folder_is_read(tmp_path):
    values = np.arange(4, dtype=np.float32)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(b"junk" + values.tobytes())
    graph, consts = import_onnx(load_onnx(external_model(tmp_path / "m", "weights.bin", offset=4, length=16)))
    (name,) = graph.constants
    np.testing.assert_array_equal(consts[name].reshape(-1), values)


@pytest.mark.parametrize(
    "location, offset, length, words",
    [
        ("/etc/hostname", None, None, "is absolute"),
        ("../secret.bin", None, None, "climbs out with '..'"),
        ("sub/../../secret.bin", None, None, "climbs out with '..'"),
        ("link.bin", None, None, "resolves to .*outside the model's folder"),
        ("missing.bin", None, None, "cannot open"),
        ("", None, None, "without a location"),
        ("w.bin", 0, 1 << 40, "does not fit the file of 16 bytes"),
        ("w.bin", 1 << 62, 16, "does not fit"),
        ("w.bin", -4, 16, "does not fit"),
        ("w.bin", 4, None, "length 12, but shape"),
        ("w.bin", 0, 8, "length 8, but shape"),
        ("w.bin", "zero", None, "not integers"),
        ("fifo", None, None, "not a regular file"),
        ("subdir", None, None, "not a regular file|cannot open"),
        ("w.bin\0x", None, None, "NUL byte"),
    ],
)
def test_hostile_external_data_is_refused(tmp_path, location, offset, length, words):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"s" * 16)
    (folder / "w.bin").write_bytes(b"w" * 16)
    (folder / "link.bin").symlink_to(tmp_path / "secret.bin")
    (folder / "subdir").mkdir()
    os.mkfifo(folder / "fifo")  # opened without O_NONBLOCK it would hang the import
    with pytest.raises(ExternalDataError, match=words):
        load_onnx(external_model(folder, location, offset, length))


def test_external_data_of_a_constant_node_is_confined_too(tmp_path):
    value = tensor("v", (4,))
    value.data_location = TensorProto.EXTERNAL
    value.external_data.add(key="location", value="../../etc/hostname")
    node = helper.make_node("Constant", [], ["c"], value=value, name="const")
    model = make_model([node, helper.make_node("Add", ["x", "c"], ["y"])], [("x", [4])], [("y", None)])
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(
        ExternalDataError, match=r"node 'const' attribute 'value'.*outside the model's folder"
    ):
        load_onnx(path)


def test_external_data_declaring_a_huge_tensor_is_refused_before_reading(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"w" * 16)
    with pytest.raises(TensorTooLarge, match="initializer 'c'"):
        load_onnx(external_model(tmp_path, "w.bin", shape=(1 << 40,)))


# ----- no code runs --------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates `marker`: proof that someone called pickle.loads on model bytes."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_payload_in_raw_data_is_just_bytes(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    payload += b"\0" * (-len(payload) % 4)
    const = np.frombuffer(payload, dtype=np.float32).copy()
    model = add_model(np.zeros_like(const))
    model.graph.initializer[0].raw_data = payload
    graph, consts = import_onnx(load_onnx(save(model, tmp_path / "m.onnx")))
    np.testing.assert_array_equal(
        consts[graph.constants[0]].reshape(-1).view(np.uint8), np.frombuffer(payload, np.uint8)
    )
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.pkl", "model.onnx", "model.npy", "model.txt", "model.json"])
def test_a_pickle_file_under_any_name_is_rejected_unexecuted(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelFormatError):
        load_onnx(path)
    assert not marker.exists()


def test_the_engine_never_unpickles_or_evaluates():
    """A static guard: model files are only ever parsed as protobuf or raw bytes."""
    forbidden = ("pickle.load", "eval(", "exec(", "allow_pickle=True", "marshal.load", "yaml.load(")

    def unsafe(line: str) -> bool:
        return any(word in line for word in forbidden) or (
            "np.load(" in line and "allow_pickle=False" not in line
        )

    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "flexnnd").rglob("*.py"))
        if "proto" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if unsafe(line)
    ]
    assert hits == []


# ----- the fuzzer ----------------------------------------------------------------------------------


def test_fuzzed_models_import_or_fail_cleanly_in_bounded_memory():
    """Byte and field mutations of a small model, in a child under RLIMIT_AS, warnings as errors."""
    env = dict(
        os.environ,
        OPENBLAS_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "tests.graph.hostile_fuzz", str(FUZZ_EXAMPLES)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"fuzzer: {report}")
    assert report["cases"] == 2 * FUZZ_EXAMPLES
    assert report["outcomes"].get("imported", 0) > 0  # the mutations are not all rejected at the door
    assert sum(report["outcomes"].values()) == report["cases"]
