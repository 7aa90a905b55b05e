"""The memory signals of the machine, as seen from the daemon's own cgroup.

`Monitor` finds the process's memory cgroup (v2 unified, or the v1 memory controller) from
`/proc/self/cgroup` and `/proc/self/mountinfo`, reads its limits and usage into a `Reading`, and
blocks in `wait()` on pressure file descriptors:

- `$MEMORY_PRESSURE_WATCH` when the service manager gives it (systemd's protocol: a PSI file is
  watched for POLLPRI, a FIFO or an AF_UNIX stream socket for POLLIN; the Base64-decoded
  `$MEMORY_PRESSURE_WRITE` is written right after opening; the literal `/dev/null` turns pressure
  watching off). Nothing else is watched then: the service manager has chosen. If the path cannot
  be opened, the monitor falls back to its own triggers and says so in `notes`.
- otherwise a PSI trigger on the own cgroup's v2 `memory.pressure` (also found in hybrid setups,
  where the v2 hierarchy carries no controllers but does carry PSI), else on
  `/proc/pressure/memory`; and, when the memory controller is v1, `memory.pressure_level` through
  `cgroup.event_control` and an eventfd.

Counters in `memory.events` (v2) or `memory.failcnt` and `memory.oom_control` (v1, reported as
`max` and `oom_kill`) are re-read on every return of `wait()`: kernfs notifies inotify only for
files watched directly, and polling a few small files once a second costs nothing.

Every path goes through `MonitorConfig.proc_root` and `MonitorConfig.fs_root` (mount points in
mountinfo are resolved under it), so tests run against fake trees. No gRPC, no model code here.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import logging
import os
import re
import select
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flexnnd.daemon.config import Config

log = logging.getLogger("flexnnd.monitor")

# v1 reports "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 on 4 KiB pages); anything
# this large is not a limit a machine can have.
UNLIMITED_THRESHOLD = 1 << 62
EVENT_NAMES = ("low", "high", "max", "oom", "oom_kill")


@dataclass(frozen=True)
class MonitorConfig:
    """Where the monitor looks and what it asks the kernel for: the settings come from Config only
    (from_config); cgroup_dir, v1_pressure_level and env are the monitor's own."""

    proc_root: Path  # where procfs is; tests point it at a fake tree
    fs_root: Path  # mount points from mountinfo are resolved under it
    # PSI trigger: stalled time and window in µs; unprivileged windows must be multiples of 2 s
    psi_trigger: str
    # the own memory cgroup directory, skipping discovery (its version is told by its files)
    cgroup_dir: Path | None = None
    # v1 memory.pressure_level: "low" fires on any reclaim (constant near a limit), "critical" too late
    v1_pressure_level: str = "medium"
    # the environment to take MEMORY_PRESSURE_WATCH/WRITE from (passed in, never read at import)
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config, **own) -> MonitorConfig:
        """The monitor's settings from the daemon's Config; `own`: cgroup_dir, v1_pressure_level, env."""
        return cls(
            proc_root=config.proc_root, fs_root=config.fs_root, psi_trigger=config.pressure_trigger, **own
        )

    def __post_init__(self) -> None:
        if not re.fullmatch(r"(some|full) \d+ \d+", self.psi_trigger):
            raise ValueError(
                f"psi_trigger must be 'some|full <stall µs> <window µs>', not {self.psi_trigger!r}"
            )
        if self.v1_pressure_level not in ("low", "medium", "critical"):
            raise ValueError(
                f"v1_pressure_level must be low, medium or critical, not {self.v1_pressure_level!r}"
            )


@dataclass(frozen=True)
class CgroupPaths:
    """Where the own cgroup's files are; None where there is no such thing."""

    memory_dir: Path | None  # directory with the memory controller's files
    memory_version: int | None  # 1 or 2 (None: no memory controller found)
    unified_dir: Path | None  # own cgroup in the v2 hierarchy (its memory.pressure), even in hybrid setups
    ancestors: tuple[Path, ...] = ()  # v2: parents up to the mount point, whose limits bind us too
    notes: tuple[str, ...] = ()  # how discovery went where it was not straightforward


