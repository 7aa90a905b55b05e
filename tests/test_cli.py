"""The command line `flexnnctl import` (the daemon's commands are tested end to end in tests/daemon)."""

from __future__ import annotations

from flexnn_client import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from flexnn_client.ctl import main as flexnnctl
from flexnnd.graph.package import read_package
from tests.conftest import save
from tests.graph.test_import import conv_bn_relu_model


def test_import_writes_a_package(tmp_path, capsys):
    model = save(conv_bn_relu_model(), tmp_path / "m.onnx")
    assert flexnnctl(["import", str(model), str(tmp_path / "pkg"), "--input-shape", "x=1,3,9,11"]) == EXIT_OK
    assert "imported" in capsys.readouterr().out
    assert read_package(tmp_path / "pkg").graph.inputs[0].shape == (1, 3, 9, 11)


def test_import_of_a_bad_file_fails_with_the_reason(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    assert flexnnctl(["import", str(bad), str(tmp_path / "pkg")]) == EXIT_FAILED
    assert "not a readable ONNX model" in capsys.readouterr().err
    assert not (tmp_path / "pkg").exists()


def test_bad_arguments_are_a_usage_error(tmp_path, capsys):
    assert flexnnctl(["import", "m.onnx", str(tmp_path), "--input-shape", "x:1"]) == EXIT_USAGE
    assert "expected NAME=D1,D2" in capsys.readouterr().err
    assert flexnnctl(["frobnicate"]) == EXIT_USAGE
