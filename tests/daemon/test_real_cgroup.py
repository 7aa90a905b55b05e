"""The daemon in a real cgroup v1 memory cgroup: its limit goes down while it serves, it adapts and is
never OOM-killed; the limit goes back up and the daemon grows back after the quiet period."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np

from tests.daemon.harness import DaemonProcess
from tests.daemon.test_daemon_e2e import cache  # noqa: F401 - shared fixture
from tests.daemon.test_monitor import v1_test_cgroup  # noqa: F401 - shared fixture

MiB = 1 << 20
HEADROOM = 8 * MiB


def limit_for(budget: int, overhead: int) -> int:
    """The v1 limit at which the policy's cgroup budget ⌊0.9·limit⌋ − overhead − headroom is `budget`."""
    return -(-(budget + overhead + HEADROOM) * 10 // 9)


def set_limit(cgroup, limit: int, timeout: float = 60.0) -> None:
    """Lower or raise memory.limit_in_bytes; the kernel refuses (EBUSY) below what it cannot reclaim,
    so step down as the daemon releases memory."""
    path = cgroup / "memory.limit_in_bytes"
    deadline = time.monotonic() + timeout
    while True:
        usage = int((cgroup / "memory.usage_in_bytes").read_text())
        step = max(limit, min(usage + 16 * MiB, int(path.read_text())))
        with contextlib.suppress(OSError):
            path.write_text(f"{step}\n")
        if int(path.read_text()) <= limit + 4095 and step == limit:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"could not bring the limit to {limit:,} (usage {usage:,})")
        time.sleep(0.2)


def oom_kills(cgroup) -> int:
    fields = dict(line.split() for line in (cgroup / "memory.oom_control").read_text().splitlines())
    return int(fields.get("oom_kill", 0))


def test_daemon_adapts_to_a_lowered_limit_and_grows_back(tmp_path, cache, v1_test_cgroup):  # noqa: F811
    cgroup = v1_test_cgroup
    (cgroup / "memory.limit_in_bytes").write_text(f"{4 << 30}\n")
    join = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh"]
    d = DaemonProcess(
        tmp_path,
        [
            "--models",
            "resnet18",
            "--threads",
            "1",
            "--headroom",
            "8M",
            "--quiet-period-s",
            "3",
            "--min-dwell-s",
            "1",
        ],
        cache=cache,
        prefix=join,
    )
    stop = threading.Event()
    failures, served = [], [0]
    try:
        d.start()
        with d.client() as c:
            status = c.status()
            overhead = status.runtime_overhead_bytes
            plans = c.plans("resnet18")
            full = max(p.budget_bytes for p in plans)
            x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
            want = c.infer("resnet18", x)["logits"]

            def load():
                with d.client() as lc:
                    while not stop.is_set():
                        try:
                            y = lc.infer("resnet18", x)["logits"]
                            assert np.abs(y - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
                            served[0] += 1
                        except Exception as e:
                            failures.append(repr(e))

            workers = [threading.Thread(target=load) for _ in range(2)]
            for w in workers:
                w.start()
            set_limit(cgroup, limit_for(full, overhead))
            half = limit_for(full // 2, overhead)
            set_limit(cgroup, half)
            model = _until(
                lambda: (m := c.status().models[0]).ready and m.budget_bytes <= full // 2 and m,
                "adapting down",
            )
            assert model.arena_bytes < max(p.arena_bytes for p in plans)
            served_before = served[0]
            _until(lambda: served[0] > served_before + 3, "serving at the small plan")
            (cgroup / "memory.limit_in_bytes").write_text(f"{4 << 30}\n")
            _until(lambda: c.status().models[0].budget_bytes == full, "growing back after the quiet period")
            stop.set()
            for w in workers:
                w.join(120)
        assert d.proc.poll() is None, "the daemon died"
        assert oom_kills(cgroup) == 0
        assert not failures, failures[:3]
        assert "cgroup" in d.log()
    finally:
        stop.set()
        d.stop()
        d.close()


def _until(predicate, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
