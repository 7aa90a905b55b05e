"""Measure this machine's rates once (kernel paths, storage read bandwidth) and cache them."""

from __future__ import annotations

import json
import logging
import mmap
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numba
import numpy as np

from flexnnd import progress
from flexnnd.errors import StorageError
from flexnnd.graph.ir import Node
from flexnnd.ops import jit
from flexnnd.ops.base import Axis, Part
from flexnnd.ops.conv import Conv
from flexnnd.ops.gemm import Gemm
from flexnnd.ops.pool import MaxPool
from flexnnd.planner.profile import Machine, shared_bytes
from flexnnd.runtime.loader import open_weights
from flexnnd.runtime.threads import set_threads
from flexnnd.storage import write_atomically
from flexnnd.weights_file import BUNDLE_BYTES, DIRECT_ALIGN

log = logging.getLogger("flexnnd.calibrate")

# 2: small weights files read on a probe file (1 cached 0 B/s); 3: reads timed as the loader reads;
# 4: a read's latency measured apart from the rate, and what each channel part of a conv adds.
# 5: channel parts share one im2col / Winograd input, so what a part adds is measured again;
# 6: the best of three timed reads; 7: latency and rate fitted over sequential reads of three sizes.
# 8: fully connected layers priced by the weights they stream; memory-bound steps by a max pool.
# 9: kernels timed after a cache flush, as a model runs them.
# 10: what the loader's reads cost the compute thread meanwhile.
# 11: each kernel rate the best of three passes.
CALIBRATION_VERSION = 11
# Reads shorter than this time the system call more than the storage.
READ_PROBE_BYTES = 16 << 20
# Read sizes timed to tell the storage's per-read latency from its rate: the sizes the loader reads.
READ_SIZES = (128 << 10, 512 << 10, 2 << 20)
READ_TRIES = 3
# Rounds of compute timed alone and beside a reader, alternating. Short paired rounds, because the
# storage drifts within seconds; their mean, because the cost comes in spikes (here most rounds
# 20-60 us/MB, one in five 100-230) and a model pays the spikes too.
INTERFERENCE_ROUNDS = 21
INTERFERENCE_RUNS = 8  # of the calibration's small model per round (~25 ms)
# Passes over the kernel paths, each rate keeping its best: here one calibration in several timed
# the depthwise and memory-bound paths 2.3x slow (a slow second of the VM), for good.
KERNEL_PASSES = 3
# (input shape, weight shape, attributes) of the GEMM (im2col) and Winograd calibration convs
GEMM_CONV = ((1, 128, 28, 28), (256, 128, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]})
WINOGRAD_CONV = ((1, 64, 56, 56), (64, 64, 3, 3), {"pads": [1, 1, 1, 1]})
PARTS = 16  # channel parts of the calibration conv, as the planner cuts big weights
FC_INPUTS = 4096  # of the calibration FC, whose weights are twice the last-level cache
FALLBACK_CACHE_BYTES = 32 << 20  # the largest CPU cache when sysfs does not say (32 MiB here)
FALLBACK_READ_BYTES = (
    100e6  # a slow SD card's sequential read: used only for an empty weights file without a probe
)


# The rates a daemon's first start plans with before this machine is calibrated (it calibrates after
# READY and plans again): a little below this x86 VM's (GEMM 82, Winograd 128, depthwise 26 GFLOP/s)
# and an SD card's reads. Only the rungs below all-resident depend on them.
ESTIMATE = Machine(
    gemm_flops=40e9,
    winograd_flops=60e9,
    depthwise_flops=12e9,
    memory_bytes=8e9,
    read_bytes=FALLBACK_READ_BYTES,
    read_latency=1e-4,
    part_bytes=10e9,
    fc_bytes=10e9,
)


