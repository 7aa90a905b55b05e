"""systemd/flexnnd.service: systemd-analyze accepts it, and its exposure is within the issue's bar."""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from flexnn_api.sizes import parse_size

from flexnnd.daemon.config import Config

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "flexnnd.service"
EXPOSURE_BAR = 2.0  # issue 4: `systemd-analyze security` exposure at most 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
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
    """The flexnnd script pip installed for this interpreter (the unit names the system-wide path)."""
    script = Path(sysconfig.get_path("scripts")) / "flexnnd"
    if not script.is_file():
        pytest.skip(f"flexnnd is not installed at {script}: `pip install .` first")
    return script


@needs_analyze
def test_verify_is_clean(tmp_path):
    # verify checks that ExecStart's binary exists; the unit names /usr/local/bin (a root `pip install`),
    # so the copy under test names the script installed here, and nothing else changes.
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/flexnnd " in text
    unit = tmp_path / "flexnnd.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/flexnnd ", f"ExecStart={installed_flexnnd()} "))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert done.stderr == "" and done.returncode == 0, done.stderr


@needs_analyze
def test_security_exposure_within_the_bar(record_property):
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for flexnnd\.service: (\d+(?:\.\d+)?)", done.stdout)
    assert match, done.stdout + done.stderr
    exposure = float(match.group(1))
    record_property("systemd_exposure", exposure)
    assert exposure <= EXPOSURE_BAR, done.stdout


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
