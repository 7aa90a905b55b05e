"""Input shapes for models whose ONNX inputs have -1 or symbolic dimensions: the daemon's config
(`[input_shapes.MODEL]`), LoadModel without them, and `flexnnctl import --input-shape`."""

from __future__ import annotations

import re
import shutil
import signal

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import flexnnd
from flexnn_client import EXIT_FAILED, EXIT_OK
from flexnn_client.client import ClientError
from flexnn_client.ctl import main as flexnnctl
from flexnnd.daemon.config import Config, build_parser, config_from_args, load_config
from flexnnd.errors import ConfigError
from tests.conftest import ort_run, save
from tests.daemon.harness import DaemonProcess


def dynamic_model():
    """Conv 3->8 (3x3, pad 1) + Relu, then Conv 8->4: input [-1, 3, 'height', 'width'] as Paddle and
    torch's dynamic axes write it."""
    rng = np.random.default_rng(7)
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) / 5,
        "b1": rng.standard_normal(8).astype(np.float32),
        "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32) / 3,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4, "height", "width"])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# ----- the config key ------------------------------------------------------------------------------


def test_input_shapes_from_the_file_and_from_flags(tmp_path):
    path = tmp_path / "flexnnd.toml"
    path.write_text(
        "[input_shapes.det]\nx = [1, 3, 20, 24]\nmask = [1, 1]\n\n[input_shapes.ocr]\nimg = [1, 3, 48, 320]\n"
    )
    config = load_config(path)
    assert config.shapes_for("det") == {"x": (1, 3, 20, 24), "mask": (1, 1)}
    assert config.shapes_for("ocr") == {"img": (1, 3, 48, 320)}
    assert config.shapes_for("other") is None
    inline = tmp_path / "inline.toml"
    inline.write_text("input_shapes = { det = { x = [1, 3, 20, 24] } }\n")
    assert load_config(inline).shapes_for("det") == {"x": (1, 3, 20, 24)}
    flags = config_from_args(
        build_parser().parse_args(["--input-shapes", "det:x=1,3,8,8", "ocr:img=1,3,48,96"])
    )
    assert flags.input_shapes == (("det", "x", (1, 3, 8, 8)), ("ocr", "img", (1, 3, 48, 96)))


