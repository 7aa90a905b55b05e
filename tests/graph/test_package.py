"""The model package: layout on disk, round trip, and stale or corrupt packages refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

import flexnnd
from flexnnd.graph.package import MANIFEST, WEIGHTS, read_package
from flexnnd.weights_file import DIRECT_ALIGN, weight_offsets
from tests.conftest import save
from tests.graph.test_import import conv_bn_relu_model


@pytest.fixture
def package(tmp_path):
    path = save(conv_bn_relu_model(), tmp_path / "m.onnx")
    return flexnnd.import_model(path, tmp_path / "pkg")


def test_weights_are_aligned_in_execution_order_and_in_kernel_layout(package):
    pkg = read_package(package, verify=True)
    entries = [pkg.weights[name] for name in pkg.graph.constants]
    assert [e.offset for e in entries] == sorted(e.offset for e in entries)
    assert all(e.offset % DIRECT_ALIGN == 0 for e in entries)
    # The planner predicts which loads share a read from where the writer puts each weight.
    assert weight_offsets(pkg.graph) == {name: pkg.weights[name].offset for name in pkg.graph.constants}
    conv = pkg.graph.nodes[0]
    weight = pkg.read_weight(conv.inputs[1])
    assert weight.shape == pkg.graph.tensors[conv.inputs[1]].shape
    assert weight.dtype == np.float32


def test_round_trip_keeps_the_graph(package):
    pkg = read_package(package)
    again = read_package(package)
    assert pkg.graph.nodes == again.graph.nodes
    assert pkg.graph.tensors == again.graph.tensors


def test_stale_version_says_what_to_run(package):
    manifest = json.loads((package / MANIFEST).read_text())
    manifest["version"] = 0
    (package / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(flexnnd.PackageError, match=r"format version 0.*flexnnctl import"):
        read_package(package)


def test_corrupt_manifest(package):
    (package / MANIFEST).write_text("{ not json")
    with pytest.raises(flexnnd.PackageError, match=r"corrupt.*flexnnctl import"):
        read_package(package)


def test_not_a_package(tmp_path):
    with pytest.raises(flexnnd.PackageError, match="not a flexnn model package"):
        read_package(tmp_path)


def test_truncated_weights_file(package):
    weights = package / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(flexnnd.PackageError, match="the manifest says"):
        read_package(package)


def test_changed_weights_fail_the_checksum_and_the_load(package):
    weights = package / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(flexnnd.PackageError, match="checksum mismatch"):
        read_package(package, verify=True)
    with pytest.raises(flexnnd.LoadError, match="fails its checksum"):
        flexnnd.Session(package)


def test_reimport_replaces_the_package_atomically(tmp_path, package):
    before = read_package(package).weights_sha256
    flexnnd.import_model(tmp_path / "m.onnx", package)
    assert read_package(package).weights_sha256 == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "pkg"]


def _edit_manifest(package, edit):
    manifest = json.loads((package / MANIFEST).read_text())
    edit(manifest)
    (package / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda m: m["weights"]["tensors"][0].__setitem__(3, m["weights"]["size"]), "does not fit"),
        (lambda m: m["weights"]["tensors"][0].__setitem__(3, -4096), "does not fit"),
        (lambda m: m["weights"]["tensors"][0].__setitem__(4, 1 << 40), "does not fit"),
        (lambda m: m["weights"]["tensors"][0].__setitem__(1, [1 << 20, 1 << 20]), "does not fit"),
        (lambda m: m["weights"]["tensors"][0].__setitem__(2, "object"), "does not fit"),
        (lambda m: m["weights"]["tensors"][0].__setitem__(3, "0; rm -rf /"), "corrupt"),
    ],
    ids=["offset-past-end", "negative-offset", "huge-nbytes", "huge-shape", "object-dtype", "string-offset"],
)
def test_a_hostile_weight_index_is_refused_before_reading(package, edit, words):
    _edit_manifest(package, edit)
    with pytest.raises(flexnnd.PackageError, match=words):
        read_package(package)


def test_a_hostile_tensor_shape_or_dtype_in_the_graph_is_refused(package):
    def huge_activation(m):
        t = next(t for t in m["graph"]["tensors"] if t[0] not in {w[0] for w in m["weights"]["tensors"]})
        t[1] = [1 << 16, 1 << 16, 1 << 16]

    _edit_manifest(package, huge_activation)
    with pytest.raises(flexnnd.PackageError, match="above"):
        read_package(package)
