"""The daemon's own costs: swap time, adaptation over time, gRPC overhead, idle memory, time to READY.

    python -m benchmarks.daemon                      # all parts; --parts first_start ctl swaps timeline grpc idle memory

- swaps: budget command → new plan serving (the SetBudget RPC returns once the plan is adopted),
  p50/p99 down (full → quarter) and up, for ResNet-50 and VGG-16. "Up" is measured twice: to an
  explicit full budget (old and new arenas cannot coexist inside it, so serving pauses while the new
  arena loads) and to `auto` (room for both: the old plan serves while the new one loads). A client
  infers throughout; the longest gap between its completed requests during the swap shows the pause.
- timeline: per-request latency and the daemon's RSS while the budget steps 100% → 25% → 60% →
  10% → 100% of the top rung (PNG).
- grpc: MobileNetV2 over the Unix socket vs Session.run in this process, interleaved blocks.
- ctl: flexnnctl's wall time per command (status, status --json, plans, --version), each a fresh
  process, interleaved with `python -c pass` (the floor of any Python command); the bar: status <= 0.3 s.
- idle: the daemon's RSS and anonymous RSS before any model, and time to READY with a warm cache.
- memory: per model set (ResNet-50, VGG-16, both), RSS after READY minus RSS before the models and
  minus the models' shares (arena and output copies): what the models hold besides their budget.
- first_start: the default model (mobilenet_v2), no flags but --no-watch-pressure, the daemon run by
  a fresh venv holding only flexnn's dependencies, as on a device (--this-python: this interpreter and
  its site-packages, where numba also imports whatever scipy or cffi it finds): time to READY on
  a fresh machine (new empty CACHE_DIRECTORY and NUMBA_CACHE_DIR: zoo build, import, a ladder planned
  with estimated rates, every kernel the model needs compiled; then, after READY, the calibration and
  the ladder planned again, timed apart) and warm (the same caches again), each start a fresh process; after
  the warm starts, RSS, RssAnon and RssFile beside the model's share of the budget (the issue's bars:
  cold <= 15 s, warm <= 2 s, RSS beside <= 130 MB, anonymous beside <= 64 MB). Also the machine's
  load average, since 2 shared cores make the cold start swing.

Writes benchmarks/results/daemon.json and daemon-timeline.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tests.daemon.harness import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".cache" / "daemon"


def pct(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else None


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


class Load:
    """One client inferring back to back; records (completion time, latency)."""

    def __init__(self, daemon: DaemonProcess, model: str, x: np.ndarray):
        self.daemon, self.model, self.x = daemon, model, x
        self.samples: list[tuple[float, float]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with self.daemon.client() as c:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    c.infer(self.model, self.x)
                except Exception as e:
                    self.errors.append(repr(e))
                    continue
                end = time.perf_counter()
                self.samples.append((end, end - start))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(120)

    def gap_within(self, start: float, end: float) -> float:
        """The longest time between completions around [start, end]."""
        times = [t for t, _ in self.samples]
        before = [t for t in times if t < start]
        inside = [t for t in times if start <= t <= end + 5]
        points = before[-1:] + inside
        return max((b - a for a, b in itertools.pairwise(points)), default=float("nan"))


def start_daemon(tmp: Path, models: list[str], models_dir: Path | None = None) -> DaemonProcess:
    """A daemon serving zoo names, or with `models_dir` package folders (or .onnx files) inside it."""
    where = ["--models-dir", str(models_dir)] if models_dir is not None else []
    d = DaemonProcess(
        tmp, [*where, "--models", *models, "--threads", "1", "--no-watch-pressure"], cache=CACHE
    )
    return d.start()


def bench_swaps(model: str, repeats: int, models_dir: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        d = start_daemon(Path(tmp), [model], models_dir)
        try:
            with d.client() as c:
                plans = c.plans(model)
                full = max(p.budget_bytes for p in plans)
                quarter = full // 4
                x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
                result = {"model": model, "full_bytes": full, "quarter_bytes": quarter}
                with Load(d, model, x) as load:
                    time.sleep(1.0)
                    base = statistics.median(lat for _, lat in load.samples) if load.samples else None
                    runs = {"down": [], "up_full": [], "up_auto": []}
                    gaps = {k: [] for k in runs}
                    for i in range(repeats):
                        for kind, budget in (("down", quarter), ("up_full" if i % 2 else "up_auto", None)):
                            target = budget if budget is not None else (full if kind == "up_full" else "auto")
                            start = time.perf_counter()
                            c.set_budget(target)
                            end = time.perf_counter()
                            runs[kind].append(end - start)
                            time.sleep(1.0)
                            gaps[kind].append(load.gap_within(start, end))
                        if i % 2 == 0:  # back to full via an explicit budget next time
                            c.set_budget(full)
                            time.sleep(0.5)
                    result["inference_median_s"] = base
                    result["errors"] = len(load.errors)
                for kind in runs:
                    result[kind] = {
                        "p50_s": pct(runs[kind], 50),
                        "p99_s": pct(runs[kind], 99),
                        "n": len(runs[kind]),
                        "longest_gap_s": pct(gaps[kind], 100),
                        "gap_over_inference": (pct(gaps[kind], 100) / base) if base else None,
                    }
                swaps = [m for m in c.status().models]
                result["swaps_reported"] = c.status().swaps
                del swaps
            return result
        finally:
            d.stop()
            d.close()


def bench_timeline(model: str, step_s: float) -> dict:
    fractions = [1.0, 0.25, 0.6, 0.1, 1.0]
    with tempfile.TemporaryDirectory() as tmp:
        d = start_daemon(Path(tmp), [model])
        try:
            with d.client() as c:
                plans = c.plans(model)
                full = max(p.budget_bytes for p in plans)
                smallest = min(p.budget_bytes for p in plans)
                x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
                rss, steps, commands = [], [], []
                stop = threading.Event()

                def sample():
                    while not stop.is_set():
                        st = proc_status(d.proc.pid)
                        rss.append((time.perf_counter(), st["VmRSS"], st["RssAnon"]))
                        time.sleep(0.05)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                t0 = time.perf_counter()
                with Load(d, model, x) as load:
                    for f in fractions:
                        budget = max(smallest, int(full * f))
                        sent = time.perf_counter() - t0
                        c.set_budget(budget)  # returns once the new plan serves
                        steps.append((time.perf_counter() - t0, budget))
                        commands.append(sent)
                        time.sleep(step_s)
                stop.set()
                sampler.join(5)
                overhead = c.status().runtime_overhead_bytes
            samples = [(t - t0, lat) for t, lat in load.samples]
            memory = [(t - t0, r, a) for t, r, a in rss]
            plot_timeline(model, samples, memory, steps, overhead)
            return {
                "model": model,
                "steps": [{"t_s": t, "budget_bytes": b} for t, b in steps],
                "requests": len(samples),
                "errors": len(load.errors),
                "runtime_overhead_bytes": overhead,
                "max_rss_minus_overhead_over_budget_bytes": max_excess(memory, steps, commands, overhead),
            }
        finally:
            d.stop()
            d.close()


def max_excess(memory, steps, commands, overhead) -> int:
    """Largest (RSS − runtime overhead − budget in force) over the samples from 1 s after a swap
    completed until the next budget command was sent (a swap up grows RSS before its step is logged)."""
    worst = -(1 << 62)
    ends = [*commands[1:], float("inf")]
    for t, r, _ in memory:
        for (done, budget), next_command in zip(steps, ends, strict=True):
            if done + 1.0 <= t < next_command:
                worst = max(worst, r - overhead - budget)
    return worst


def plot_timeline(model, samples, memory, steps, overhead):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    ax1.plot([t for t, _ in samples], [lat * 1e3 for _, lat in samples], ".", ms=3)
    ax1.set_ylabel("request latency (ms)")
    ax1.set_title(f"{model}: budget 100% → 25% → 60% → 10% → 100% of the top rung")
    ax2.plot(
        [t for t, _, _ in memory],
        [(r - overhead) / 2**20 for _, r, _ in memory],
        label="RSS − runtime overhead",
    )
    times = [t for t, _ in steps] + [memory[-1][0] if memory else 0]
    for (t, b), t_next in zip(steps, times[1:], strict=False):
        ax2.hlines(
            b / 2**20, t, t_next, colors="r", linestyles="--", label="budget" if t == steps[0][0] else None
        )
    ax2.set_ylabel("MiB")
    ax2.set_xlabel("time (s)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "daemon-timeline.png", dpi=110)
    plt.close(fig)


def bench_grpc(model: str, runs: int) -> dict:
    import flexnnd
    from flexnnd import zoo

    with tempfile.TemporaryDirectory() as tmp:
        d = start_daemon(Path(tmp), [model])
        try:
            path = zoo.cached(model, CACHE / "zoo")
            sess = flexnnd.Session(path, threads=1, cache_dir=CACHE / "packages-bench")
            spec = sess.inputs[0]
            x = np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32)
            local, remote = [], []
            with d.client() as c:
                c.infer(model, {spec.name: x})
                sess.run({spec.name: x})
                for _ in range(runs):
                    for fn, out in (
                        (lambda: sess.run({spec.name: x}), local),
                        (lambda: c.infer(model, {spec.name: x}), remote),
                    ):
                        start = time.perf_counter()
                        fn()
                        out.append(time.perf_counter() - start)
            sess.close()
            lm, rm = statistics.median(local), statistics.median(remote)
            return {
                "model": model,
                "session_run_median_s": lm,
                "grpc_median_s": rm,
                "ratio": rm / lm,
                "overhead_s": rm - lm,
                "runs": runs,
            }
        finally:
            d.stop()
            d.close()


def bench_idle(model: str, starts: int) -> dict:
    ready_s, before = [], []
    for _ in range(starts + 1):  # the first start warms the numba cache and the package cache
        with tempfile.TemporaryDirectory() as tmp:
            d = DaemonProcess(
                Path(tmp), ["--models", model, "--threads", "1", "--no-watch-pressure"], cache=CACHE
            )
            start = time.perf_counter()
            d.start()
            ready_s.append(time.perf_counter() - start)
            line = next(ln for ln in d.log().splitlines() if "runtime before models" in ln)
            before.append(line.split("runtime before models: ")[1])
            with d.client() as c:
                status = c.status()
            d.stop()
            d.close()
    return {
        "model": model,
        "time_to_ready_warm_s": statistics.median(ready_s[1:]),
        "time_to_ready_first_s": ready_s[0],
        "before_models": before[-1],
        "runtime_overhead_bytes": status.runtime_overhead_bytes,
        "rss_bytes_after_ready": status.rss_bytes,
    }


def bench_ctl(model: str, runs: int) -> dict:
    """flexnnctl's wall time per command against a running daemon, interleaved with the interpreter
    starting and doing nothing (the floor any Python command pays), each a fresh process."""
    import shutil
    import subprocess

    ctl = shutil.which("flexnnctl")
    command = [ctl] if ctl else [sys.executable, "-m", "flexnn_client.ctl"]
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "flexnnctl --version": [*command, "--version"],
        "flexnnctl status": [*command, "status"],
        "flexnnctl status --json": [*command, "status", "--json"],
        "flexnnctl plans": [*command, "plans", model],
    }
    with tempfile.TemporaryDirectory() as tmp:
        d = DaemonProcess(
            Path(tmp), ["--models", model, "--threads", "1", "--no-watch-pressure"], cache=CACHE
        )
        d.start()
        env = dict(d.env, FLEXNN_ADDRESS=str(d.socket))
        times: dict[str, list[float]] = {name: [] for name in cases}
        try:
            for _ in range(runs):
                for name, argv in cases.items():
                    start = time.perf_counter()
                    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=60)
                    times[name].append(time.perf_counter() - start)
        finally:
            d.stop()
            d.close()
    floor = statistics.median(times["python -c pass"])
    return {
        "model": model,
        "runs": runs,
        "command": " ".join(command),
        "median_s": {name: statistics.median(v) for name, v in times.items()},
        "ratio_to_python_pass": {name: statistics.median(v) / floor for name, v in times.items()},
    }


def _size_bytes(text: str) -> int:
    """format_size's text back to bytes (0.1-unit precision)."""
    scale = {"G": 1 << 30, "M": 1 << 20, "K": 1 << 10, "B": 1}[text[-1]]
    return int(float(text[:-1]) * scale)