@dataclass(frozen=True)
class EventCounts:
    """Cumulative counters of memory.events (v1: failcnt as max, oom_control's oom_kill)."""

    low: int = 0
    high: int = 0
    max: int = 0
    oom: int = 0
    oom_kill: int = 0


@dataclass(frozen=True)
class Reading:
    cgroup_version: int | None
    limit_max: int | None  # hard limit in bytes (v2 memory.max over ancestors, v1 hierarchical); None = none
    limit_high: int | None  # v2 memory.high over ancestors; None = none
    usage: int | None  # memory.current / memory.usage_in_bytes
    inactive_file: int | None  # page cache the kernel reclaims first
    events: EventCounts
    mem_available: int | None  # the system's MemAvailable

    @property
    def limit(self) -> int | None:
        """The smaller of memory.max and memory.high: the line reclaim starts at."""
        limits = [x for x in (self.limit_max, self.limit_high) if x is not None]
        return min(limits) if limits else None

    @property
    def working_set(self) -> int | None:
        """Usage minus inactive file cache, as the kernel's own OOM decisions see it."""
        if self.usage is None:
            return None
        return max(0, self.usage - (self.inactive_file or 0))


@dataclass(frozen=True)
class MemoryEvent:
    kind: str  # "pressure", or a memory.events counter name: low, high, max, oom, oom_kill
    source: str  # the fd's description or the counter file
    count: int = 1  # how many: counter increase, eventfd count; 1 for a PSI or FIFO wake-up


# ---------------------------------------------------------------------------------------------
# discovery


