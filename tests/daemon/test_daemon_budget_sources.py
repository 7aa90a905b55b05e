"""The daemon's budget from its cgroup (a fake v2 tree), health while no plan fits, hand-edited files,
SIGHUP reload and reflection: the real daemon in a subprocess."""

from __future__ import annotations

import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.daemon.harness import DaemonProcess
from tests.daemon.test_daemon_e2e import cache, models_dir, x_for  # noqa: F401 - shared fixtures
from tests.daemon.test_monitor import MiB, v2_tree, write

PATIENCE_S = 60.0  # generous bound for the daemon's main loop (0.5 s ticks) to act


def until(predicate, what: str, timeout: float = PATIENCE_S):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def health(socket_path) -> int:
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def test_the_cgroup_limit_sets_the_budget_and_no_fit_is_not_serving(tmp_path, cache, models_dir):  # noqa: F811
    monitor_config, cgroup = v2_tree(tmp_path / "fake")
    write(cgroup / "memory.current", f"{10 * MiB}\n")  # a working set far below every limit: no pressure
    for f in ("memory.max", "memory.high"):
        write(cgroup / f, "max\n")
    write(cgroup.parent / "memory.max", "max\n")
    d = DaemonProcess(
        tmp_path / "d",
        [
            "--models-dir", str(models_dir), "--models", "a.onnx", "--threads", "1",
            "--proc-root", str(monitor_config.proc_root), "--fs-root", str(monitor_config.fs_root),
            "--quiet-period-s", "1", "--min-dwell-s", "0.5", "--headroom", "1M",
        ],
        cache=cache,
    )  # fmt: skip
    try:
        d.start()
        with d.client() as c:
            status = c.status()
            overhead = status.runtime_overhead_bytes
            plans = c.plans("a")
            smallest = min(p.budget_bytes for p in plans)
            assert health(d.socket) == health_pb2.HealthCheckResponse.SERVING

            def limit_for(budget):  # inverse of the policy: ⌊0.9·limit⌋ − overhead − headroom
                return -(-(budget + overhead + MiB) * 10 // 9)

            write(cgroup / "memory.max", f"{limit_for(smallest + 1000)}\n")
            status = until(lambda: (s := c.status()).budget_source == "cgroup" and s, "the cgroup budget")
            assert smallest <= status.effective_budget_bytes <= smallest + 1000
            assert status.cgroup_limit_bytes == limit_for(smallest + 1000)
            model = until(
                lambda: (m := c.status().models[0]).ready and m.budget_bytes == smallest and m, "a swap down"
            )
            assert model.arena_bytes == min(p.arena_bytes for p in plans)
            c.infer("a", {"x": x_for()})

            write(cgroup / "memory.max", f"{limit_for(smallest // 4)}\n")  # no plan fits any more
            until(lambda: not c.status().models[0].ready, "the model to go not ready")
            assert health(d.socket) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not c.server_ready()
            assert "needs at least" in c.status().models[0].reason

            write(cgroup / "memory.max", "max\n")  # limit lifted: back up after the quiet period
            until(lambda: c.status().models[0].ready, "the model to come back")
            assert health(d.socket) == health_pb2.HealthCheckResponse.SERVING
            c.infer("a", {"x": x_for()})
        events = d.log()
        assert "cgroup" in events and "swap [a]" in events
    finally:
        d.stop()
        d.close()


def test_hand_edited_budget_file_sighup_reload_and_reflection(tmp_path, cache, models_dir):  # noqa: F811
    config = tmp_path / "flexnnd.toml"
    config.write_text(
        f'models_dir = "{models_dir}"\nmodels = ["a.onnx"]\nthreads = 1\nwatch_pressure = false\n'
    )
    d = DaemonProcess(tmp_path / "d", ["--config", str(config)], cache=cache)
    try:
        d.start()
        with d.client() as c:
            smallest = min(p.budget_bytes for p in c.plans("a"))
            (d.state / "budget").write_text(f"{smallest}\n")  # an operator editing the state file by hand
            until(lambda: c.status().effective_budget_bytes == smallest, "the hand-written budget")

            config.write_text(
                f'models_dir = "{models_dir}"\nmodels = ["a.onnx", "b.onnx"]\nthreads = 1\nwatch_pressure = false\n'
            )
            d.send(signal.SIGHUP)
            until(lambda: {m.name for m in c.models()} == {"a", "b"}, "model b after the reload")
            d.wait_for("RELOADING=1", 10)
            assert c.status().effective_budget_bytes == smallest  # the operator's budget survives a reload
            c.set_budget("auto")
            assert c.infer("b", {"x": x_for(192)})["y"].shape == (1, 192)

        with grpc.insecure_channel(f"unix:{d.socket}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = {s.name for r in replies for s in r.list_services_response.service}
        assert {
            "inference.GRPCInferenceService",
            "flexnn.control.v1.Control",
            "grpc.health.v1.Health",
        } <= names
    finally:
        d.stop()
        d.close()


def test_bad_configuration_is_a_startup_failure(tmp_path):
    config = tmp_path / "flexnnd.toml"
    config.write_text("queue_depht = 3\n")
    d = DaemonProcess(tmp_path / "d", ["--config", str(config)])
    try:
        d.start(wait=False)
        assert d.proc.wait(120) == 3
        assert "unknown setting 'queue_depht'" in d.log()
    finally:
        d.close()


@pytest.mark.parametrize("address", ["0.0.0.0:0", "127.0.0.1:0"])
def test_tcp_without_tls_is_refused_unless_loopback_is_allowed(tmp_path, address):
    d = DaemonProcess(tmp_path / "d", ["--tcp-address", address])
    try:
        d.start(wait=False)
        assert d.proc.wait(120) == 3
        assert "tls" in d.log().lower()
    finally:
        d.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_with_tls_needs_the_bearer_token_except_for_health_and_liveness(tmp_path, cache, models_dir):  # noqa: F811
    import shutil
    import subprocess

    from flexnn_client.client import Client, ClientError

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    port = _free_port()
    d = DaemonProcess(
        tmp_path / "d",
        ["--models-dir", str(models_dir), "--models", "a.onnx", "--threads", "1", "--no-watch-pressure",
         "--tcp-address", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key),
         "--token-file", str(token_file)],
        cache=cache,
    )  # fmt: skip
    try:
        d.start()
        root = cert.read_bytes()
        address = f"127.0.0.1:{port}"
        with Client(address, token="s3cret-token", root_certificates=root) as c:
            assert c.infer("a", {"x": x_for()})["y"].shape == (1, 256)
        with Client(address, token="wrong-token!", root_certificates=root) as c:
            assert c.server_live()  # liveness is exempt
            with pytest.raises(ClientError) as err:
                c.status()
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        with Client(address, root_certificates=root) as c, pytest.raises(ClientError) as err:
            c.infer("a", {"x": x_for()})
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        creds = grpc.ssl_channel_credentials(root)
        with grpc.secure_channel(address, creds) as channel:  # health checks need no token
            status = (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            )
        assert status == health_pb2.HealthCheckResponse.SERVING
        with d.client() as c:  # the Unix socket stays open to local clients (file permissions guard it)
            assert c.server_ready()
    finally:
        d.stop()
        d.close()


def test_an_unknown_model_is_a_startup_failure_naming_the_zoo(tmp_path):
    d = DaemonProcess(tmp_path / "d", ["--models", "alexnet"])
    try:
        d.start(wait=False)
        assert d.proc.wait(120) == 3
        assert "no model 'alexnet'" in d.log() and "resnet18" in d.log()
    finally:
        d.close()


def test_memory_pressure_cuts_the_budget_and_it_recovers_after_the_quiet_period(tmp_path, cache, models_dir):  # noqa: F811
    import os

    fifo = tmp_path / "pressure.fifo"
    os.mkfifo(fifo)
    d = DaemonProcess(
        tmp_path / "d",
        ["--models-dir", str(models_dir), "--models", "a.onnx", "--threads", "1",
         "--quiet-period-s", "2", "--min-dwell-s", "0.5"],
        env={"MEMORY_PRESSURE_WATCH": str(fifo)},
        cache=cache,
    )  # fmt: skip
    try:
        d.start()
        with d.client() as c:
            top = max(p.budget_bytes for p in c.plans("a"))
            c.set_budget(top)
            with open(fifo, "wb", buffering=0) as f:  # what systemd's pressure notification looks like to us
                f.write(b"pressure\n")
                status = until(
                    lambda: (
                        (s := c.status()).budget_source == "pressure" and s.models[0].budget_bytes < top and s
                    ),
                    "the pressure cut",
                )
            assert status.effective_budget_bytes == int(0.75 * top)
            assert status.models[0].budget_bytes <= 0.75 * top and status.HasField("last_pressure_event")
            c.infer("a", {"x": x_for()})
            status = until(lambda: (s := c.status()).budget_source == "operator" and s, "the recovery")
            assert status.models[0].budget_bytes == top
        log = d.log()
        assert "pressure" in log and log.count("swap [a]") >= 3
    finally:
        d.stop()
        d.close()
