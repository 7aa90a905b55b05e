"""Monitor against fake cgroup v2 and v1 trees (FIFOs and eventfds standing in for the kernel's fds)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flexnnd.daemon.config import Config
from flexnnd.daemon.monitor import (
    CgroupPaths,
    EventCounts,
    Monitor,
    MonitorConfig,
    discover_cgroup,
)
from flexnnd.daemon.policy import BudgetPolicy, PolicyConfig


def monitor_config(proc_root: Path, fs_root: Path = Path("/"), **own) -> MonitorConfig:
    """The daemon's way: from a Config, with the monitor's own fields beside it."""
    return MonitorConfig.from_config(Config(proc_root=proc_root, fs_root=fs_root), **own)


MiB = 1 << 20
V1_UNLIMITED = 9223372036854771712
GENEROUS = 10.0  # seconds to wait for an event that was already sent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fake_proc(tmp_path: Path, cgroup: str, mountinfo: str, available_kb: int = 4_000_000) -> Path:
    proc = tmp_path / "proc"
    write(proc / "self" / "cgroup", cgroup)
    write(proc / "self" / "mountinfo", mountinfo)
    write(
        proc / "meminfo",
        f"MemTotal:        8000000 kB\nMemFree:  100 kB\nMemAvailable:    {available_kb} kB\n",
    )
    write(proc / "pressure" / "memory", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    return proc


V2_MOUNTINFO = (
    "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
    "30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
)


def v2_tree(tmp_path: Path, service: str = "/system.slice/flexnnd.service") -> tuple[MonitorConfig, Path]:
    proc = fake_proc(tmp_path, f"0::{service}\n", V2_MOUNTINFO)
    root = tmp_path / "root"
    top = root / "sys/fs/cgroup"
    write(top / "memory.stat", "anon 1\n")
    write(top / "system.slice" / "memory.max", f"{768 * MiB}\n")
    write(top / "system.slice" / "memory.high", "max\n")
    d = top / service.lstrip("/")
    write(d / "memory.max", f"{1024 * MiB}\n")
    write(d / "memory.high", f"{512 * MiB}\n")
    write(d / "memory.current", f"{300 * MiB}\n")
    write(
        d / "memory.stat", f"anon {200 * MiB}\nfile {100 * MiB}\ninactive_file {60 * MiB}\nactive_file 4096\n"
    )
    write(d / "memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n")
    write(d / "memory.pressure", "")
    return monitor_config(proc, root), d


# this machine's layout: hybrid, the memory controller on v1 at /sys/fs/cgroup/memory, the
# process in /process_api/<id> of that hierarchy, an empty v2 hierarchy at /sys/fs/cgroup/unified
V1_CGROUP = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/4410551b\n3:cpuset:/\n1:cpu:/\n0::/\n"
V1_MOUNTINFO = (
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)


def v1_tree(tmp_path: Path, limit: int = 256 * MiB) -> tuple[MonitorConfig, Path]:
    proc = fake_proc(tmp_path, V1_CGROUP, V1_MOUNTINFO)
    root = tmp_path / "root"
    write(root / "sys/fs/cgroup/unified/memory.pressure", "")
    d = root / "sys/fs/cgroup/memory/process_api/4410551b"
    write(d / "memory.limit_in_bytes", f"{limit}\n")
    write(d / "memory.usage_in_bytes", f"{100 * MiB}\n")
    write(
        d / "memory.stat",
        f"cache {40 * MiB}\nrss {60 * MiB}\ninactive_file {10 * MiB}\n"
        f"hierarchical_memory_limit {V1_UNLIMITED}\ntotal_inactive_file {30 * MiB}\n",
    )
    write(d / "memory.failcnt", "0\n")
    write(d / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    write(d / "memory.pressure_level", "")
    write(d / "cgroup.event_control", "")
    return monitor_config(proc, root), d


# ---------------------------------------------------------------------------------------------
# discovery


def test_v2_discovery_finds_the_service_cgroup_and_its_ancestors(tmp_path):
    config, d = v2_tree(tmp_path)
    found = discover_cgroup(config.proc_root, config.fs_root)
    assert (found.memory_dir, found.memory_version, found.unified_dir) == (d, 2, d)
    assert found.ancestors == (d.parent, d.parent.parent)


def test_v1_discovery_joins_mount_point_and_cgroup_path(tmp_path):
    config, d = v1_tree(tmp_path)
    found = discover_cgroup(config.proc_root, config.fs_root)
    assert (found.memory_dir, found.memory_version) == (d, 1)
    assert found.unified_dir == config.fs_root / "sys/fs/cgroup/unified"


def test_mount_root_is_stripped_from_the_cgroup_path(tmp_path):
    # a container that sees the host hierarchy from /docker/abc down, mounted at /sys/fs/cgroup
    mountinfo = "40 31 0:38 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    proc = fake_proc(tmp_path, "0::/docker/abc/worker\n", mountinfo)
    d = write(tmp_path / "root/sys/fs/cgroup/worker/memory.max", "max\n").parent
    found = discover_cgroup(proc, tmp_path / "root")
    assert (found.memory_dir, found.memory_version) == (d, 2)
    assert found.ancestors == (d.parent,)


def test_escaped_mount_point(tmp_path):
    mountinfo = "40 31 0:38 / /sys/fs/cgroup\\040v2 rw - cgroup2 cgroup2 rw\n"
    proc = fake_proc(tmp_path, "0::/a\n", mountinfo)
    d = write(tmp_path / "root/sys/fs/cgroup v2/a/memory.max", "max\n").parent
    assert discover_cgroup(proc, tmp_path / "root").memory_dir == d


def test_no_memory_controller_falls_back_cleanly(tmp_path):
    # v2 without the memory controller enabled, and a v1 memory line whose hierarchy is not mounted
    proc = fake_proc(tmp_path, "4:memory:/x\n0::/a\n", V2_MOUNTINFO)
    write(tmp_path / "root/sys/fs/cgroup/a/cgroup.procs", "")
    found = discover_cgroup(proc, tmp_path / "root")
    assert (found.memory_dir, found.memory_version) == (None, None)
    assert any("no memory controller" in note for note in found.notes)
    with Monitor(monitor_config(proc, tmp_path / "root")) as monitor:
        r = monitor.read()
        assert (r.limit, r.usage, r.working_set, r.mem_available) == (None, None, None, 4_000_000 * 1024)
        assert monitor.wait(0.0) == []


def test_unreadable_proc_is_a_note_not_a_crash(tmp_path):
    found = discover_cgroup(tmp_path / "nothing", tmp_path)
    assert found == CgroupPaths(None, None, None, notes=found.notes) and found.notes


# ---------------------------------------------------------------------------------------------
# readings


def test_v2_reading_takes_the_smallest_limit_over_ancestors(tmp_path):
    config, _ = v2_tree(tmp_path)
    with Monitor(config) as monitor:
        r = monitor.read()
    assert r.cgroup_version == 2
    assert (r.limit_max, r.limit_high, r.limit) == (768 * MiB, 512 * MiB, 512 * MiB)
    assert (r.usage, r.inactive_file, r.working_set) == (300 * MiB, 60 * MiB, 240 * MiB)
    assert r.mem_available == 4_000_000 * 1024


def test_v2_unlimited(tmp_path):
    config, d = v2_tree(tmp_path)
    for f in (d / "memory.max", d / "memory.high", d.parent / "memory.max"):
        f.write_text("max\n")
    with Monitor(config) as monitor:
        assert (monitor.read().limit_max, monitor.read().limit) == (None, None)


def test_v1_reading_and_the_unlimited_value(tmp_path):
    config, d = v1_tree(tmp_path)
    with Monitor(config) as monitor:
        r = monitor.read()
        assert (r.cgroup_version, r.limit, r.usage) == (1, 256 * MiB, 100 * MiB)
        # hierarchical: the whole subtree's inactive file cache
        assert r.working_set == 70 * MiB
        (d / "memory.limit_in_bytes").write_text(f"{V1_UNLIMITED}\n")
        assert monitor.read().limit is None
        # a parent's limit shows in hierarchical_memory_limit
        stat = (d / "memory.stat").read_text().replace(str(V1_UNLIMITED), str(128 * MiB))
        (d / "memory.stat").write_text(stat)
        assert monitor.read().limit == 128 * MiB


def test_v2_memory_events_increases_are_reported(tmp_path):
    config, d = v2_tree(tmp_path)
    with Monitor(config) as monitor:
        assert monitor.wait(0.0) == []
        (d / "memory.events").write_text("low 0\nhigh 7\nmax 1\noom 0\noom_kill 0\noom_group_kill 0\n")
        got = {(e.kind, e.count) for e in monitor.wait(0.0)}
        assert got == {("high", 7), ("max", 1)}
        assert monitor.read().events == EventCounts(high=7, max=1)
        # only increases: nothing new, nothing reported
        assert monitor.wait(0.0) == []
        (d / "memory.events").write_text("low 0\nhigh 9\nmax 1\noom 1\noom_kill 1\noom_group_kill 0\n")
        got = {(e.kind, e.count) for e in monitor.wait(0.0)}
        assert got == {("high", 2), ("oom", 1), ("oom_kill", 1)}


def test_v1_failcnt_and_oom_kill_are_reported_as_max_and_oom_kill(tmp_path):
    config, d = v1_tree(tmp_path)
    with Monitor(config) as monitor:
        (d / "memory.failcnt").write_text("12\n")
        (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
        got = {(e.kind, e.count) for e in monitor.wait(0.0)}
    assert got == {("max", 12), ("oom_kill", 2)}


# ---------------------------------------------------------------------------------------------
# pressure sources


def test_v2_psi_trigger_is_written_with_its_nul_to_the_own_cgroup(tmp_path):
    config, d = v2_tree(tmp_path)
    with Monitor(config) as monitor:
        assert monitor.sources == (f"psi:{d / 'memory.pressure'}",)
    assert (d / "memory.pressure").read_bytes() == b"some 150000 2000000\0"


def test_system_psi_when_the_cgroup_has_no_pressure_file(tmp_path):
    config, d = v2_tree(tmp_path)
    (d / "memory.pressure").unlink()
    with Monitor(config) as monitor:
        assert monitor.sources == (f"psi:{config.proc_root / 'pressure/memory'}",)
        assert any("no PSI trigger" in note for note in monitor.notes)
    assert (config.proc_root / "pressure/memory").read_bytes().startswith(b"some 150000 2000000\0")


def test_v1_pressure_level_registration_and_event(tmp_path):
    config, d = v1_tree(tmp_path)
    with Monitor(config) as monitor:
        assert len(monitor.sources) == 2 and monitor.sources[1].startswith("v1:")
        efd, _, level = (d / "cgroup.event_control").read_text().split()
        assert level == "medium" and int(efd) in monitor.filenos()
        # the kernel signals by adding to the eventfd; here the test does
        os.eventfd_write(int(efd), 2)
        events = monitor.wait(GENEROUS)
        assert [(e.kind, e.count) for e in events] == [("pressure", 2)]
        assert events[0].source.startswith("v1:")
    with pytest.raises(OSError):
        os.fstat(int(efd))


def test_a_pressure_event_through_a_fifo_wakes_wait(tmp_path):
    fifo = tmp_path / "pressure.fifo"
    os.mkfifo(fifo)
    config, _ = v2_tree(tmp_path)
    config = dataclasses.replace(config, env={"MEMORY_PRESSURE_WATCH": str(fifo)})
    with Monitor(config) as monitor:
        assert monitor.sources == (f"fifo:{fifo}",)
        threading.Timer(0.2, lambda: fifo.write_bytes(b"x")).start()
        events = monitor.wait(GENEROUS)
        assert [(e.kind, e.source) for e in events] == [("pressure", f"fifo:{fifo}")]
        # the data was read and discarded: nothing is pending
        assert monitor.wait(0.0) == []


def test_memory_pressure_write_goes_into_the_watched_file_and_nothing_else_is_watched(tmp_path):
    config, d = v2_tree(tmp_path)
    psi = write(tmp_path / "service" / "memory.pressure", "")
    trigger = b"some 200000 2000000\0"
    env = {"MEMORY_PRESSURE_WATCH": str(psi), "MEMORY_PRESSURE_WRITE": base64.b64encode(trigger).decode()}
    with Monitor(dataclasses.replace(config, env=env)) as monitor:
        assert monitor.sources == (f"psi:{psi}",)
    assert psi.read_bytes() == trigger
    assert (d / "memory.pressure").read_bytes() == b""


def test_memory_pressure_watch_without_write_gets_our_trigger(tmp_path):
    config, _ = v2_tree(tmp_path)
    psi = write(tmp_path / "service" / "memory.pressure", "")
    env = {"MEMORY_PRESSURE_WATCH": str(psi)}
    with Monitor(dataclasses.replace(config, env=env)):
        pass
    assert psi.read_bytes() == b"some 150000 2000000\0"


def test_memory_pressure_watch_dev_null_turns_pressure_off(tmp_path):
    config, d = v2_tree(tmp_path)
    env = {"MEMORY_PRESSURE_WATCH": "/dev/null"}
    with Monitor(dataclasses.replace(config, env=env)) as monitor:
        assert monitor.sources == ()
        assert monitor.read().limit == 512 * MiB
    assert (d / "memory.pressure").read_bytes() == b""


def test_memory_pressure_watch_socket(tmp_path):
    path = str(tmp_path / "pressure.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    config, _ = v2_tree(tmp_path)
    env = {"MEMORY_PRESSURE_WATCH": path, "MEMORY_PRESSURE_WRITE": base64.b64encode(b"hello\0").decode()}
    try:
        with Monitor(dataclasses.replace(config, env=env)) as monitor:
            peer, _ = server.accept()
            assert peer.recv(16) == b"hello\0"
            peer.sendall(b"!")
            assert [e.kind for e in monitor.wait(GENEROUS)] == ["pressure"]
            peer.close()
            # the peer is gone: the source is dropped, with a note, and wait() goes on
            assert monitor.wait(GENEROUS) == []
            assert monitor.sources == ()
            assert any("closed by its peer" in note for note in monitor.notes)
    finally:
        server.close()


def test_bad_memory_pressure_write_is_refused(tmp_path):
    config, _ = v2_tree(tmp_path)
    env = {"MEMORY_PRESSURE_WATCH": str(tmp_path / "x"), "MEMORY_PRESSURE_WRITE": "not base64!"}
    write(tmp_path / "x", "")
    with pytest.raises(ValueError, match="Base64"):
        Monitor(dataclasses.replace(config, env=env)).open()


def test_wake_returns_wait_early_and_close_releases_every_fd(tmp_path):
    config, _ = v1_tree(tmp_path)
    monitor = Monitor(config).open()
    fds = monitor.filenos()
    assert len(fds) == 3
    threading.Timer(0.2, monitor.wake).start()
    assert monitor.wait(GENEROUS) == []
    monitor.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert monitor.filenos() == ()
    with pytest.raises(RuntimeError):
        monitor.wait(0.0)


def test_memory_pressure_watch_that_cannot_be_opened_falls_back_with_a_note(tmp_path):
    config, d = v2_tree(tmp_path)
    env = {"MEMORY_PRESSURE_WATCH": str(tmp_path / "missing")}
    with Monitor(dataclasses.replace(config, env=env)) as monitor:
        assert monitor.sources == (f"psi:{d / 'memory.pressure'}",)
        assert any("cannot watch MEMORY_PRESSURE_WATCH" in note for note in monitor.notes)


def test_fifo_with_memory_pressure_write_gives_no_false_event(tmp_path):
    fifo = tmp_path / "pressure.fifo"
    os.mkfifo(fifo)
    config, _ = v2_tree(tmp_path)
    env = {
        "MEMORY_PRESSURE_WATCH": str(fifo),
        "MEMORY_PRESSURE_WRITE": base64.b64encode(b"some 1 2\0").decode(),
    }
    with Monitor(dataclasses.replace(config, env=env)) as monitor:
        assert monitor.wait(0.0) == []
        fifo.write_bytes(b"!")
        assert [e.kind for e in monitor.wait(GENEROUS)] == ["pressure"]


def test_config_rejects_a_malformed_trigger():
    with pytest.raises(ValueError, match="psi_trigger"):
        dataclasses.replace(monitor_config(Path("/proc")), psi_trigger="some 150ms 2s")


# ---------------------------------------------------------------------------------------------
# the real kernel


def test_real_psi_trigger_on_proc_pressure_memory(tmp_path):
    if not Path("/proc/pressure/memory").exists():
        pytest.skip("this kernel has no PSI (/proc/pressure/memory missing; boot with psi=1)")
    # a proc view with the kernel's pressure files but no cgroup to find: the system PSI fallback
    proc = tmp_path / "proc"
    write(proc / "self" / "cgroup", "0::/\n")
    write(proc / "self" / "mountinfo", "")
    (proc / "pressure").symlink_to("/proc/pressure")
    (proc / "meminfo").symlink_to("/proc/meminfo")
    with Monitor(monitor_config(proc, tmp_path)) as monitor:
        if not monitor.sources:
            # EINVAL is our trigger text being wrong (a missing NUL shortens the window); others are the machine
            assert not any("Invalid argument" in note for note in monitor.notes), monitor.notes
            pytest.skip(f"the kernel refused a PSI trigger: {monitor.notes}")
        assert monitor.sources == (f"psi:{proc / 'pressure/memory'}",)
        assert monitor.read().mem_available > 0
        # a file without a working trigger reports POLLERR at once and would be dropped
        monitor.wait(0.2)
        assert monitor.sources == (f"psi:{proc / 'pressure/memory'}",)
    # the kernel checks the trigger: a window over 10 s is refused, and the monitor says so
    with Monitor(
        dataclasses.replace(
            monitor_config(proc, tmp_path), psi_trigger="some 150000 20000000"
        )  # Config refuses it
    ) as monitor:
        assert monitor.sources == ()
        assert any("Invalid argument" in note for note in monitor.notes)


V1_MEMORY = Path("/sys/fs/cgroup/memory")

CHILD = r"""
import json, os, sys, time
print("ready", flush=True)
sys.stdin.readline()  # moved into the test cgroup by now: everything from here is charged there
from dataclasses import asdict
from flexnnd.daemon.monitor import Monitor, MonitorConfig
from flexnnd.daemon.config import Config
from flexnnd.daemon.policy import BudgetPolicy, PolicyConfig