def _unescape(s: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


@dataclass(frozen=True)
class _Mount:
    root: str  # the path inside the hierarchy that is mounted
    point: str
    fstype: str
    super_options: tuple[str, ...]


def _mounts(mountinfo: str) -> list[_Mount]:
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        mounts.append(_Mount(_unescape(fields[3]), _unescape(fields[4]), tail[0], tuple(tail[2].split(","))))
    return mounts


def _relative(mount_root: str, cgroup_path: str) -> str | None:
    """The cgroup's path below the mount's root, or None when the mount does not show it."""
    if mount_root == "/":
        return cgroup_path
    if cgroup_path == mount_root:
        return "/"
    if cgroup_path.startswith(mount_root.rstrip("/") + "/"):
        return cgroup_path[len(mount_root.rstrip("/")) :]
    return None


def _locate(mounts: list[_Mount], cgroup_path: str, fs_root: Path) -> tuple[Path, Path] | None:
    """(cgroup directory, mount point directory) through the first mount that shows the path."""
    for mount in mounts:
        rel = _relative(mount.root, cgroup_path)
        if rel is not None:
            point = fs_root / mount.point.lstrip("/")
            return point / rel.lstrip("/"), point
    return None


def discover_cgroup(proc_root: Path = Path("/proc"), fs_root: Path = Path("/")) -> CgroupPaths:
    """Find the own memory cgroup: v1 memory controller if mounted, else v2 with a memory controller."""
    notes: list[str] = []
    try:
        own = (proc_root / "self" / "cgroup").read_text()
        mounts = _mounts((proc_root / "self" / "mountinfo").read_text())
    except OSError as e:
        return CgroupPaths(None, None, None, notes=(f"cannot read own cgroup: {e}",))
    v1_path = v2_path = None
    for line in own.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path

    unified_dir = v2_top = None
    v2_mounts = [m for m in mounts if m.fstype == "cgroup2"]
    if v2_path is not None and v2_mounts:
        found = _locate(v2_mounts, v2_path, fs_root)
        if found is None:
            notes.append(f"v2 cgroup {v2_path} is not visible through any cgroup2 mount")
        else:
            unified_dir, v2_top = found

    if v1_path is not None:
        v1_mounts = [m for m in mounts if m.fstype == "cgroup" and "memory" in m.super_options]
        found = _locate(v1_mounts, v1_path, fs_root)
        if found is not None and (found[0] / "memory.limit_in_bytes").exists():
            return CgroupPaths(found[0], 1, unified_dir, notes=tuple(notes))
        notes.append(f"v1 memory cgroup {v1_path} is not visible through any memory mount")

    if unified_dir is not None and v2_top is not None:
        if (unified_dir / "memory.stat").exists() or (unified_dir / "memory.max").exists():
            ancestors, parent = [], unified_dir
            while parent != v2_top and v2_top in parent.parents:
                parent = parent.parent
                ancestors.append(parent)
            return CgroupPaths(unified_dir, 2, unified_dir, tuple(ancestors), tuple(notes))
        notes.append(f"v2 cgroup {unified_dir} has no memory controller")
    notes.append("no memory controller found: only system memory and pressure are watched")
    return CgroupPaths(None, None, unified_dir, notes=tuple(notes))


# ---------------------------------------------------------------------------------------------
# readings


def _read_int(path: Path) -> int | None:
    """An integer file, None when missing or "max" (v2's no-limit)."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if text == "max":
        return None
    value = int(text)
    return None if value >= UNLIMITED_THRESHOLD else value


def _read_keyed(path: Path) -> dict[str, int]:
    """A "key value" file (memory.stat, memory.events, oom_control); {} when missing."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    pairs = (line.split() for line in text.splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].lstrip("-").isdigit()}


def _min_limit(values: list[int | None]) -> int | None:
    limits = [v for v in values if v is not None]
    return min(limits) if limits else None


def read_mem_available(proc_root: Path) -> int | None:
    try:
        text = (proc_root / "meminfo").read_text()
    except FileNotFoundError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


def read_event_counts(cgroup: CgroupPaths) -> EventCounts:
    d = cgroup.memory_dir
    if d is None:
        return EventCounts()
    if cgroup.memory_version == 2:
        counts = _read_keyed(d / "memory.events")
        return EventCounts(**{name: counts.get(name, 0) for name in EVENT_NAMES})
    failcnt = _read_int(d / "memory.failcnt") or 0
    return EventCounts(max=failcnt, oom_kill=_read_keyed(d / "memory.oom_control").get("oom_kill", 0))


def read_cgroup(cgroup: CgroupPaths, proc_root: Path) -> Reading:
    d = cgroup.memory_dir
    available = read_mem_available(proc_root)
    if d is None:
        return Reading(None, None, None, None, None, EventCounts(), available)
    if cgroup.memory_version == 2:
        dirs = (d, *cgroup.ancestors)
        stat_ = _read_keyed(d / "memory.stat")
        return Reading(
            2,
            _min_limit([_read_int(p / "memory.max") for p in dirs]),
            _min_limit([_read_int(p / "memory.high") for p in dirs]),
            _read_int(d / "memory.current"),
            stat_.get("inactive_file"),
            read_event_counts(cgroup),
            available,
        )
    stat_ = _read_keyed(d / "memory.stat")
    hierarchical = stat_.get("hierarchical_memory_limit")
    if hierarchical is not None and hierarchical >= UNLIMITED_THRESHOLD:
        hierarchical = None
    return Reading(
        1,
        _min_limit([_read_int(d / "memory.limit_in_bytes"), hierarchical]),
        None,
        _read_int(d / "memory.usage_in_bytes"),
        stat_.get("total_inactive_file", stat_.get("inactive_file")),
        read_event_counts(cgroup),
        available,
    )


# ---------------------------------------------------------------------------------------------
# pressure sources


@dataclass
class _Source:
    name: str  # shown in status and in events
    fd: int
    mask: int  # POLLPRI (PSI) or POLLIN (FIFO, socket, eventfd)
    kind: str  # "psi", "fifo", "socket", "eventfd"
    sock: socket.socket | None = None

    def consume(self) -> int:
        """Take what the wake-up left behind: how many events it stands for, -1 when the peer is gone."""
        if self.kind == "psi":
            return 1
        if self.kind == "eventfd":
            return os.eventfd_read(self.fd)
        got = 0
        while True:
            try:
                chunk = self.sock.recv(4096) if self.sock else os.read(self.fd, 4096)
            except BlockingIOError:
                return 1 if got else 0
            if not chunk:
                return 1 if got else -1
            got += len(chunk)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        else:
            os.close(self.fd)


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _open_watch(path: str, payload: bytes | None, default_trigger: bytes) -> _Source:
    """Open $MEMORY_PRESSURE_WATCH as systemd's protocol says, by the kind of inode it names."""
    mode = os.stat(path).st_mode
    if stat.S_ISSOCK(mode):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
            if payload:
                sock.sendall(payload)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return _Source(f"socket:{path}", sock.fileno(), select.POLLIN, "socket", sock)
    if stat.S_ISFIFO(mode):
        # read-write: we hold a writer ourselves, so a peer closing its end is not an endless POLLHUP
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        if payload:
            os.write(fd, payload)
            # a FIFO is one pipe: what we wrote would come straight back to us as a false event
            _drain(fd)
        return _Source(f"fifo:{path}", fd, select.POLLIN, "fifo")
    # a PSI file; without a trigger written, poll() reports POLLPRI at once and for ever
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, payload if payload else default_trigger)
    except OSError:
        os.close(fd)
        raise
    return _Source(f"psi:{path}", fd, select.POLLPRI, "psi")


