"""The command lines: `flexnnctl import` and the run-once `flexnnd`."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_flexnnd_runs_a_zoo_model_once(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "flexnnd.main", "--model", "squeezenet1_1", "--runs", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    assert "model squeezenet1_1" in out
    assert "top-5:" in out
    assert (tmp_path / "flexnn" / "zoo").is_dir()


def test_flexnnd_names_the_zoo_for_an_unknown_model(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "flexnnd.main", "--model", "alexnet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1
    assert "unknown zoo model 'alexnet'; the zoo has: resnet18" in out.stderr