def say(**kw):
    print(json.dumps(kw), flush=True)

policy, budget = BudgetPolicy(PolicyConfig.from_config(Config())), None
with Monitor(MonitorConfig.from_config(Config(), v1_pressure_level=sys.argv[1])) as m:
    say(dir=str(m.cgroup.memory_dir), version=m.cgroup.memory_version, sources=m.sources, notes=m.notes)
    for line in sys.stdin:
        cmd, *arg = line.split()
        if cmd == "read":
            r = m.read()
            d = policy.decide(time.monotonic(), r, None, 0, budget, [])
            budget = d.budget
            say(reading=asdict(r), working_set=r.working_set, budget=d.budget, source=d.source)
        elif cmd == "fill":  # write page cache beyond the limit: reclaim, failcnt, pressure_level
            with open(arg[0], "wb") as f:
                for _ in range(int(arg[1])):
                    f.write(b"x" * (1 << 20))
            events = m.wait(10.0) + m.wait(0.5)
            d = policy.decide(time.monotonic(), m.read(), None, 0, budget, events)
            say(events=[[e.kind, e.source, e.count] for e in events], budget=d.budget, source=d.source)
"""


def _make_test_cgroup(parent: Path, what: str):
    """A fresh child cgroup under `parent`, removed afterwards; skips where the machine says no."""
    if os.geteuid() != 0:
        pytest.skip(f"creating a {what} needs root")
    path = parent / f"flexnn-test-{os.getpid()}"
    try:
        path.mkdir()
    except OSError as e:
        pytest.skip(f"cannot create a {what} at {path}: {e}")
    try:
        yield path
    finally:
        # the test killed its process; the kernel may take a moment to let the cgroup go
        for _ in range(100):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        else:
            path.rmdir()


@pytest.fixture
def v1_test_cgroup():
    if not (V1_MEMORY / "cgroup.event_control").exists():
        pytest.skip(f"no cgroup v1 memory hierarchy at {V1_MEMORY}")
    yield from _make_test_cgroup(V1_MEMORY, "v1 memory cgroup")


@pytest.fixture
def v2_test_cgroup():
    mounts = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    points = [m[4] for m in mounts if "-" in m and m[m.index("-") + 1] == "cgroup2"]
    if not points:
        pytest.skip("no cgroup2 hierarchy mounted")
    yield from _make_test_cgroup(Path(points[0]), "cgroup2 cgroup")


def _line(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no answer from the child within {timeout} s"
    line = proc.stdout.readline()
    assert line, f"the child exited with {proc.wait()}: {proc.stderr.read()}"
    return line


def _ask(proc: subprocess.Popen, command: str) -> dict:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return json.loads(_line(proc))


@contextlib.contextmanager
def _monitor_child(cgroup: Path, v1_level: str = "low"):
    """A process moved into `cgroup` before it imports anything, running a Monitor on the real roots."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    env.pop("MEMORY_PRESSURE_WATCH", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, v1_level],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert _line(proc).strip() == "ready"
        (cgroup / "cgroup.procs").write_text(f"{proc.pid}\n")
        yield proc, _ask(proc, "go")
    finally:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()


