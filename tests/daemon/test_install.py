"""`flexnnd install` / `uninstall` in a staging root: a real venv, the unit as installed, what stays and goes.

The venv is built once from a wheel of this tree with --system-site-packages, so pip finds the
dependencies already installed here and runs offline (about 10 s instead of a full download).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from flexnnd.daemon import install
from flexnnd.daemon.config import render_default_toml

from .test_systemd_unit import EXPOSURE_BAR, exposure, needs_analyze, settings

REPO = Path(__file__).resolve().parents[2]
PREFIX = Path("/opt/flexnn")


def flexnnd(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command line, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "flexnnd.main", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def staged(root: Path, path: Path | str) -> Path:
    return root / Path(path).relative_to("/")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: an in-tree build/ would leave stale modules for later wheels to pick up.
    source = out / "src"
    shutil.copytree(REPO, source, ignore=install.TREE_IGNORE)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", out, source],
        check=True, timeout=300, cwd=out,
    )  # fmt: skip
    (built,) = out.glob("flexnn-*.whl")
    return built


def install_into(root: Path, wheel: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    done = flexnnd("install", "--root", root, "--from", wheel, "--system-site-packages", *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def root(tmp_path_factory, wheel) -> Path:
    """A staging root with flexnn installed and enabled; read-only for the tests that share it."""
    root = tmp_path_factory.mktemp("root")
    install_into(root, wheel, "--enable")
    return root


def test_venv_runs_the_installed_flexnnd(root):
    venv = staged(root, PREFIX)
    script = venv / "bin" / "flexnnd"
    assert os.access(script, os.X_OK)
    # The image runs the venv at /opt/flexnn, so its scripts name that, not the staging path.
    assert script.read_text().splitlines()[0] == f"#!{PREFIX}/bin/python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv's own copy, not a tree's
    done = subprocess.run(
        [venv / "bin" / "python", "-m", "flexnnd.main", "--version"],
        capture_output=True,
        text=True,
        cwd=venv,
        env=env,
    )
    assert done.stdout == f"flexnnd {version('flexnn')}\n"
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import flexnnd; print(flexnnd.__file__)"],
        capture_output=True,
        text=True,
        cwd=venv,  # not this tree, which a cwd on sys.path would import
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the venv's copy, not this tree


def test_unit_and_config_as_installed(root):
    unit = staged(root, install.UNIT_FILE).read_text()
    assert settings(unit)["ExecStart"] == [f"{PREFIX}/bin/flexnnd --config {install.CONFIG_FILE}"]
    assert unit == install.render_unit(PREFIX / "bin" / "flexnnd")
    assert staged(root, install.CONFIG_FILE).read_text() == render_default_toml()
    wants = staged(root, "/etc/systemd/system/multi-user.target.wants/flexnnd.service")
    assert wants.is_symlink() and os.readlink(wants) == str(install.UNIT_FILE)  # --enable
    manifest = json.loads(staged(root, PREFIX / install.MANIFEST).read_text())
    links = ["/usr/local/bin/flexnnctl", "/usr/local/bin/flexnnd"]
    made = [str(PREFIX), *links, "/etc/flexnn", str(install.CONFIG_FILE), str(install.UNIT_FILE)]
    assert manifest["created"] == made
    for link in links:  # on PATH, for `flexnnctl status`
        assert os.readlink(staged(root, link)) == f"{PREFIX}/bin/{Path(link).name}"


@needs_analyze
def test_verify_the_unit_as_installed(root, tmp_path):
    # The image's own systemd units and /bin/kill (ExecReload=), copied from this machine; verify checks
    # ExecStart= and ExecReload= inside the root, so this is the unit exactly as written there.
    image = tmp_path / "image"
    shutil.copytree(root, image, symlinks=True)
    shutil.copytree("/usr/lib/systemd/system", staged(image, "/usr/lib/systemd/system"), symlinks=True)
    staged(image, "/bin").mkdir()
    shutil.copy2("/bin/kill", staged(image, "/bin/kill"))
    verify = ["systemd-analyze", "verify", "--man=no", f"--root={image}", "flexnnd.service"]
    done = subprocess.run(verify, capture_output=True, text=True, timeout=120)
    assert done.stderr == "" and done.returncode == 0, done.stderr
    assert exposure(f"--root={image}", "flexnnd.service") <= EXPOSURE_BAR
    # The check has teeth: without the venv's flexnnd, verify names it.
    staged(image, PREFIX / "bin" / "flexnnd").unlink()
    done = subprocess.run(verify, capture_output=True, text=True, timeout=120)
    assert f"Command {PREFIX}/bin/flexnnd is not executable" in done.stderr


def test_lifecycle_reinstall_uninstall_purge(tmp_path, wheel):
    root = tmp_path / "root"
    staged(root, "/usr/local/bin").mkdir(parents=True)
    staged(root, "/usr/local/bin/flexnnd").write_text("#!/bin/sh\n")  # someone else's
    first = install_into(root, wheel)
    assert "kept: /usr/local/bin/flexnnd (not a link to /opt/flexnn/bin/flexnnd" in first.stdout
    config = staged(root, install.CONFIG_FILE)
    config.write_text('budget = "64M"\n')  # the operator's
    staged(root, "/etc/flexnn/token").write_text("secret\n")  # not install's
    again = install_into(root, wheel)
    assert "venv exists: /opt/flexnn" in again.stdout
    assert f"kept: {install.CONFIG_FILE}" in again.stdout and config.read_text() == 'budget = "64M"\n'
    assert f"unchanged: {install.UNIT_FILE}" in again.stdout

    done = flexnnd("uninstall", "--root", root)
    assert done.returncode == 0, done.stderr
    assert not staged(root, install.UNIT_FILE).exists()
    assert sorted(p.name for p in staged(root, "/usr/local/bin").iterdir()) == ["flexnnd"]  # the foreign one
    assert sorted(p.name for p in staged(root, PREFIX).iterdir()) == [install.MANIFEST]  # for a later --purge
    assert config.read_text() == 'budget = "64M"\n'

    state = staged(root, "/var/lib/private/flexnn")  # as systemd makes them under DynamicUser=yes
    (state / "models").mkdir(parents=True)
    staged(root, "/var/lib/flexnn").symlink_to("private/flexnn")
    done = flexnnd("uninstall", "--root", root, "--purge")
    assert done.returncode == 0, done.stderr
    assert not config.exists() and not state.exists() and not staged(root, "/var/lib/flexnn").is_symlink()
    assert not staged(root, PREFIX).exists()
    assert staged(root, "/etc/flexnn/token").read_text() == "secret\n"
    assert "kept: /etc/flexnn (holds token, not written by flexnnd install)" in done.stdout

    done = flexnnd("uninstall", "--root", root)
    assert done.returncode == 1 and f"no {PREFIX}/{install.MANIFEST}" in done.stderr


def test_dry_run_prints_each_step_and_writes_nothing(tmp_path):
    root = tmp_path / "root"
    done = flexnnd("install", "--root", root, "--dry-run", "--enable", "--warm")
    assert done.returncode == 0, done.stderr
    assert not root.exists()
    lines = done.stdout.splitlines()
    assert lines[0] == f"install flexnn from {REPO} into {PREFIX} under {root}"  # this tree by default
    for step in (
        f"would run: {sys.executable} -m venv {root}/opt/flexnn",
        f"would write: {install.CONFIG_FILE}",
        f"would write: {install.UNIT_FILE}",
        "not run (staging root): systemctl daemon-reload",
        f"would run: systemctl --root={root} enable flexnnd.service",
        "not run (staging root: run it on the device): /opt/flexnn/bin/flexnnd warm --config /etc/flexnn/flexnnd.toml",
    ):
        assert step in lines, step
    assert any(line.startswith("would run: ") and " wheel --no-deps " in line for line in lines)
    assert any(
        line.startswith("not run (staging root: create the user in the image): useradd --system")
        for line in lines
    )


@pytest.mark.parametrize("prefix", ["/home/pi/flexnn", "/root/venv", "/run/user/1000/flexnn"])
def test_refuses_a_prefix_protect_home_hides(tmp_path, prefix):
    done = flexnnd("install", "--root", tmp_path, "--prefix", prefix)
    assert done.returncode == 2 and "ProtectHome=yes" in done.stderr and prefix in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_prefix_with_an_unquotable_path(tmp_path):
    done = flexnnd("install", "--root", tmp_path, "--prefix", "/opt/flex nn")
    assert done.returncode == 2 and "unquoted" in done.stderr


def test_refuses_a_prefix_holding_files_it_did_not_make(tmp_path):
    staged(tmp_path, "/opt/flexnn").mkdir(parents=True)
    staged(tmp_path, "/opt/flexnn/notes.txt").write_text("mine\n")
    done = flexnnd("install", "--root", tmp_path)
    assert done.returncode == 1 and "/opt/flexnn holds files flexnnd install did not make" in done.stderr
    assert staged(tmp_path, "/opt/flexnn/notes.txt").read_text() == "mine\n"


def test_refuses_to_replace_a_unit_it_did_not_write(tmp_path, wheel):
    unit = staged(tmp_path, install.UNIT_FILE)
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/usr/local/bin/flexnnd\n")
    done = flexnnd("install", "--root", tmp_path, "--from", wheel, "--dry-run")
    assert done.returncode == 1 and "did not write it; move it away or give --force" in done.stderr
    assert "systemctl edit flexnnd" in done.stderr


def test_now_needs_enable_and_a_running_systemd(tmp_path):
    done = flexnnd("install", "--root", tmp_path, "--now")
    assert done.returncode == 2 and "give --enable too" in done.stderr
    done = flexnnd("install", "--root", tmp_path, "--enable", "--now")
    assert done.returncode == 2 and "not a staging root" in done.stderr


def test_source_defaults_to_this_tree_and_names_a_missing_one(tmp_path):
    assert install.resolve_source(None) == ("tree", str(REPO))
    assert install.resolve_source("flexnn==0.1.0") == ("requirement", "flexnn==0.1.0")
    done = flexnnd("install", "--root", tmp_path, "--from", tmp_path / "flexnn-9.whl")
    assert done.returncode == 2 and "no such file or folder" in done.stderr