def default_cache_dir() -> Path:
    """Where this machine's rates (and, under packages/, imports of .onnx files) are cached."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flexnn"


def _best_of(fn, repeat: int = 5, flush: bool = True) -> float:
    """The fastest of `repeat` runs of `fn`, each after the caches were flushed: in a model, each
    step's weights and inputs were pushed out of them by the steps before (hot caches priced
    convolutions 10-45% too fast)."""
    fn()
    evict = np.empty(2 * _cache_bytes() if flush else 0, np.uint8)
    times = []
    for _ in range(repeat):
        evict.fill(1)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _conv_setup(x_shape, w_shape, **attrs):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(w_shape, dtype=np.float32)
    consts = [None, w, np.zeros(w_shape[0], np.float32)]
    op, _ = Conv.from_onnx(attrs, consts, "calibration", 17)
    shapes = [x_shape, w_shape, (w_shape[0],)]
    (y_shape,) = op.infer(shapes, consts)
    prepared = op.prepare(consts)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    y = np.empty(y_shape, np.float32)
    return op, shapes, y_shape, prepared, x, y


def _conv_rate(x_shape, w_shape, **attrs) -> float:
    kernel, flops = _bound_conv(x_shape, w_shape, **attrs)
    return flops / _best_of(kernel)


def _bound_conv(x_shape, w_shape, **attrs):
    """A conv's kernel, bound to its operands and scratch, and its FLOPs."""
    op, shapes, y_shape, prepared, x, y = _conv_setup(x_shape, w_shape, **attrs)
    scratch = np.empty(max(op.scratch_bytes(shapes) // 4, 1), np.float32)
    return op.bind([x, prepared[1], prepared[2]], [y], scratch), op.flops(shapes, [y_shape])


def _part_rate(x_shape, w_shape, **attrs) -> float:
    """Bytes/s at which each output-channel part re-reads the operand the parts share, from one
    conv run whole and cut into PARTS parts as the planner cuts it (one scratch for all)."""
    op, shapes, _, prepared, x, y = _conv_setup(x_shape, w_shape, **attrs)
    cout = w_shape[0]
    parts = [Part(Axis.CHANNELS, cout * i // PARTS, cout * (i + 1) // PARTS) for i in range(PARTS)]
    need = max(op.scratch_bytes(shapes, p) for p in [None, *parts])
    scratch = np.empty(max(need // 4, 1), np.float32)
    whole = _best_of(op.bind([x, prepared[1], prepared[2]], [y], scratch))
    reuse = [p.start > 0 and op.shares_operand(shapes, p) for p in parts]  # as the executor binds them
    kernels = [
        op.bind([x, prepared[1][p.start : p.stop], prepared[2][p.start : p.stop]], [y], scratch, p, r)
        for p, r in zip(parts, reuse, strict=True)
    ]

    def run_parts():
        for kernel in kernels:
            kernel()

    extra = (_best_of(run_parts) - whole) / PARTS
    node = Node("calibration", op, ("x", "w", "b"), ("y",), tuple(shapes))
    return shared_bytes(node) / extra if extra > 0 else 0.0  # 0: parts cost only their share


def _memory_rate() -> float:
    """Bytes/s in and out of a 3x3/2 max pool: pools are most of the memory-bound steps (an Add
    over the same tensor moved 3x the rate, and predicted the pools 3x too fast)."""
    kernel, moved = _bound_pool()
    return moved / _best_of(kernel)


def _bound_pool():
    """A 3x3/2 max pool over a 64x112x112 input, bound, and the bytes it moves."""
    shape = (1, 64, 112, 112)
    op, _ = MaxPool.from_onnx(
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, [None], "calibration", 17
    )
    (y_shape,) = op.infer([shape], [None])
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    y = np.empty(y_shape, np.float32)
    scratch = np.empty(max(op.scratch_bytes([shape]) // 4, 1), np.float32)
    return op.bind([x], [y], scratch), x.nbytes + y.nbytes


def _fc_rate() -> float:
    """Bytes/s of weights a one-row fully connected layer streams, with weights bigger than the
    caches, as a model's are by the time its classifier runs."""
    rows = 2 * _cache_bytes() // (4 * FC_INPUTS)
    op, _ = Gemm.from_onnx({"transB": 1}, [None, np.zeros((1, 1), np.float32)], "calibration", 17)
    # Already in the kernel's layout, (N, K): `prepare` would hold a float64 copy twice as big.
    weights = np.random.default_rng(0).standard_normal((rows, FC_INPUTS), dtype=np.float32)
    x = np.ones((1, FC_INPUTS), np.float32)
    y = np.empty((1, rows), np.float32)
    kernel = op.bind([x, weights, np.zeros(rows, np.float32)], [y], None)
    return weights.nbytes / _best_of(kernel, repeat=3, flush=False)  # its weights evict the caches


def _read_rate(path: Path) -> tuple[tuple[float, float, float], bool]:
    """Sequential read bandwidth of the file's storage, page cache dropped first, and what its
    reads cost the compute thread. A weights file too small to time (a tiny model has none at
    all) is replaced by a probe file beside it. Returns ((bytes/s, seconds per read, compute
    seconds per byte read), measured); not measured means an estimate, never to be cached."""
    if path.stat().st_size >= READ_PROBE_BYTES:
        return _storage_costs(path), True
    try:
        fd, probe = tempfile.mkstemp(prefix=".flexnn-read-probe-", dir=path.parent)
    except OSError as e:
        return _without_probe(path, e)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(READ_PROBE_BYTES))  # random: a compressing filesystem would fake zeros
            f.flush()
            os.fsync(f.fileno())
        return _storage_costs(Path(probe)), True
    except OSError as e:  # a full or small filesystem: the weights are there, the probe does not fit
        return _without_probe(path, e)
    finally:
        Path(probe).unlink(missing_ok=True)


def _without_probe(path: Path, error: OSError) -> tuple[tuple[float, float, float], bool]:
    """No room for the probe: time the weights file itself, an estimate."""
    log.warning(
        "cannot write a %d-byte read probe beside %s (%s): read bandwidth estimated from the %d-byte weights "
        "file; measured again next time",
        READ_PROBE_BYTES,
        path,
        error.strerror or error,
        path.stat().st_size,
    )
    return (_storage_costs(path) if path.stat().st_size else (FALLBACK_READ_BYTES, 0.0, 0.0)), False


def _storage_costs(path: Path) -> tuple[float, float, float]:
    """(bytes/s, seconds per read, compute seconds lost per byte read) of `path`'s storage."""
    return (*storage_speed(path), read_interference(path))


def storage_speed(path: Path) -> tuple[float, float]:
    """(bytes/s, seconds per read) of the storage `path` is on, timed now as the loader reads. Each
    read size keeps its fastest of READ_TRIES, so a moment of contention does not set the rate for
    good; a read of b bytes takes latency + b / rate, fitted over the sizes."""
    tries = [_timed_reads(Path(path)) for _ in range(READ_TRIES)]
    if not tries[0]:
        return FALLBACK_READ_BYTES, 0.0
    sizes = np.array([nbytes for nbytes, _ in tries[0]])
    seconds = np.array([[t for _, t in points] for points in tries]).min(axis=0)
    if len(sizes) > 1 and np.ptp(sizes) > 0:
        per_byte, latency = np.polyfit(sizes, seconds, 1)
        if per_byte > 0:
            return 1 / per_byte, max(float(latency), 0.0)
    return float(sizes.sum() / seconds.sum()), 0.0  # too little to tell the two apart


def _timed_reads(path: Path) -> list[tuple[float, float]]:
    """(bytes, seconds) of one read of each of READ_SIZES, read as the loader reads: sequentially,
    O_DIRECT where the filesystem allows it, else through the page cache without readahead
    (readahead alone made the rate ~1.4x what the loader gets, here). Timing one size and random
    small reads instead put the latency at 40 us where sequential reads of these sizes paid up to
    100 us, here."""
    size = min(path.stat().st_size, 48 << 20)
    buf = mmap.mmap(-1, max(READ_SIZES))  # page-aligned, as O_DIRECT wants
    view = memoryview(buf)
    fd, direct = open_weights(str(path))
    points: list[tuple[int, float]] = []
    try:
        reading = fd if direct is None else direct
        span = max(size // len(READ_SIZES) // DIRECT_ALIGN * DIRECT_ALIGN, DIRECT_ALIGN)
        for i, nbytes in enumerate(READ_SIZES):
            first = i * span if (i + 1) * span <= size else 0  # a small file: each size reads it all
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)
            offset, reads, start = first, 0, time.perf_counter()
            while offset < min(first + span, size):
                got = os.preadv(reading, [view[:nbytes]], offset)
                if got <= 0:
                    break
                offset, reads = offset + got, reads + 1
            if reads:
                points.append(((offset - first) / reads, (time.perf_counter() - start) / reads))
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
        if direct is not None:
            os.close(direct)
        view.release()
        buf.close()
    return points


def read_interference(path: Path, rounds: int = INTERFERENCE_ROUNDS) -> float:
    """Compute seconds lost per byte read meanwhile: a small model's kernels (a GEMM conv, a
    Winograd conv, a pool) timed alone and while a thread reads `path` as the loader does, in
    alternating rounds; the rounds' mean slowdown per byte read then. 0 when reads cost the
    compute thread nothing measurable."""
    size = path.stat().st_size // DIRECT_ALIGN * DIRECT_ALIGN
    if size < BUNDLE_BYTES:
        return 0.0
    kernels = [_bound_conv(x, w, **attrs)[0] for x, w, attrs in (GEMM_CONV, WINOGRAD_CONV)]
    kernels.append(_bound_pool()[0])

    def model() -> float:
        start = time.perf_counter()
        for _ in range(INTERFERENCE_RUNS):
            for kernel in kernels:
                kernel()
        return time.perf_counter() - start

    model()
    buf = mmap.mmap(-1, BUNDLE_BYTES)  # page-aligned, as O_DIRECT wants
    view = memoryview(buf)
    fd, direct = open_weights(str(path))
    costs = []
    try:
        for _ in range(rounds):
            alone = model()
            stop, got = threading.Event(), [0, None]
            reader = threading.Thread(target=_read_until, args=(fd, direct, view, size, stop, got))
            reader.start()
            time.sleep(0.001)  # the first read in flight before the compute starts
            before = got[0]
            busy = model()
            after = got[0]
            stop.set()
            reader.join()
            if got[1] is not None:  # as `storage_speed` does: a failing read is the caller's to see
                raise got[1]
            if after > before:
                costs.append((busy - alone) / (after - before))
    finally:
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        if direct is not None:
            os.close(direct)
        view.release()
        buf.close()
    return max(float(np.mean(costs)), 0.0) if costs else 0.0


def _read_until(fd: int, direct: int | None, view: memoryview, size: int, stop, got: list) -> None:
    """Read the file from its start in BUNDLE_BYTES reads, as the loader does, round and round until
    `stop`; `got[0]` counts the bytes read, `got[1]` keeps an OSError that ended the reading."""
    offset = 0
    try:
        while not stop.is_set():
            if offset + len(view) > size:
                os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)  # page-cache reads: start cold
                offset = 0
            n = os.preadv(fd if direct is None else direct, [view], offset)
            if n <= 0:
                offset = size
                continue
            if direct is None:
                os.posix_fadvise(fd, offset, n, os.POSIX_FADV_DONTNEED)
            offset += n
            got[0] += n
    except OSError as e:
        got[1] = e


def measure(weights_file: Path) -> tuple[Machine, bool]:
    """This machine's rates, and whether the read rate was measured (else estimated)."""
    set_threads(1)
    with (
        progress.task("calibrating this machine", total=1 + KERNEL_PASSES, detail="storage reads") as task,
        jit.compiling(),  # the first pass compiles the kernels it times
    ):
        (read_bytes, read_latency, read_cpu), measured = _read_rate(weights_file)
        task.advance(detail="kernel rates")
        passes = []
        for _ in range(KERNEL_PASSES):
            passes.append(_kernel_rates())
            task.advance(detail="kernel rates")
    rates = {rate: max(p[rate] for p in passes) for rate in passes[0]}
    # From a difference of two timings, whose largest is its noisiest: the median instead.
    rates["part_bytes"] = float(np.median([p["part_bytes"] for p in passes]))
    return Machine(
        **rates,
        read_bytes=read_bytes,
        read_latency=read_latency,
        read_cpu=read_cpu,
    ), measured


def _kernel_rates() -> dict[str, float]:
    """One pass over the kernel paths, each timed as `_best_of` times it."""
    return {
        "gemm_flops": _conv_rate(GEMM_CONV[0], GEMM_CONV[1], **GEMM_CONV[2]),
        "winograd_flops": _conv_rate(WINOGRAD_CONV[0], WINOGRAD_CONV[1], **WINOGRAD_CONV[2]),
        # The slower of the two paths big weights take: im2col (7x7 planes) and Winograd (14x14).
        "part_bytes": min(
            _part_rate((1, 512, 7, 7), (512, 512, 3, 3), pads=[1, 1, 1, 1]),
            _part_rate((1, 256, 14, 14), (256, 256, 3, 3), pads=[1, 1, 1, 1]),
        ),
        "depthwise_flops": _conv_rate((1, 144, 56, 56), (144, 1, 3, 3), pads=[1, 1, 1, 1], group=144),
        "memory_bytes": _memory_rate(),
        "fc_bytes": _fc_rate(),
    }


def _cache(cache_dir: Path, weights_file: Path) -> tuple[Path, str, dict]:
    """The calibration file, this machine's key in it (CPU, numba version, filesystem), its entries."""
    key = f"{platform.machine()}-{_cpu_model()}-numba{numba.__version__}-dev{os.stat(weights_file).st_dev}"
    path = Path(cache_dir) / "calibration.json"
    try:
        cached = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        cached = {}
    return path, key, cached


def cached_machine(cache_dir: Path, weights_file: Path) -> Machine | None:
    """This machine's cached rates; None when it was not calibrated yet (or by another version)."""
    _, key, cached = _cache(cache_dir, weights_file)
    entry = cached.get(key)
    if entry and entry.get("version") == CALIBRATION_VERSION:
        return Machine(**entry["machine"])
    return None


def machine(cache_dir: Path, weights_file: Path) -> Machine:
    """This machine's rates, measured once per CPU, numba version and filesystem, then cached."""
    found = cached_machine(cache_dir, weights_file)
    if found is not None:
        return found
    path, key, cached = _cache(cache_dir, weights_file)
    found, measured = measure(weights_file)
    if not measured:
        return found
    cached[key] = {"version": CALIBRATION_VERSION, "machine": found.__dict__}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(cached, indent=1), "calibration cache")
    except (OSError, StorageError) as e:  # the rates were measured: use them now, measure again next time
        log.warning("%s", e)
    return found


def _cache_bytes() -> int:
    """The largest CPU cache's size (sysfs), so that calibration evicts it and no more."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=FALLBACK_CACHE_BYTES)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip().replace(" ", "_")
    except OSError:
        pass
    return "unknown"
