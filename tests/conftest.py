"""Shared fixtures: tiny ONNX models built in code, and zoo models built once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, initializers=(), opset=17, name="t") -> onnx.ModelProto:
    """A model from helper-made nodes; inputs/outputs as (name, shape) pairs (shape None = unknown)."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def ort_run(model_path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_model_matches_ort(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], tmp_path: Path
) -> list[int]:
    """Import `model` with flexnn and run it all-resident and at its smallest plan: every output
    equals ONNX Runtime's on `feeds` (floats within the engine's tolerance, others exactly). Returns
    the two arenas' sizes, so a caller can see whether the smallest plan streamed."""
    import flexnnd

    path = save(model, tmp_path / "model.onnx")
    want = ort_run(path, feeds)
    arenas = []
    with flexnnd.Session(path, threads=1, cache_dir=tmp_path / "cache") as sess:
        ladder = sess.rungs
        budgets = [None]
        if ladder.index:
            budgets.append(min(e.arena_bytes for e in ladder.index) + ladder.output_bytes)
        for budget in budgets:
            sess.set_budget(budget)
            got = sess.run(feeds)
            arenas.append(sess.plan.arena_bytes)
            for spec, reference in zip(sess.outputs, want, strict=True):
                value = got[spec.name]
                assert value.dtype == reference.dtype, f"{spec.name}: {value.dtype} != {reference.dtype}"
                if np.issubdtype(reference.dtype, np.floating):
                    assert_close_to_reference(value, reference)
                else:
                    np.testing.assert_array_equal(value, reference)
    return arenas


def assert_close_to_reference(got: np.ndarray, want: np.ndarray) -> None:
    """The engine's tolerance: max|diff| ≤ 1e-4 × max(1, max|reference|)."""
    assert got.shape == want.shape
    bound = 1e-4 * max(1.0, float(np.abs(want).max()))
    diff = float(np.abs(got.astype(np.float64) - want).max())
    assert diff <= bound, f"max |diff| {diff:.3g} > {bound:.3g}"


@pytest.fixture(scope="session", autouse=True)
def xdg_cache_home(tmp_path_factory) -> Iterator[Path]:
    """XDG_CACHE_HOME under the session's basetemp, so an import or Session without a calibration_dir
    (and every subprocess, which inherits it) calibrates once per session there, not in ~/.cache."""
    path = tmp_path_factory.mktemp("xdg-cache", numbered=False)
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(path)
    yield path
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def zoo_model(zoo_dir):
    """zoo_model(name) -> path of the seeded .onnx file, built once per session."""
    from flexnnd import zoo

    return lambda name: zoo.cached(name, zoo_dir)


@pytest.fixture(scope="session")
def package_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("packages")
