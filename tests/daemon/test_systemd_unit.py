"""The packaged unit: systemd-analyze accepts it, its exposure is within the bar, and it is the only copy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from flexnn_api.sizes import parse_size

from flexnnd.daemon import install
from flexnnd.daemon.config import Config, render_default_toml
from flexnnd.main import main

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "flexnnd" / "daemon" / "data" / "flexnnd.service"
EXPOSURE_BAR = 1.0  # issue 15: `systemd-analyze security` exposure at most 1.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (Debian: systemd)"
)


def settings(text: str) -> dict[str, list[str]]:
    """Key -> values of the unit's assignments (a key may repeat), comments left out."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def installed_flexnnd() -> Path:
    """The flexnnd script pip installed for this interpreter."""
    script = Path(sysconfig.get_path("scripts")) / "flexnnd"
    if not script.is_file():
        pytest.skip(f"flexnnd is not installed at {script}: `pip install .` first")
    return script


def exposure(*args: str) -> float:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for flexnnd\.service: (\d+(?:\.\d+)?)", done.stdout)
    assert match, done.stdout + done.stderr
    return float(match.group(1))


def test_one_unit_in_the_repository():
    # systemd/flexnnd.service, which the README names, is a link to the packaged unit, not a copy.
    repo_copy = REPO / "systemd" / "flexnnd.service"
    assert repo_copy.is_symlink() and repo_copy.resolve() == UNIT.resolve()
    assert install.unit_template() == UNIT.read_text()


@needs_analyze
def test_verify_is_clean(tmp_path):
    # verify checks that ExecStart's binary exists: rendered for the flexnnd installed here.
    unit = tmp_path / "flexnnd.service"
    unit.write_text(install.render_unit(installed_flexnnd()))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert done.stderr == "" and done.returncode == 0, done.stderr


@needs_analyze
def test_security_exposure_within_the_bar(record_property):
    value = exposure(str(UNIT))
    record_property("systemd_exposure", value)
    assert value <= EXPOSURE_BAR


def test_print_unit_names_the_prefix(capsys):
    assert main(["--print-unit", "--prefix", "/srv/flexnn"]) == 0
    out = capsys.readouterr()
    assert settings(out.out)["ExecStart"] == ["/srv/flexnn/bin/flexnnd --config /etc/flexnn/flexnnd.toml"]
    assert out.out == UNIT.read_text().replace("/opt/flexnn/bin/flexnnd", "/srv/flexnn/bin/flexnnd")
    assert out.err == ""


def test_print_unit_defaults_to_this_environment(capsys):
    assert main(["--print-unit"]) == 0
    out = capsys.readouterr()
    executable = Path(sysconfig.get_path("scripts")) / "flexnnd"
    assert settings(out.out)["ExecStart"] == [f"{executable} --config /etc/flexnn/flexnnd.toml"]
    # A venv under /root or /home is hidden from the service by ProtectHome=yes: said, not silent.
    assert ("ProtectHome=yes" in out.err) == (install.protect_home_conflict(executable) is not None)


def test_print_unit_warns_of_a_prefix_protect_home_hides(capsys):
    assert main(["--print-unit", "--prefix", "/home/pi/venv"]) == 0
    err = capsys.readouterr().err
    assert "/home/pi/venv/bin/flexnnd is under /home" in err and "ProtectHome=yes" in err


def test_print_config_is_the_default_toml(capsys):
    assert main(["--print-config"]) == 0
    assert capsys.readouterr().out == render_default_toml()


def test_version_imports_neither_numba_nor_onnx():
    code = (
        "import sys; from flexnnd.main import main; main(['--version']); "
        "print(sorted(m for m in ('numba', 'onnx', 'numpy', 'grpc') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    from importlib.metadata import version

    assert done.stdout.splitlines() == [f"flexnnd {version('flexnn')}", "[]"]


def test_info_flags_refuse_daemon_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version", "--budget", "64M"])
    assert exit_.value.code == 2 and "unrecognized arguments: --budget 64M" in capsys.readouterr().err


def test_unit_settings():
    unit = settings(UNIT.read_text())
    assert unit["Type"] == ["notify"]
    assert "MemoryDenyWriteExecute" not in unit  # numba's JIT needs writable-then-executable memory
    assert "ProcSubset" not in unit  # would hide /proc/pressure/memory and /proc/meminfo
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["WatchdogSec"] and unit["Restart"] == ["on-failure"]
    for kind in ("Runtime", "State", "Cache", "Configuration"):
        assert unit[f"{kind}Directory"] == ["flexnn"], kind
    assert unit["RuntimeDirectoryMode"] == ["0750"]
    assert parse_size(unit["MemoryHigh"][0]) < parse_size(unit["MemoryMax"][0])
    # The configuration file lives in ConfigurationDirectory=, and draining fits in the stop timeout.
    assert unit["ExecStart"][0].endswith(" --config /etc/flexnn/flexnnd.toml")
    assert float(unit["TimeoutStopSec"][0]) > Config().grace_period_s
    assert set(unit["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
