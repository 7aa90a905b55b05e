"""The client alone (clients/pyproject.toml, `flexnn-client`): a wheel without the engine that talks to
the real daemon, as on a camera that only needs flexnnctl and the Python client."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import grpc
import numpy
import pytest
from google import protobuf

from flexnn_client import EXIT_FAILED, EXIT_OK
from tests.daemon.harness import ROOT
from tests.daemon.test_daemon_e2e import cache, daemon, models_dir  # noqa: F401 - shared fixtures


@pytest.fixture(scope="module")
def client_only(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, a folder where only it and its three dependencies are importable)."""
    tmp = tmp_path_factory.mktemp("client-only")
    source = shutil.copytree(
        ROOT / "clients", tmp / "src", ignore=shutil.ignore_patterns("examples", "__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp.glob("flexnn_client-*.whl")
    target = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # grpcio, protobuf and numpy by themselves: site-packages also holds the engine, which must stay out
    for module in (grpc, protobuf, numpy):
        package = Path(module.__file__).parent
        top = package.parent if module is protobuf else package  # google/ is a namespace package
        if not (target / top.name).exists():
            (target / top.name).symlink_to(top)
    for extra in ("numpy.libs", "typing_extensions.py"):
        found = Path(numpy.__file__).parents[1] / extra
        if found.exists():
            (target / extra).symlink_to(found)
    return wheel, target


def run(target: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    """python -S: no site-packages (and no editable finder); only `target` on the path."""
    return subprocess.run(
        [sys.executable, "-S", *args],
        env={"PYTHONPATH": str(target), **(env or {})},
        cwd=target,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_client_wheel_depends_on_grpc_protobuf_and_numpy_only(client_only):
    wheel, _ = client_only
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = Parser().parsestr(z.read(next(n for n in names if n.endswith("/METADATA"))).decode())
    requires = {r.split(">")[0].split("=")[0].strip().lower() for r in metadata.get_all("Requires-Dist")}
    assert requires == {"numpy", "grpcio", "protobuf"}
    assert {n.split("/")[0] for n in names if not n.startswith("flexnn_client-")} == {
        "flexnn_client",
        "flexnn_api",
    }


def test_the_client_alone_talks_to_the_daemon_and_refuses_local_commands_clearly(
    client_only,
    daemon,  # noqa: F811
    tmp_path,
):
    _, target = client_only
    assert run(target, "-c", "import flexnnd").returncode != 0  # the engine is really absent
    version = run(target, "-m", "flexnn_client.ctl", "--version")
    assert version.returncode == EXIT_OK and version.stdout.strip() == "flexnnctl 0.1.0", version
    status = run(target, "-m", "flexnn_client.ctl", "--address", str(daemon.socket), "status", "--json")
    assert status.returncode == EXIT_OK, status.stderr
    assert {m["name"] for m in json.loads(status.stdout)["models"]} >= {"a"}
    x = tmp_path / "x.npy"
    numpy.save(x, numpy.ones((1, 256), numpy.float32))
    infer = run(target, "-m", "flexnn_client.ctl", "--address", str(daemon.socket), "infer", "a", str(x))
    assert infer.returncode == EXIT_OK, infer.stderr
    imported = run(target, "-m", "flexnn_client.ctl", "import", str(x), str(tmp_path / "pkg"))
    assert imported.returncode == EXIT_FAILED and "needs the engine" in imported.stderr, imported.stderr
    assert "Traceback" not in imported.stderr