def bench_memory(models: list[str], models_dir: Path | None = None, settle_s: float = 3.0) -> dict:
    """RSS the models hold beyond their shares of the budget (auto: every model on its top rung)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = start_daemon(Path(tmp), models, models_dir)
        try:
            line = next(ln for ln in d.log().splitlines() if "runtime before models" in ln)
            before = _size_bytes(line.split("runtime before models: RSS ")[1].split(",")[0])
            time.sleep(settle_s)  # the main loop's first ticks (heap trim) are over
            rss = proc_status(d.proc.pid)["VmRSS"]
            with d.client() as c:
                shares = {m.name: m.budget_bytes for m in c.status().models}
        finally:
            d.stop()
            d.close()
    beside = rss - before - sum(shares.values())
    return {
        "models": models,
        "rss_before_models_bytes": before,
        "rss_bytes": rss,
        "shares_bytes": shares,
        "beside_shares_bytes": beside,
        "beside_shares_mib": round(beside / 2**20, 1),
    }


def _start_timed(d: DaemonProcess) -> tuple[float, float]:
    """Seconds to READY, and to the end of a first start's calibration after READY."""
    start = time.perf_counter()
    d.start(settle=False)
    ready = time.perf_counter() - start
    d.wait_for_calibration(600)
    return ready, time.perf_counter() - start


