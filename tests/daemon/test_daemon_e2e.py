"""End to end: the real flexnnd in a subprocess, talked to with the Python client and flexnnctl."""

from __future__ import annotations

import re
import signal
import threading

import numpy as np
import pytest
from onnx import helper

import flexnnd
from flexnn_client import EXIT_BUDGET_TOO_SMALL, EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE
from flexnn_client.client import ClientError, NotRunning
from tests.conftest import make_model, save
from tests.daemon.harness import DaemonProcess
from tests.daemon.test_models import fc_model


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for every daemon here: packages, ladders and calibration are built once."""
    return tmp_path_factory.mktemp("daemon-cache")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    fc_model(d / "a.onnx", seed=1)
    fc_model(d / "b.onnx", width=192, seed=2)
    return d


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, cache, models_dir):
    d = DaemonProcess(
        tmp_path_factory.mktemp("daemon"),
        ["--models-dir", str(models_dir), "--models", "a.onnx", "--threads", "1"],
        cache=cache,
    )
    d.start()
    yield d
    d.stop()
    d.close()


def x_for(width=256, seed=0):
    return np.random.default_rng(seed).standard_normal((1, width)).astype(np.float32)


def reference(models_dir, name, x, tmp_path):
    with flexnnd.Session(models_dir / f"{name}.onnx", cache_dir=tmp_path) as sess:
        return sess.run({"x": x})["y"]


def test_infer_with_the_client_equals_session_run(daemon, models_dir, tmp_path):
    x = x_for()
    with daemon.client() as c:
        assert c.server_live() and c.server_ready()
        got = c.infer("a", {"x": x})["y"]
    np.testing.assert_array_equal(got, reference(models_dir, "a", x, tmp_path))


def test_flexnnctl_infer_prints_top_k_and_saves_the_output(daemon, models_dir, tmp_path):
    x = x_for(seed=5)
    np.save(tmp_path / "x.npy", x)
    out = daemon.ctl("infer", "a", str(tmp_path / "x.npy"), "--top", "3", "--out", str(tmp_path / "y.npy"))
    assert out.returncode == EXIT_OK, out.stderr
    want = reference(models_dir, "a", x, tmp_path)
    assert str(int(np.argmax(want))) in out.stdout.split(":", 1)[1].split(",")[0]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


def test_set_budget_down_and_up_swaps_keeps_outputs_and_memory(daemon, models_dir, tmp_path):
    x = x_for(seed=2)
    want = reference(models_dir, "a", x, tmp_path)
    with daemon.client() as c:
        events = []
        watch = c.watch()
        reader = threading.Thread(target=lambda: [events.append(e) for e in watch], daemon=True)
        reader.start()
        plans = c.plans("a")
        top = max(p.budget_bytes for p in plans)
        smallest = min(p.budget_bytes for p in plans)
        for budget in (top // 3, smallest, top // 2, "auto"):
            out = daemon.ctl("set-budget", str(budget))
            assert out.returncode == EXIT_OK, out.stderr
            status = c.status()
            model = status.models[0]
            assert model.ready
            if budget != "auto":
                assert status.effective_budget_bytes == budget and status.budget_source == "operator"
                assert model.arena_bytes <= budget
            np.testing.assert_allclose(c.infer("a", {"x": x})["y"], want, rtol=1e-5, atol=1e-5)
        c.channel.close()  # ends the watch
        reader.join(10)
    swaps = [e for e in events if e.kind == e.KIND_SWAP]
    assert len(swaps) >= 3 and all(e.model == "a" for e in swaps)


def test_a_budget_below_the_minimum_is_refused_and_serving_goes_on(daemon):
    out = daemon.ctl("set-budget", "1K")
    assert out.returncode == EXIT_BUDGET_TOO_SMALL
    assert "below the smallest feasible plan" in out.stderr
    with daemon.client() as c:
        assert c.server_ready()
        assert c.infer("a", {"x": x_for()})["y"].shape == (1, 256)


def test_bad_arguments_and_unknown_models_are_clear(daemon, tmp_path):
    out = daemon.ctl("set-budget", "lots")
    assert out.returncode == EXIT_USAGE and "not a size" in out.stderr
    with daemon.client() as c, pytest.raises(ClientError, match="not loaded") as err:
        c.infer("nope", {"x": x_for()})
    assert err.value.code.name == "NOT_FOUND"
    out = daemon.ctl("load", "evil", "../../etc/passwd")
    assert out.returncode != EXIT_OK and "outside the models directory" in out.stderr


def test_two_models_share_a_budget(daemon):
    with daemon.client() as c:
        c.load_model("b", "b.onnx")
        try:
            plans_a, plans_b = c.plans("a"), c.plans("b")
            total = (max(p.budget_bytes for p in plans_a) + max(p.budget_bytes for p in plans_b)) // 2
            c.set_budget(total)
            status = c.status()
            shares = {m.name: m for m in status.models}
            assert set(shares) == {"a", "b"} and all(m.ready for m in shares.values())
            assert sum(m.budget_bytes for m in shares.values()) <= total
            assert c.infer("b", {"x": x_for(192)})["y"].shape == (1, 192)
        finally:
            c.set_budget("auto")
            c.unload_model("b")


def test_load_by_name_finds_the_onnx_file_in_the_models_directory(daemon):
    out = daemon.ctl("load", "b")  # b.onnx in --models-dir, named without its suffix
    try:
        assert out.returncode == EXIT_OK, out.stderr
        with daemon.client() as c:
            assert c.infer("b", {"x": x_for(192)})["y"].shape == (1, 192)
    finally:
        daemon.ctl("unload", "b")
    out = daemon.ctl("load", "c")
    assert out.returncode != EXIT_OK and "no model 'c'" in out.stderr


def test_status_table_and_json(daemon):
    out = daemon.ctl("status")
    assert out.returncode == EXIT_OK and out.stdout.startswith("budget")
    assert re.search(r"^a\s+ready\s", out.stdout, re.MULTILINE), out.stdout
    out = daemon.ctl("status", "--json")
    assert out.returncode == EXIT_OK and '"models"' in out.stdout


def test_flexnnctl_without_a_daemon_says_so(tmp_path):
    d = DaemonProcess(tmp_path)
    out = d.ctl("status")
    assert out.returncode == EXIT_NOT_RUNNING and "not running" in out.stderr
    with d.client() as c, pytest.raises(NotRunning):
        c.status()


def test_a_second_instance_is_refused(daemon):
    second = DaemonProcess(daemon.tmp, daemon.args, cache=daemon.cache)
    second.notify_path = daemon.tmp / "notify2.sock"
    second.log_path = daemon.tmp / "second.log"
    second.start(wait=False)
    try:
        code = second.proc.wait(120)
    finally:
        second.close()
    assert code == 3, second.log()
    assert "already running" in second.log()
    with daemon.client() as c:  # the first one still serves on its socket
        assert c.server_ready()


def test_watchdog_status_and_restart_keep_the_operator_budget(tmp_path, cache, models_dir):
    d = DaemonProcess(
        tmp_path,
        ["--models-dir", str(models_dir), "--models", "a.onnx", "--threads", "1"],
        env={"WATCHDOG_USEC": "400000"},
        cache=cache,
    )
    try:
        d.start()
        d.wait_for("WATCHDOG=1", 30)
        assert any(n.startswith("STATUS=") for n in d.notifications)
        with d.client() as c:
            smallest = min(p.budget_bytes for p in c.plans("a"))
            c.set_budget(smallest)
        d.stop(signal.SIGKILL)
        d.start()  # the operator's budget comes back from the state directory
        with d.client() as c:
            status = c.status()
        assert status.budget_source == "operator" and status.effective_budget_bytes == smallest
        assert d.stop() == 0
        d.wait_for("STOPPING=1", 5)
    finally:
        d.close()


def slow_model(path):
    """Thirty-two 3×3 convolutions on 64×256×256 (~150 GFLOP): over a second per inference even with
    Winograd, longer than the main loop's 0.5 s reaction to SIGTERM, so the request is caught in flight."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(32):
        out = "y" if i == 31 else f"h{i}"
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [out], pads=[1, 1, 1, 1], name=f"conv{i}"))
        inits.append((f"w{i}", (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)))
        prev = out
    return save(make_model(nodes, [("x", [1, 64, 256, 256])], [("y", None)], inits, name="slow"), path)


