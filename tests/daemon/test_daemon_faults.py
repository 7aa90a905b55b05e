"""Faults while serving: the weights file truncated, replaced or removed; a failed read mid-inference;
a swap up that fails; SIGKILL and restart. The model goes not-ready with a clear reason (or, when its
old plan survives, serves on), the others keep serving, a reload recovers."""

from __future__ import annotations

import signal
import threading

import grpc
import numpy as np
import pytest

from flexnn_client.client import ClientError
from flexnnd.graph.package import read_package
from flexnnd.planner.ladder import stored_ladder
from tests.daemon.harness import DaemonProcess
from tests.daemon.test_daemon_budget_sources import until
from tests.daemon.test_daemon_e2e import cache, models_dir, reference, x_for  # noqa: F401 - shared fixtures
from tests.daemon.test_models import resident_weight, rotten


@pytest.fixture
def daemon(tmp_path, cache, models_dir):  # noqa: F811
    d = DaemonProcess(
        tmp_path / "d",
        [
            "--models-dir",
            str(models_dir),
            "--models",
            "a.onnx",
            "b.onnx",
            "--threads",
            "1",
            "--no-watch-pressure",
        ],
        cache=tmp_path / "cache",  # its own package cache: these tests damage it
    )
    d.start()
    yield d
    d.stop()
    d.close()


def weights_of(d: DaemonProcess, name: str):
    (path,) = (d.cache / "packages").glob(f"{name}-*/weights.bin")
    return path


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "replaced":  # same size, other bytes, a new file (as a careless copy would)
        fresh = path.with_name("new.bin")
        fresh.write_bytes(data[:4096] + bytes(b ^ 0x5A for b in data[4096:8192]) + data[8192:])
        fresh.replace(path)
    elif how == "removed":
        path.unlink()


@pytest.mark.parametrize("how", ["truncated", "replaced", "removed"])
def test_damaged_weights_take_the_model_out_and_a_reload_recovers(daemon, models_dir, tmp_path, how):  # noqa: F811
    x = x_for(seed=4)
    want = reference(models_dir, "a", x, tmp_path)
    with daemon.client() as c:
        np.testing.assert_array_equal(c.infer("a", {"x": x})["y"], want)
        damage(weights_of(daemon, "a"), how)
        model = until(
            lambda: (m := {m.name: m for m in c.models()}["a"]).state == "failed" and m, "a to fail"
        )
        assert (
            not model.ready
            and {"truncated": "truncated", "replaced": "SHA-256", "removed": "gone"}[how] in model.reason
        )
        with pytest.raises(ClientError) as err:
            c.infer("a", {"x": x})
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "not ready" in str(err.value)
        assert not c.server_ready()
        assert c.infer("b", {"x": x_for(192)})["y"].shape == (1, 192)  # the other model keeps serving
        out = daemon.ctl("load", "a", "a.onnx")
        assert out.returncode == 0, out.stderr
        assert {m.name: m for m in c.models()}["a"].ready and c.server_ready()
        np.testing.assert_array_equal(c.infer("a", {"x": x})["y"], want)