def device_python(venv: Path) -> Path:
    """A venv holding flexnn's runtime dependencies and nothing else, as `flexnnd install` makes one
    on a device (this machine's site-packages also hold scipy, cffi and others numba imports if present)."""
    import subprocess
    import venv as venv_mod

    venv_mod.create(venv, with_pip=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(ROOT)], check=True)
    return python


def bench_first_start(cold_starts: int, warm_starts: int, python: Path | None, settle_s: float = 3.0) -> dict:
    """READY from a fresh machine and from warm caches, and the memory beside the budget after."""
    import os

    args = ["--no-watch-pressure"]
    cold, cold_calibrated, warm, memory, phases = [], [], [], [], []
    for _ in range(cold_starts):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            env = {"NUMBA_CACHE_DIR": str(tmp / "numba")}
            d = DaemonProcess(tmp / "cold", args, env=env, cache=tmp / "cache", python=python)
            try:
                ready, calibrated = _start_timed(d)
                cold.append(ready)
                cold_calibrated.append(calibrated)
                phases.append([ln.split(": ", 1)[1] for ln in d.log().splitlines() if ": done, " in ln])
            finally:
                d.stop()
                d.close()
            for i in range(warm_starts):
                d = DaemonProcess(tmp / f"warm{i}", args, env=env, cache=tmp / "cache", python=python)
                try:
                    warm.append(_start_timed(d)[0])
                    time.sleep(settle_s)  # the main loop's first ticks (heap trim) are over
                    st = proc_status(d.proc.pid)
                    with d.client() as c:
                        share = sum(m.budget_bytes for m in c.status().models)
                    memory.append(
                        {
                            "rss_beside_bytes": st["VmRSS"] - share,
                            "anon_beside_bytes": st["RssAnon"] - share,
                            "file_bytes": st["RssFile"],
                            "share_bytes": share,
                        }
                    )
                finally:
                    d.stop()
                    d.close()
    mib = lambda key: round(statistics.median(m[key] for m in memory) / 2**20, 1)  # noqa: E731
    return {
        "model": "mobilenet_v2",
        "python": "a venv with flexnn's dependencies only" if python else sys.executable,
        "load_average_1min": os.getloadavg()[0],
        "cold_ready_s": cold,
        "warm_ready_s": warm,
        "cold_ready_median_s": statistics.median(cold),
        "cold_calibrated_s": cold_calibrated,  # READY, then calibration and the ladder planned again
        "warm_ready_median_s": statistics.median(warm),
        "cold_phases": phases,
        "rss_beside_mib": mib("rss_beside_bytes"),
        "anon_beside_mib": mib("anon_beside_bytes"),
        "rss_file_mib": mib("file_bytes"),
        "share_mib": mib("share_bytes"),
        "memory": memory,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts", nargs="*", default=["idle", "first_start", "ctl", "grpc", "swaps", "timeline"]
    )
    parser.add_argument("--swap-models", nargs="*", default=["resnet50", "vgg16"])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--cold-starts", type=int, default=2, help="first_start: fresh-cache starts")
    parser.add_argument(
        "--warm-starts", type=int, default=3, help="first_start: warm starts after each cold one"
    )
    parser.add_argument(
        "--this-python",
        action="store_true",
        help="first_start: run the daemon with this interpreter and its site-packages, not a fresh venv",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "daemon.json")
    parser.add_argument(
        "--models-dir", type=Path, help="serve --swap-models as package folders in this directory"
    )
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out: dict = json.loads(args.out.read_text()) if args.out.exists() else {}  # parts not rerun are kept
    out.update({"machine": {"cpus": 2}, "python": sys.version.split()[0]})
    if "idle" in args.parts:
        out["idle"] = bench_idle("mobilenet_v2", 3)
        print(json.dumps(out["idle"], indent=1), flush=True)
    if "grpc" in args.parts:
        out["grpc"] = bench_grpc("mobilenet_v2", 30)
        print(json.dumps(out["grpc"], indent=1), flush=True)
    if "swaps" in args.parts:
        out["swaps"] = [bench_swaps(m, args.repeats, args.models_dir) for m in args.swap_models]
        print(json.dumps(out["swaps"], indent=1), flush=True)
    if "memory" in args.parts:
        sets = [[m] for m in args.swap_models] + ([args.swap_models] if len(args.swap_models) > 1 else [])
        out["memory"] = [bench_memory(ms, args.models_dir) for ms in sets]
        print(json.dumps(out["memory"], indent=1), flush=True)
    if "first_start" in args.parts:
        with tempfile.TemporaryDirectory() as venv:
            python = None if args.this_python else device_python(Path(venv))
            out["first_start"] = bench_first_start(args.cold_starts, args.warm_starts, python)
        print(
            json.dumps({k: v for k, v in out["first_start"].items() if k != "memory"}, indent=1), flush=True
        )
    if "ctl" in args.parts:
        out["ctl"] = bench_ctl("mobilenet_v2", 20)
        print(json.dumps(out["ctl"], indent=1), flush=True)
    if "timeline" in args.parts:
        out["timeline"] = bench_timeline("resnet50", 4.0)
        print(json.dumps(out["timeline"], indent=1), flush=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
