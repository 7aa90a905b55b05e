"""Session: feeds checked, arena reused by lifetime, and no allocation after warm-up."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import flexnnd
from flexnnd.planner.plan import check_no_overlap
from tests.alloc import OBJECT_SLACK, peak_allocation
from tests.conftest import make_model, save
from tests.graph.test_import import conv_bn_relu_model


@pytest.fixture
def session(tmp_path):
    path = save(conv_bn_relu_model(), tmp_path / "m.onnx")
    with flexnnd.Session(path, cache_dir=tmp_path / "cache") as sess:
        yield sess


def test_inputs_and_outputs_are_described(session):
    assert [(s.name, s.shape, s.dtype) for s in session.inputs] == [("x", (1, 3, 9, 11), "float32")]
    assert [(s.name, s.shape) for s in session.outputs] == [("y", (1, 8, 9, 11))]


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({}, r"missing \['x'\]"),
        ({"x": np.zeros((1, 3, 9, 11), np.float32), "z": np.zeros(1, np.float32)}, r"unknown \['z'\]"),
        (
            {"x": np.zeros((1, 3, 9, 10), np.float32)},
            r"shape \(1, 3, 9, 10\), the model expects \(1, 3, 9, 11\)",
        ),
        ({"x": np.zeros((1, 3, 9, 11), np.float64)}, "dtype float64, the model expects float32"),
        ({"x": [[1.0]]}, "must be a numpy array"),
    ],
    ids=["missing", "unknown", "shape", "dtype", "type"],
)
def test_wrong_feeds_are_named(session, feeds, message):
    with pytest.raises(flexnnd.FeedError, match=message):
        session.run(feeds)


def test_session_from_package_folder_equals_session_from_onnx(tmp_path, session):
    pkg = flexnnd.import_model(tmp_path / "m.onnx", tmp_path / "pkg")
    x = np.random.default_rng(1).standard_normal((1, 3, 9, 11)).astype(np.float32)
    with flexnnd.Session(pkg) as other:
        np.testing.assert_array_equal(other.run({"x": x})["y"], session.run({"x": x})["y"])


def chain_model(depth=6, width=16):
    """A chain of Relu/Add layers: activations die early, so the arena must reuse them."""
    nodes, prev = [], "x"
    for i in range(depth):
        nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
        nodes.append(helper.make_node("Add", [f"r{i}", prev], [f"a{i}"]))
        prev = f"a{i}"
    nodes.append(helper.make_node("Relu", [prev], ["y"]))
    return make_model(nodes, [("x", [1, width, 32, 32])], [("y", None)])


def test_arena_reuses_memory_by_lifetime(tmp_path):
    path = save(chain_model(), tmp_path / "chain.onnx")
    with flexnnd.Session(path, cache_dir=tmp_path / "c") as sess:
        check_no_overlap(sess.plan)
        one = 16 * 32 * 32 * 4
        # 13 activations of one tensor each; at most three are alive at any step.
        assert sess.plan.arena_bytes <= 3 * one
        x = np.random.default_rng(2).standard_normal((1, 16, 32, 32)).astype(np.float32)
        ref = x
        for _ in range(6):
            ref = np.maximum(ref, 0) + ref
        np.testing.assert_allclose(sess.run({"x": x})["y"], np.maximum(ref, 0), rtol=1e-6)


def test_inference_allocates_nothing_but_its_outputs_after_warmup(tmp_path):
    path = save(chain_model(width=16), tmp_path / "chain.onnx")
    with flexnnd.Session(path, cache_dir=tmp_path / "c") as sess:
        x = np.random.default_rng(3).standard_normal((1, 16, 32, 32)).astype(np.float32)
        out_bytes = sum(int(np.prod(s.shape)) * 4 for s in sess.outputs)
        assert peak_allocation(lambda: sess.run({"x": x})) <= out_bytes + OBJECT_SLACK


def test_figures_are_typed_and_stats_keeps_its_keys(session):
    session.run({"x": np.zeros((1, 3, 9, 11), np.float32)})
    figures = session.figures()
    assert figures.held_bytes == session.plan.arena_bytes + 8 * 9 * 11 * 4  # arena and the output copy
    assert figures.last_inference_seconds is not None and figures.sliced_layers == 0
    stats = session.stats()  # the public dict: the same figures, the keys it always had
    assert list(stats) == [
        *("model", "budget", "plan_budget", "arena_bytes", "resident_bytes", "streamed_bytes", "steps"),
        *(
            "sliced_steps",
            "last_inference_seconds",
            "last_stall_seconds",
            "last_read_bytes",
            "last_read_seconds",
        ),
    ]
    assert stats["arena_bytes"] == figures.arena_bytes and stats["steps"] == figures.steps


def test_one_ladder_chooses_and_reads_for_the_session_and_its_caller(tmp_path):
    from flexnnd.errors import BudgetTooSmall
    from flexnnd.planner.plan_file import IndexEntry
    from flexnnd.runtime.session import Ladder

    path = save(chain_model(), tmp_path / "chain.onnx")
    with flexnnd.Session(path, cache_dir=tmp_path / "c") as sess:
        ladder = sess.rungs
        assert isinstance(ladder, Ladder) and all(isinstance(e, IndexEntry) for e in ladder.index)
        smallest = min(e.arena_bytes for e in ladder.index)
        entry = ladder.choose(smallest + ladder.output_bytes)  # a session budget: arena and output copies
        assert entry.arena_bytes == smallest and ladder.read(entry).arena_bytes == smallest
        with pytest.raises(BudgetTooSmall) as err:
            ladder.choose(smallest + ladder.output_bytes - 1)
        assert err.value.minimum == smallest + ladder.output_bytes
        # a caller that chose and read the plan hands both over: the session does not choose again
        with flexnnd.Session(sess.package, ladder=ladder, plan=ladder.read(entry)) as other:
            assert other.rungs is ladder and other.plan.arena_bytes == smallest


def test_session_takes_input_shapes_for_an_onnx_file_with_unknown_dimensions(tmp_path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, "seq", 4])], [("y", None)])
    path = save(model, tmp_path / "dyn.onnx")
    with pytest.raises(flexnnd.ShapeError, match=r"'x' dimension 1 \('seq'\)"):
        flexnnd.Session(path, cache_dir=tmp_path / "cache")
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(1, 6, 4)
    with flexnnd.Session(path, cache_dir=tmp_path / "cache", input_shapes={"x": (1, 6, 4)}) as sess:
        assert sess.inputs[0].shape == (1, 6, 4)
        np.testing.assert_array_equal(sess.run({"x": x})["y"], np.maximum(x, 0))
    with flexnnd.Session(path, cache_dir=tmp_path / "cache", input_shapes={"x": (1, 2, 4)}) as sess:
        assert sess.inputs[0].shape == (1, 2, 4)  # another shape is another import, not the cached one
        package = sess.package.path
    with pytest.raises(flexnnd.ShapeError, match="is a package"):
        flexnnd.Session(package, input_shapes={"x": (1, 2, 4)})