def _open_psi(path: Path, trigger: bytes) -> _Source:
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, trigger)
    except OSError:
        os.close(fd)
        raise
    return _Source(f"psi:{path}", fd, select.POLLPRI, "psi")


def _open_v1_pressure_level(memory_dir: Path, level: str) -> _Source:
    """Register an eventfd for memory.pressure_level; closing the eventfd unregisters it."""
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        level_fd = os.open(memory_dir / "memory.pressure_level", os.O_RDONLY | os.O_CLOEXEC)
        try:
            control = os.open(memory_dir / "cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(control, f"{efd} {level_fd} {level}".encode())
            finally:
                os.close(control)
        finally:
            # the kernel keeps what it needs of the registration; the level file can go
            os.close(level_fd)
    except OSError:
        os.close(efd)
        raise
    return _Source(f"v1:{memory_dir / 'memory.pressure_level'} ({level})", efd, select.POLLIN, "eventfd")


def _decode_write(env: Mapping[str, str]) -> bytes | None:
    text = env.get("MEMORY_PRESSURE_WRITE")
    if not text:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"MEMORY_PRESSURE_WRITE is not Base64: {text!r} ({e})") from e


class Monitor:
    """Readings of the own cgroup and the system, and a blocking wait for memory events."""

    def __init__(self, config: MonitorConfig | None = None):
        self.config = config or MonitorConfig()
        self.cgroup = CgroupPaths(None, None, None)
        self._sources: list[_Source] = []
        self._poll: select.poll | None = None
        self._wake_fd = -1
        self._counts = EventCounts()
        self._notes: list[str] = []

    # -- lifecycle

    def open(self) -> Monitor:
        if self._poll is not None:
            return self
        cfg = self.config
        if cfg.cgroup_dir is not None:
            version = 1 if (cfg.cgroup_dir / "memory.limit_in_bytes").exists() else 2
            unified = cfg.cgroup_dir if version == 2 else None
            self.cgroup = CgroupPaths(cfg.cgroup_dir, version, unified)
        else:
            self.cgroup = discover_cgroup(cfg.proc_root, cfg.fs_root)
        self._notes = list(self.cgroup.notes)
        self._poll = select.poll()
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._poll.register(self._wake_fd, select.POLLIN)
        try:
            self._open_sources()
        except BaseException:
            self.close()
            raise
        self._counts = read_event_counts(self.cgroup)
        for note in self._notes:
            log.warning("memory monitor: %s", note)
        log.info(
            "memory monitor: cgroup %s (v%s), pressure from %s",
            self.cgroup.memory_dir,
            self.cgroup.memory_version,
            ", ".join(self.sources) or "nothing",
        )
        return self

    def _open_sources(self) -> None:
        cfg = self.config
        trigger = cfg.psi_trigger.encode() + b"\0"
        watch = cfg.env.get("MEMORY_PRESSURE_WATCH")
        if watch:
            if watch == "/dev/null":
                self._notes.append("MEMORY_PRESSURE_WATCH=/dev/null: pressure watching turned off")
                return
            payload = _decode_write(cfg.env)
            try:
                self._add(_open_watch(watch, payload, trigger))
                return
            except OSError as e:
                self._notes.append(f"cannot watch MEMORY_PRESSURE_WATCH={watch}: {e}; using our own triggers")
        candidates = []
        if self.cgroup.unified_dir is not None:
            candidates.append(self.cgroup.unified_dir / "memory.pressure")
        candidates.append(cfg.proc_root / "pressure" / "memory")
        for path in candidates:
            try:
                self._add(_open_psi(path, trigger))
                break
            except OSError as e:
                self._notes.append(f"no PSI trigger on {path}: {os.strerror(e.errno or errno.EIO)}")
        if self.cgroup.memory_version == 1 and self.cgroup.memory_dir is not None:
            try:
                self._add(_open_v1_pressure_level(self.cgroup.memory_dir, cfg.v1_pressure_level))
            except OSError as e:
                self._notes.append(f"no v1 pressure_level events: {e}")

    def _add(self, source: _Source) -> None:
        assert self._poll is not None
        self._sources.append(source)
        self._poll.register(source.fd, source.mask)

    def close(self) -> None:
        for source in self._sources:
            source.close()
        self._sources.clear()
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1
        self._poll = None

    def __enter__(self) -> Monitor:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what it watches

    @property
    def sources(self) -> tuple[str, ...]:
        """The pressure sources being watched, e.g. ("psi:/proc/pressure/memory",)."""
        return tuple(s.name for s in self._sources)

    @property
    def notes(self) -> tuple[str, ...]:
        """Fallbacks taken and sources lost, for the daemon's status."""
        return tuple(self._notes)

    def filenos(self) -> tuple[int, ...]:
        """Every fd `wait()` polls (pressure sources and the wake-up eventfd)."""
        return (*(s.fd for s in self._sources), self._wake_fd) if self._poll is not None else ()

    # -- readings and events

    def read(self) -> Reading:
        return read_cgroup(self.cgroup, self.config.proc_root)

    def wake(self) -> None:
        """Make a blocked `wait()` return now (from another thread or a signal handler)."""
        if self._wake_fd >= 0:
            os.eventfd_write(self._wake_fd, 1)

    def wait(self, timeout: float) -> list[MemoryEvent]:
        """Block up to `timeout` seconds for pressure; return pressure events and counter increases."""
        if self._poll is None:
            raise RuntimeError("Monitor.wait() before open()")
        events: list[MemoryEvent] = []
        for fd, revents in self._poll.poll(max(0.0, timeout) * 1000.0):
            if fd == self._wake_fd:
                os.eventfd_read(self._wake_fd)
                continue
            source = next(s for s in self._sources if s.fd == fd)
            count = source.consume() if revents & (select.POLLIN | select.POLLPRI) else 0
            if count > 0:
                events.append(MemoryEvent("pressure", source.name, count))
            elif count < 0:
                self._drop(source, f"pressure source {source.name} closed by its peer")
            elif revents & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                # PSI reports POLLERR when its cgroup goes away
                self._drop(source, f"pressure source {source.name} failed (poll events {revents:#x})")
        events.extend(self._counter_increases())
        return events

    def _drop(self, source: _Source, why: str) -> None:
        assert self._poll is not None
        log.warning("memory monitor: %s; no longer watched", why)
        self._notes.append(why)
        self._poll.unregister(source.fd)
        self._sources.remove(source)
        source.close()

    def _counter_increases(self) -> list[MemoryEvent]:
        counts = read_event_counts(self.cgroup)
        before, self._counts = self._counts, counts
        where = str(self.cgroup.memory_dir)
        out = []
        for name in EVENT_NAMES:
            delta = getattr(counts, name) - getattr(before, name)
            # a counter that went down belongs to a recreated cgroup: the new values are the baseline
            if delta > 0:
                out.append(MemoryEvent(name, where, delta))
        return out