def test_a_failed_read_mid_inference_fails_that_request_only(daemon, models_dir, tmp_path):  # noqa: F811
    x = x_for(seed=6)
    with daemon.client() as c:
        smallest = min(p.budget_bytes for p in c.plans("a")) + min(p.budget_bytes for p in c.plans("b"))
        c.set_budget(smallest)  # every weight of both models streams on every inference
        assert c.status().models[0].streamed_bytes > 0
        path = weights_of(daemon, "a")
        data = path.read_bytes()
        with open(path, "r+b") as f:  # same inode: the daemon notices only when a read comes up short
            f.truncate(len(data) // 2)
        with pytest.raises(ClientError) as err:
            c.infer("a", {"x": x})
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        model = {m.name: m for m in c.models()}["a"]
        assert model.state == "failed" and "truncated" in model.reason
        assert c.infer("b", {"x": x_for(192)})["y"].shape == (1, 192)
        assert daemon.ctl("load", "a", "a.onnx").returncode == 0
        np.testing.assert_allclose(
            c.infer("a", {"x": x})["y"], reference(models_dir, "a", x, tmp_path), rtol=1e-5, atol=1e-6
        )


def test_a_swap_up_that_fails_serves_on_the_old_plan_and_says_so_once(tmp_path, models_dir):  # noqa: F811
    d = DaemonProcess(
        tmp_path / "d",
        ["--models-dir", str(models_dir), "--models", "a.onnx", "--threads", "1", "--no-watch-pressure"],
        cache=tmp_path / "cache",  # its own package cache: this test damages it
    )
    x = x_for(seed=8)
    try:
        d.start()
        with d.client() as c:
            events = []
            watch = c.watch()
            reader = threading.Thread(target=lambda: [events.append(e) for e in watch], daemon=True)
            reader.start()
            plans = sorted(c.plans("a"), key=lambda p: p.budget_bytes)
            old, top = plans[-2], plans[-1]
            c.set_budget(old.budget_bytes)
            want = c.infer("a", {"x": x})["y"]
            weights = weights_of(d, "a")
            package = read_package(weights.parent)
            (plan,) = [p for p in stored_ladder(package) if p.arena_bytes == old.arena_bytes]
            with rotten(weights, resident_weight(plan, package)):  # unseen by the daemon's file checks
                for _ in range(2):  # the same budget twice: one attempt, one error event
                    c.set_budget(old.budget_bytes + top.budget_bytes)  # both arenas fit: the swap overlaps
                (model,) = c.models()
                assert model.state == "ready" and model.ready and c.server_ready()
                assert model.arena_bytes == old.arena_bytes and model.budget_bytes == old.budget_bytes
                assert "serves on" in model.reason and "checksum" in model.reason
                np.testing.assert_array_equal(c.infer("a", {"x": x})["y"], want)
            c.set_budget(old.budget_bytes + top.budget_bytes)  # asked again: retried, and now it works
            (model,) = c.models()
            assert model.ready and model.reason == "" and model.arena_bytes == top.arena_bytes
            np.testing.assert_allclose(c.infer("a", {"x": x})["y"], want, rtol=1e-5, atol=1e-5)
            until(
                lambda: any(e.kind == e.KIND_SWAP and e.to_bytes == top.arena_bytes for e in events),
                "the swap",
            )
            c.channel.close()  # ends the watch
            reader.join(10)
        errors = [e for e in events if e.kind == e.KIND_ERROR and e.model == "a"]
        assert len(errors) == 1 and f"{top.arena_bytes:,} bytes failed" in errors[0].message
    finally:
        d.stop()
        d.close()


def test_sigkill_and_restart_bring_back_loaded_models_and_the_budget(tmp_path, cache, models_dir):  # noqa: F811
    d = DaemonProcess(
        tmp_path / "d",
        ["--models-dir", str(models_dir), "--models", "a.onnx", "--threads", "1", "--no-watch-pressure"],
        cache=cache,
    )
    try:
        d.start()
        with d.client() as c:
            c.load_model("b", "b.onnx")
            budget = min(p.budget_bytes for p in c.plans("a")) + max(p.budget_bytes for p in c.plans("b"))
            c.set_budget(budget)
        d.stop(signal.SIGKILL)
        d.start()
        with d.client() as c:
            status = c.status()
            assert {m.name for m in status.models} == {"a", "b"} and all(m.ready for m in status.models)
            assert status.effective_budget_bytes == budget and status.budget_source == "operator"
            c.unload_model("b")
        d.stop(signal.SIGKILL)
        d.start()
        with d.client() as c:
            assert {m.name for m in c.models()} == {"a"}  # an unload is remembered too
    finally:
        d.stop()
        d.close()