def test_real_v1_cgroup_limit_change_and_pressure_level_eventfd(v1_test_cgroup, tmp_path):
    cg = v1_test_cgroup
    (cg / "memory.limit_in_bytes").write_text(f"{1024 * MiB}\n")
    try:
        with _monitor_child(cg) as (proc, hello):
            assert (hello["dir"], hello["version"]) == (str(cg), 1)
            assert any(s.startswith("v1:") for s in hello["sources"]), hello

            r = _ask(proc, "read")["reading"]
            assert (r["cgroup_version"], r["limit_max"]) == (1, 1024 * MiB)
            assert r["usage"] > 0

            # lower the limit while the child runs: it sees the new one
            usage = int((cg / "memory.usage_in_bytes").read_text())
            limit = (usage + 48 * MiB) // 4096 * 4096
            (cg / "memory.limit_in_bytes").write_text(f"{limit}\n")
            answer = _ask(proc, "read")
            assert answer["reading"]["limit_max"] == limit
            # and the policy, fed its readings, moves the budget down to the new limit at once
            cut_to = int(0.9 * limit) - Config().headroom
            assert (answer["budget"], answer["source"]) == (cut_to, "cgroup")

            # page cache written beyond the limit: reclaim signals the registered eventfd, and the
            # limit being hit shows as failcnt ("max")
            answer = _ask(proc, f"fill {tmp_path / 'fill'} 160")
            got = answer["events"]
            kinds = {kind for kind, _, _ in got}
            assert "pressure" in kinds, got
            assert any(kind == "pressure" and source.startswith("v1:") for kind, source, _ in got), got
            assert "max" in kinds, got
            assert (answer["budget"], answer["source"]) == (int(0.75 * cut_to), "pressure")
            assert proc.poll() is None, "the child was killed"
    finally:
        (tmp_path / "fill").unlink(missing_ok=True)