def test_sigterm_drains_the_inference_in_flight(tmp_path, cache):
    models = tmp_path / "models"
    models.mkdir()
    slow_model(models / "slow.onnx")
    d = DaemonProcess(
        tmp_path,
        [
            "--models-dir",
            str(models),
            "--models",
            "slow.onnx",
            "--threads",
            "1",
            "--max-message-bytes",
            "64M",
        ],
        cache=cache,
    )  # its 16 MiB input needs more
    try:
        d.start()
        x = np.random.default_rng(0).standard_normal((1, 64, 256, 256)).astype(np.float32)
        results, errors = [], []

        def infer():
            with d.client() as c:
                try:
                    results.append(c.infer("slow", {"x": x}))
                except ClientError as e:
                    errors.append(e)

        with d.client() as c:
            t = threading.Thread(target=infer)
            t.start()
            for _ in range(1000):  # until the daemon reports the request as running
                if c.status().models[0].queue_depth:
                    break
                threading.Event().wait(0.005)
            else:
                raise AssertionError(f"the request never showed up as in flight: {errors or 'no error'}")
        d.send(signal.SIGTERM)
        t.join(120)
        assert d.proc.wait(120) == 0, d.log()
        assert not errors and results and results[0]["y"].shape == (1, 64, 256, 256)
        assert "drained 1 requests" in d.log()
    finally:
        d.close()


def test_no_configuration_serves_the_default_model(tmp_path, cache):
    """The README's first command: `flexnnd` with nothing configured."""
    d = DaemonProcess(tmp_path, ["--threads", "1"], cache=cache)
    try:
        d.start()
        with d.client() as c:
            meta = c.model_metadata("mobilenet_v2")
            x = np.random.default_rng(0).integers(0, 255, size=tuple(meta.inputs[0].shape), dtype=np.uint8)
            out = c.infer("mobilenet_v2", x)
        assert next(iter(out.values())).shape == (1, 1000)
        assert d.stop() == 0
    finally:
        d.close()


def test_a_stock_tritonclient_talks_to_flexnnd(daemon, models_dir, tmp_path):
    """tritonclient's gRPC client, in its own process (its `inference` messages clash with ours)."""
    import json
    import subprocess
    import sys

    from tests.daemon.harness import ROOT

    x = x_for(seed=9)
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "clients/examples/triton_infer.py"),
            "--url",
            f"unix://{daemon.socket}",
            "--model",
            "a",
            "--input",
            str(tmp_path / "x.npy"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["live"] and got["ready"] and got["shape"] == [1, 256]
    want = reference(models_dir, "a", x, tmp_path)
    np.testing.assert_array_equal(np.array(got["values"], np.float32), want.reshape(-1))


def test_socket_is_0660_in_a_0750_directory(daemon):
    import stat

    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o660
    assert stat.S_IMODE(daemon.runtime.stat().st_mode) == 0o750
