"""Measure this machine's rates once (kernel paths, storage read bandwidth) and cache them."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import numba
import numpy as np

from flexnnd.errors import StorageError
from flexnnd.ops.conv import Conv
from flexnnd.ops.elementwise import Add
from flexnnd.planner.profile import Machine
from flexnnd.runtime.threads import set_threads
from flexnnd.storage import write_atomically

log = logging.getLogger("flexnnd.calibrate")

CALIBRATION_VERSION = 1


def _best_of(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _conv_rate(x_shape, w_shape, **attrs) -> float:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(w_shape, dtype=np.float32)
    consts = [None, w, np.zeros(w_shape[0], np.float32)]
    op, _ = Conv.from_onnx(attrs, consts, "calibration", 17)
    shapes = [x_shape, w_shape, (w_shape[0],)]
    (y_shape,) = op.infer(shapes, consts)
    prepared = op.prepare(consts)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    y = np.empty(y_shape, np.float32)
    scratch = np.empty(max(op.scratch_bytes(shapes) // 4, 1), np.float32)
    kernel = op.bind([x, prepared[1], prepared[2]], [y], scratch)
    return op.flops(shapes, [y_shape]) / _best_of(kernel)


def _memory_rate() -> float:
    a = np.random.default_rng(0).standard_normal((1, 64, 112, 112), dtype=np.float32)
    b, y = a.copy(), np.empty_like(a)
    kernel = Add().bind([a, b], [y], None)
    return 3 * a.nbytes / _best_of(kernel)


def _read_rate(path: Path) -> float:
    """Sequential read bandwidth of the file's storage, page cache dropped first."""
    size = min(path.stat().st_size, 64 << 20)
    buf = bytearray(1 << 20)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)
        start, done = time.perf_counter(), 0
        while done < size:
            got = os.preadv(fd, [buf], done)
            if got <= 0:
                break
            done += got
        seconds = time.perf_counter() - start
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return done / max(seconds, 1e-9)


def measure(weights_file: Path) -> Machine:
    set_threads(1)
    return Machine(
        gemm_flops=_conv_rate((1, 128, 28, 28), (256, 128, 3, 3), pads=[1, 1, 1, 1], strides=[2, 2]),
        winograd_flops=_conv_rate((1, 64, 56, 56), (64, 64, 3, 3), pads=[1, 1, 1, 1]),
        depthwise_flops=_conv_rate((1, 144, 56, 56), (144, 1, 3, 3), pads=[1, 1, 1, 1], group=144),
        memory_bytes=_memory_rate(),
        read_bytes=_read_rate(weights_file),
    )


def machine(cache_dir: Path, weights_file: Path) -> Machine:
    """This machine's rates, measured once per CPU, numba version and filesystem, then cached."""
    key = f"{platform.machine()}-{_cpu_model()}-numba{numba.__version__}-dev{os.stat(weights_file).st_dev}"
    path = Path(cache_dir) / "calibration.json"
    try:
        cached = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        cached = {}
    entry = cached.get(key)
    if entry and entry.get("version") == CALIBRATION_VERSION:
        return Machine(**entry["machine"])
    found = measure(weights_file)
    cached[key] = {"version": CALIBRATION_VERSION, "machine": found.__dict__}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomically(path, json.dumps(cached, indent=1), "calibration cache")
    except StorageError as e:  # the rates were measured: use them now, measure again next time
        log.warning("%s", e)
    return found


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip().replace(" ", "_")
    except OSError:
        pass
    return "unknown"