def test_real_cgroup2_psi_trigger_on_the_own_cgroup(v2_test_cgroup):
    """The trigger goes to the own cgroup's memory.pressure (here also in a hybrid layout)."""
    cg = v2_test_cgroup
    if not (cg / "memory.pressure").exists():
        pytest.skip(f"{cg} has no memory.pressure (kernel without PSI for cgroups)")
    with _monitor_child(cg) as (proc, hello):
        psi = f"psi:{cg / 'memory.pressure'}"
        assert hello["sources"][0] == psi, hello
        if hello["version"] == 2:
            # a pure v2 machine: the memory controller is here too, and memory.max moves the reading
            assert hello["dir"] == str(cg)
            (cg / "memory.max").write_text(f"{2048 * MiB}\n")
            assert _ask(proc, "read")["reading"]["limit_max"] == 2048 * MiB


def test_cgroup_dir_override_skips_discovery(tmp_path):
    _, d = v1_tree(tmp_path)
    with Monitor(monitor_config(tmp_path / "proc", cgroup_dir=d)) as monitor:
        assert (monitor.cgroup.memory_dir, monitor.cgroup.memory_version) == (d, 1)
        assert monitor.read().limit == 256 * MiB


def test_monitor_and_policy_in_a_main_loop(tmp_path):
    """The daemon's loop in small: wait, read, decide; a FIFO event and a lowered limit move the budget."""
    fifo = tmp_path / "pressure.fifo"
    os.mkfifo(fifo)
    config, d = v2_tree(tmp_path)
    config = dataclasses.replace(config, env={"MEMORY_PRESSURE_WATCH": str(fifo)})
    policy = BudgetPolicy(dataclasses.replace(PolicyConfig.from_config(Config()), headroom=0))
    with Monitor(config) as monitor:
        first = policy.decide(0.0, monitor.read(), None, 0, None, monitor.wait(0.0))
        assert (first.budget, first.source) == (int(0.9 * 512 * MiB), "cgroup")
        fifo.write_bytes(b"!")
        d2 = policy.decide(1.0, monitor.read(), None, 0, first.budget, monitor.wait(GENEROUS))
        assert (d2.budget, d2.source, d2.changed) == (int(0.75 * first.budget), "pressure", True)
        (d / "memory.high").write_text(f"{256 * MiB}\n")
        d3 = policy.decide(2.0, monitor.read(), None, 0, d2.budget, monitor.wait(0.0))
        assert (d3.budget, d3.source, d3.changed) == (int(0.9 * 256 * MiB), "cgroup", True)


def test_the_monitor_takes_its_settings_from_config_only(tmp_path):
    with pytest.raises(TypeError):
        MonitorConfig()  # no defaults of its own to drift from Config's
    config = Config(proc_root=tmp_path / "proc", fs_root=tmp_path, pressure_trigger="full 100000 1000000")
    got = MonitorConfig.from_config(config, v1_pressure_level="low")
    assert (got.proc_root, got.fs_root, got.psi_trigger, got.v1_pressure_level) == (
        tmp_path / "proc",
        tmp_path,
        "full 100000 1000000",
        "low",
    )