def test_every_bad_shape_is_named_at_once_with_its_line(tmp_path):
    path = tmp_path / "flexnnd.toml"
    path.write_text(
        "threads = 1\n[input_shapes.det]\nx = [1, 0, 20, -1]\ny = []\n[input_shapes.ocr]\nimg = [1, 3, 48, 320]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"input_shapes ({path} line 2)" in message
    assert "det.x = [1, 0, 20, -1]: every dimension must be above 0" in message
    assert "det.y has no dimensions" in message


def test_wrong_types_are_all_named(tmp_path):
    path = tmp_path / "flexnnd.toml"
    path.write_text('[input_shapes.det]\nx = [1, "3", 20]\ny = 5\n[input_shapes]\nloose = [1, 3]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "det.x: expected a list of integers" in message
    assert "det.y: expected a list of integers" in message
    assert "loose: expected a table of input = [dims] for model 'loose'" in message
    path.write_text("input_shapes = [1, 3, 224, 224]\n")
    with pytest.raises(ConfigError, match=r"line 1: input_shapes expected a table of models"):
        load_config(path)


def test_a_misspelt_table_suggests_the_key(tmp_path):
    path = tmp_path / "flexnnd.toml"
    path.write_text("threads = 1\n\n[input_shape.det]\nx = [1, 3, 8, 8]\n")
    with pytest.raises(
        ConfigError, match=r"line 3: unknown setting 'input_shape'; did you mean 'input_shapes'"
    ):
        load_config(path)


def test_bad_flags_and_direct_values_are_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--input-shapes", "x=1,3,8,8"])  # no model
    with pytest.raises(ConfigError, match=r"det\.x is given twice"):
        Config(input_shapes=(("det", "x", (1, 2)), ("det", "x", (1, 3))))
    with pytest.raises(ConfigError, match=r"input_shapes has type"):
        Config(input_shapes=(("det", "x", [1, 2]),))


# ----- flexnnctl import --input-shape --------------------------------------------------------------


def test_flexnnctl_import_fixes_minus_one_and_symbolic_dims(tmp_path, capsys):
    model = save(dynamic_model(), tmp_path / "det.onnx")
    assert flexnnctl(["import", str(model), str(tmp_path / "none"), "--no-ladder"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "'x' dimension 2 ('height'), dimension 3 ('width')" in err
    assert "--input-shape" in err
    argv = ["import", str(model), str(tmp_path / "pkg"), "--input-shape", "x=1,3,20,24"]
    assert flexnnctl(argv) == EXIT_OK
    x = np.random.default_rng(1).standard_normal((1, 3, 20, 24)).astype(np.float32)
    with flexnnd.Session(tmp_path / "pkg", threads=1) as sess:
        assert sess.inputs[0].shape == (1, 3, 20, 24)
        got = sess.run({"x": x})["y"]
    want = ort_run(model, {"x": x})[0]
    assert got.shape == want.shape == (1, 4, 20, 24)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ----- the real daemon -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shapes")
    models = tmp / "models"
    models.mkdir()
    save(dynamic_model(), models / "det.onnx")
    shutil.copy(models / "det.onnx", models / "wide.onnx")
    config = tmp / "flexnnd.toml"
    config.write_text(
        f'models_dir = "{models}"\nmodels = ["det.onnx"]\nthreads = 1\n\n[input_shapes.det]\nx = [1, 3, 20, 24]\n'
    )
    d = DaemonProcess(tmp / "daemon", ["--config", str(config)])
    d.config_path, d.models_dir = config, models
    d.start()
    yield d
    d.stop()
    d.close()


def test_the_configured_shapes_serve_over_oip(daemon):
    x = np.random.default_rng(2).standard_normal((1, 3, 20, 24)).astype(np.float32)
    with daemon.client() as c:
        meta = c.model_metadata("det")
        assert list(meta.inputs[0].shape) == [1, 3, 20, 24]
        got = c.infer("det", {"x": x})["y"]
    want = ort_run(daemon.models_dir / "det.onnx", {"x": x})[0]
    assert got.shape == (1, 4, 20, 24)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_load_without_shapes_names_every_unknown_dimension_and_the_config_key(daemon):
    with daemon.client() as c:
        with pytest.raises(ClientError) as info:
            c.load_model("wide", "wide.onnx")
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        message = str(info.value)
        assert "'x' dimension 2 ('height'), dimension 3 ('width')" in message
        assert "[input_shapes.wide]" in message
        assert [m.name for m in c.models()] == ["det"]  # the others serve on
        assert c.infer("det", {"x": np.zeros((1, 3, 20, 24), np.float32)})["y"].shape == (1, 4, 20, 24)


def test_shapes_added_by_a_reload_apply_to_load_model(daemon):
    text = daemon.config_path.read_text()
    daemon.config_path.write_text(text + "\n[input_shapes.wide]\nx = [1, 3, 8, 40]\n")
    before = daemon.log().count("configuration reloaded")
    daemon.send(signal.SIGHUP)
    import time

    deadline = time.monotonic() + 60
    while daemon.log().count("configuration reloaded") == before:
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.2)
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 40)).astype(np.float32)
    with daemon.client() as c:
        c.load_model("wide", "wide.onnx")
        got = c.infer("wide", {"x": x})["y"]
    want = ort_run(daemon.models_dir / "wide.onnx", {"x": x})[0]
    assert got.shape == (1, 4, 8, 40)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert re.search(r"model wide.*loaded", daemon.log())


def test_flexnnd_warm_imports_with_the_configured_shapes(daemon, capsys):
    """`flexnnd warm` reads the same config: the daemon's cache (calibrated already) gets the import."""
    from flexnnd.daemon import warm
    from flexnnd.graph.package import read_package
    from flexnnd.runtime.session import package_for_path

    config = daemon.tmp / "warm.toml"
    config.write_text(f'models_dir = "{daemon.models_dir}"\n\n[input_shapes.wide]\nx = [1, 3, 12, 4]\n')
    cache = daemon.cache
    assert warm.main(["--config", str(config), "--cache-dir", str(cache), "wide"]) == 0
    package = package_for_path(daemon.models_dir / "wide.onnx", cache / "packages", {"x": (1, 3, 12, 4)})
    assert read_package(package).graph.inputs[0].shape == (1, 3, 12, 4)
    config.write_text(f'models_dir = "{daemon.models_dir}"\n')
    assert warm.main(["--config", str(config), "--cache-dir", str(cache), "wide"]) == 1
    assert "dimension 2 ('height'), dimension 3 ('width')" in capsys.readouterr().err


def test_a_configured_model_without_its_shapes_fails_the_start_saying_what_to_write(daemon, tmp_path):
    config = tmp_path / "flexnnd.toml"
    config.write_text(f'models_dir = "{daemon.models_dir}"\nmodels = ["wide.onnx"]\nthreads = 1\n')
    d = DaemonProcess(tmp_path / "daemon", ["--config", str(config)], cache=daemon.cache)
    try:
        d.start(wait=False)
        assert d.proc.wait(timeout=300) == 3, d.log()  # startup failed
    finally:
        d.close()
    assert "'x' dimension 2 ('height'), dimension 3 ('width')" in d.log()
    assert "[input_shapes.wide]" in d.log()
