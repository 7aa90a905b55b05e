"""An ONNX file's structure read without its weights (flexnnctl check, the importer's first look)."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import helper

import flexnnd
from flexnnd.graph.check import check_model
from flexnnd.graph.onnx_import import import_to_package
from flexnnd.graph.onnx_scan import scan_onnx
from tests.conftest import make_model, save
from tests.daemon.harness import ROOT

BIG = 64 << 20


def big_model(ops=("Relu",)):
    """x -> MatMul with a 64 MiB weight -> the given ops in a chain."""
    w = np.ones((4096, BIG // 4 // 4096), dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h0"], name="mm")]
    for i, op in enumerate(ops):
        nodes.append(helper.make_node(op, [f"h{i}"], [f"h{i + 1}"], name=f"n{i}_{op}"))
    return make_model(nodes, [("x", [1, 4096])], [(f"h{len(ops)}", None)], [("w", w)], name="big")


def traced_peak(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_scan_reads_what_onnx_load_reads_but_the_tensor_bytes(zoo_model):
    path = zoo_model("resnet18")
    model = onnx.load(str(path))
    scan = scan_onnx(path)
    assert scan.opset == model.opset_import[0].version and scan.ir_version == model.ir_version
    assert scan.graph_name == model.graph.name
    assert [n.SerializeToString() for n in scan.nodes] == [n.SerializeToString() for n in model.graph.node]
    assert [v.name for v in scan.inputs] == [v.name for v in model.graph.input]
    assert [v.name for v in scan.outputs] == [v.name for v in model.graph.output]
    assert {k: (v.data_type, v.dims) for k, v in scan.initializers.items()} == {
        t.name: (t.data_type, tuple(t.dims)) for t in model.graph.initializer
    }


def test_scan_never_holds_the_weights(tmp_path):
    path = save(big_model(), tmp_path / "big.onnx")
    peak = traced_peak(lambda: scan_onnx(path))
    assert peak < 1 << 20, f"scanning a {BIG:,}-byte model allocated {peak:,} bytes at peak"


def test_unknown_ops_are_refused_before_any_weight_is_read(tmp_path):
    path = save(big_model(("Relu", "Frobnicate", "Relu", "Quux")), tmp_path / "big.onnx")
    caught = []

    def attempt():
        with pytest.raises(flexnnd.UnsupportedOps) as e:
            import_to_package(path, tmp_path / "pkg")
        caught.append(e.value)

    peak = traced_peak(attempt)
    assert peak < 4 << 20, f"refusing a {BIG:,}-byte model allocated {peak:,} bytes at peak"
    assert [(r.op_type, r.node) for r in caught[0].refusals] == [
        ("Frobnicate", "n1_Frobnicate"),
        ("Quux", "n3_Quux"),
    ]
    assert not (tmp_path / "pkg").exists()


def test_a_truncated_file_is_a_format_error(tmp_path):
    data = big_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(flexnnd.ModelFormatError, match=r"runs past|truncated"):
        scan_onnx(path)


def test_check_reports_ops_inputs_and_refusals(tmp_path):
    model = big_model(("Relu", "Frobnicate"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    report = check_model(save(model, tmp_path / "m.onnx"))
    assert report["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4096]}]
    assert report["initializer_bytes"] == BIG
    by_op = {op["op"]: op for op in report["ops"]}
    assert by_op["MatMul"]["status"] == "supported" and by_op["Frobnicate"]["status"] == "refused"
    assert report["refused"] == [
        {"node": "n1_Frobnicate", "op": "Frobnicate", "reason": "not an op flexnn has"}
    ]


def ctl(*args):
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'clients'}", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "flexnn_client.ctl", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )


def test_flexnnctl_check_prints_and_fails_on_refused_nodes(tmp_path):
    good = save(big_model(("Relu",)), tmp_path / "good.onnx")
    bad = save(big_model(("Frobnicate", "Relu", "Frobnicate")), tmp_path / "bad.onnx")
    out = ctl("check", str(good))
    assert out.returncode == 0, out.stderr
    assert "MatMul" in out.stdout and "no node refused" in out.stdout
    out = ctl("check", str(bad))
    assert out.returncode == 1
    assert "2 nodes cannot run:" in out.stdout and "n2_Frobnicate (Frobnicate)" in out.stdout
    report = json.loads(ctl("check", "--json", str(bad)).stdout)
    assert [r["node"] for r in report["refused"]] == ["n0_Frobnicate", "n2_Frobnicate"]


def test_the_check_before_weights_accepts_what_each_op_takes_at_its_opset():
    # Split's sizes are an attribute before opset 13 and an input since: only the later is refused.
    from flexnnd.graph.onnx_import import refusals_before_weights

    split = helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 2], name="s")
    assert refusals_before_weights([split], 11) == []
    (refusal,) = refusals_before_weights([split], 13)
    assert "['split'] not supported" in refusal.why


def test_a_node_bigger_than_a_mebibyte_is_scanned(tmp_path):
    """A Constant node holding a 4 MiB tensor (as PaddleOCR's recognizer has) is a valid node."""
    table = np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024)
    nodes = [
        helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(table), name="table"),
        helper.make_node("Add", ["x", "c"], ["y"], name="add"),
    ]
    path = save(make_model(nodes, [("x", [1024, 1024])], [("y", None)], name="bignode"), tmp_path / "m.onnx")
    scan = scan_onnx(path)
    assert [n.op_type for n in scan.nodes] == ["Constant", "Add"]
    assert scan.nodes[0].attribute[0].t.dims == [1024, 1024]
