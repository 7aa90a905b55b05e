"""The truncation sweep over graphs with issue 17's ops and element types: an int64 input through
Gather, Where, Cast and Expand; an LSTM; a QDQ int8 conv; Resize (linear by scales, nearest by sizes).

Every cut of each file, byte by byte, is a clear import error (a ModelImportError) or, at full
length, the whole model (or, cut before trailing graph outputs, the model answering fewer). Cut as
written, a file loses its opsets (written after the graph); written element by element behind its
header, cuts between elements reach the graph's and the ops' checks. The sweep runs in a child process under RLIMIT_AS with warnings as errors
(`python -m tests.graph.test_truncation_dtypes`), so an allocation the importer failed to bound
ends it with MemoryError rather than taking the machine down; the parent waits with a timeout.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from flexnnd.errors import ModelImportError
from flexnnd.graph.limits import ImportLimits
from flexnnd.graph.onnx_import import import_onnx, parse_onnx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIMITS = ImportLimits(max_tensor_bytes=16 << 20, max_total_bytes=64 << 20)
HEADROOM = 1 << 30  # address space the child may grow by: 16x the constants LIMITS allow
RNG = np.random.default_rng(17)
n = helper.make_node


def _model(nodes, inputs, inits, outputs=("y",), opset=17):
    graph = helper.make_graph(
        nodes,
        "truncated",
        [helper.make_tensor_value_info(name, t, s) for name, t, s in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def int64_indexing():
    """int64 ids -> Gather rows of a table; Where(ids > 7, rows, Expand(Cast(ids))) -> float."""
    nodes = [
        n("Gather", ["table", "ids"], ["rows"]),
        n("Greater", ["ids", "seven"], ["big"]),
        n("Unsqueeze", ["big", "axis2"], ["big3"]),
        n("Cast", ["ids"], ["idf"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["idf", "axis2"], ["idf3"]),
        n("Expand", ["idf3", "shape"], ["wide"]),
        n("Where", ["big3", "rows", "wide"], ["y"]),
    ]
    inits = {
        "table": RNG.standard_normal((16, 4)).astype(np.float32),
        "seven": np.array(7, np.int64),
        "axis2": np.array([2], np.int64),
        "shape": np.array([2, 5, 4], np.int64),
    }
    feeds = {"ids": RNG.integers(0, 16, (2, 5), dtype=np.int64)}
    return _model(nodes, [("ids", TensorProto.INT64, [2, 5])], inits), feeds


def lstm():
    """A bidirectional LSTM over [T 6, N 2, I 3] with hidden 4, its three outputs."""
    hidden = 4
    inits = {
        "W": RNG.standard_normal((2, 4 * hidden, 3)).astype(np.float32) / 3,
        "R": RNG.standard_normal((2, 4 * hidden, hidden)).astype(np.float32) / 3,
        "B": RNG.standard_normal((2, 8 * hidden)).astype(np.float32) / 3,
    }
    nodes = [
        n("LSTM", ["x", "W", "R", "B"], ["y", "yh", "yc"], hidden_size=hidden, direction="bidirectional")
    ]
    feeds = {"x": RNG.standard_normal((6, 2, 3)).astype(np.float32)}
    return _model(nodes, [("x", TensorProto.FLOAT, [6, 2, 3])], inits, ("y", "yh", "yc"), opset=14), feeds


def qdq_conv():
    """x -> QuantizeLinear/DequantizeLinear (uint8) -> Conv with DequantizeLinear'd int8 weights."""
    inits = {
        "s": np.array(0.05, np.float32),
        "z": np.array(128, np.uint8),
        "w": RNG.integers(-127, 128, (4, 3, 3, 3), dtype=np.int8),
        "ws": np.full(4, 0.01, np.float32),
        "wz": np.zeros(4, np.int8),
    }
    nodes = [
        n("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        n("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        n("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0),
        n("Conv", ["xd", "wf"], ["y"], pads=[1, 1, 1, 1]),
    ]
    feeds = {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    return _model(nodes, [("x", TensorProto.FLOAT, [1, 3, 8, 8])], inits, opset=13), feeds


def resize():
    """Linear 2x Resize by scales, then nearest Resize to fixed sizes."""
    inits = {
        "scales": np.array([1, 1, 2, 2], np.float32),
        "sizes": np.array([1, 2, 7, 9], np.int64),
    }
    nodes = [
        n("Resize", ["x", "", "scales"], ["up"], mode="linear"),
        n(
            "Resize",
            ["up", "", "", "sizes"],
            ["y"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
        ),
    ]
    feeds = {"x": RNG.standard_normal((1, 2, 5, 6)).astype(np.float32)}
    return _model(nodes, [("x", TensorProto.FLOAT, [1, 2, 5, 6])], inits, opset=13), feeds


MODELS = {"int64_indexing": int64_indexing, "lstm": lstm, "qdq_conv": qdq_conv, "resize": resize}
ORDERS = {
    "as written": (),
    "nodes first": ("input", "node", "initializer", "output"),
    "initializers first": ("output", "initializer", "input", "node"),
}


def _shapes(graph):
    return sorted((t.name, t.shape, t.dtype) for t in graph.tensors.values())


def piecewise(model: onnx.ModelProto, order: tuple[str, ...]) -> bytes:
    """The model's bytes with its header (IR version, opsets) first, then the graph one element at a
    time, each as its own `graph` field, in `order` of the graph's fields. Protobuf merges repeated
    message fields, so the whole file is the same model; but a cut between two elements parses, into
    a graph missing the rest. As written, the opsets follow the graph and every cut loses them."""
    header = onnx.ModelProto()
    header.CopyFrom(model)
    header.ClearField("graph")
    pieces = [
        header.SerializeToString(),
        onnx.ModelProto(graph=onnx.GraphProto(name=model.graph.name)).SerializeToString(),
    ]
    for field in order:
        for element in getattr(model.graph, field):
            piece = onnx.ModelProto()
            getattr(piece.graph, field).add().CopyFrom(element)
            pieces.append(piece.SerializeToString())
    return b"".join(pieces)


def sweep(name: str, order: str) -> dict[str, int]:
    """Every cut of the model's bytes imported; the outcomes counted by error class."""
    model = MODELS[name]()[0]
    data = model.SerializeToString() if order == "as written" else piecewise(model, ORDERS[order])
    assert parse_onnx(data) == model, order
    whole, _ = import_onnx(parse_onnx(data), limits=LIMITS)
    outcomes: collections.Counter[str] = collections.Counter()
    for cut in range(len(data) + 1):
        try:
            graph, _ = import_onnx(parse_onnx(data[:cut], f"{name} cut at {cut}"), limits=LIMITS)
        except ModelImportError as e:
            outcomes[type(e).__name__] += 1
            continue
        # Only a cut that leaves out trailing graph outputs parses into a valid model: the same one,
        # answering fewer outputs.
        assert _shapes(graph) == _shapes(whole), f"{name}: cut at {cut} of {len(data)} imported another graph"
        assert graph.outputs == whole.outputs[: len(graph.outputs)], f"{name}: cut at {cut}"
        outcomes["imported"] += 1
    return {"bytes": len(data), **outcomes}


def main() -> None:
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + HEADROOM, vm + HEADROOM))
    print(json.dumps({f"{name}, {order}": sweep(name, order) for name in MODELS for order in ORDERS}))


# ----- the tests -----------------------------------------------------------------------------------


def test_the_swept_models_import_whole_and_match_onnxruntime(tmp_path):
    """The sweep starts from models that work: each imports, runs and equals ONNX Runtime."""
    from tests.conftest import assert_model_matches_ort

    for name, build in MODELS.items():
        model, feeds = build()
        (tmp_path / name).mkdir()
        assert_model_matches_ort(model, feeds, tmp_path / name)


def test_every_truncation_is_an_import_error_in_bounded_memory():
    env = dict(
        os.environ,
        OPENBLAS_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "tests.graph.test_truncation_dtypes"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"truncations: {report}")
    for name, outcomes in report.items():
        cuts = outcomes.pop("bytes") + 1
        assert sum(outcomes.values()) == cuts, name
        assert 1 <= outcomes.get("imported", 0) <= 3, (name, outcomes)  # the whole, or fewer outputs
        assert outcomes.get("ModelFormatError", 0) > 0, (name, outcomes)
    for name in MODELS:  # cuts between elements reach the graph's and the ops' checks
        deeper = {kind for key, o in report.items() if key.startswith(f"{name}, ") for kind in o}
        assert deeper - {"ModelFormatError", "imported"}, (name, report)


if __name__ == "__main__":
    main()
