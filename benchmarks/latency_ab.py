"""Same-run latency A/B: this checkout against another git revision, all-resident inference.

    python -m benchmarks.latency_ab --rev cf7c19e                       # every zoo model
    python -m benchmarks.latency_ab --rev cf7c19e --models resnet18 --blocks 15 --runs 5

Each side is a worker process with its own checkout on PYTHONPATH (the other revision in a
temporary git worktree), its own import cache and numba cache, one thread, and the same model file
and input. After warm-up the workers take turns, `--runs` inferences a block, the side that starts
a pair alternating, so machine drift hits both alike. Per model: the median of each side's block
medians and the ratio here ÷ there (below 1: this checkout is faster); the spread is the range of
the per-pair ratios. Writes benchmarks/results/latency-ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".cache"


def worker(onnx_path: str, cache: str) -> None:
    """Run in the worker process: import the model, then answer 'N' with N inference times."""
    import numpy as np

    from flexnnd import Session

    session = Session(onnx_path, threads=1, cache_dir=cache)
    feeds = {
        t.name: np.random.default_rng(0).standard_normal(t.shape).astype(t.dtype) for t in session.inputs
    }
    for _ in range(3):
        session.run(feeds)
    print("ready", flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            start = time.perf_counter()
            session.run(feeds)
            times.append(time.perf_counter() - start)
        print(json.dumps(times), flush=True)


class Side:
    def __init__(self, checkout: Path, onnx_path: Path, cache: Path):
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(checkout), str(checkout / "clients")]),
            NUMBA_CACHE_DIR=str(cache / "numba"),
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
        )
        code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.latency_ab import worker; "
        code += f"sys.path.pop(0); worker({str(onnx_path)!r}, {str(cache)!r})"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            cwd=cache,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the worker for {checkout} did not start (exit code {self.proc.wait()})")

    def block(self, runs: int) -> list[float]:
        self.proc.stdin.write(f"{runs}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def compare(model: str, there: Path, blocks: int, runs: int, work: Path) -> dict:
    from flexnnd import zoo

    onnx_path = zoo.cached(model, CACHE)
    sides = {}
    for label, checkout in (("here", ROOT), ("there", there)):
        cache = work / model / label
        cache.mkdir(parents=True)
        sides[label] = Side(checkout, onnx_path, cache)
    medians = {"here": [], "there": []}
    try:
        for i in range(blocks):
            order = ("here", "there") if i % 2 == 0 else ("there", "here")
            for label in order:
                medians[label].append(statistics.median(sides[label].block(runs)))
    finally:
        for side in sides.values():
            side.close()
    here, there_ = statistics.median(medians["here"]), statistics.median(medians["there"])
    pairs = [a / b for a, b in zip(medians["here"], medians["there"], strict=True)]
    return {
        "model": model,
        "here_median_s": here,
        "there_median_s": there_,
        "ratio": here / there_,
        "pair_ratio_min": min(pairs),
        "pair_ratio_max": max(pairs),
        "blocks": blocks,
        "runs_per_block": runs,
    }


def main(argv=None) -> int:
    from flexnnd import zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare against")
    parser.add_argument("--models", nargs="*", default=list(zoo.MODELS))
    parser.add_argument("--blocks", type=int, default=11)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "latency-ab.json")
    args = parser.parse_args(argv)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    rev = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT, capture_output=True, text=True)
    if rev.returncode != 0:
        parser.error(f"no revision {args.rev!r}: {rev.stderr.strip()}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        there = Path(tmp) / "there"
        subprocess.run(["git", "worktree", "add", "--detach", str(there), args.rev], cwd=ROOT, check=True)
        try:
            for model in args.models:
                result = compare(model, there, args.blocks, args.runs, Path(tmp) / "work")
                results.append(result)
                print(
                    f"{model:14s} here {result['here_median_s'] * 1e3:8.2f} ms  there "
                    f"{result['there_median_s'] * 1e3:8.2f} ms  ratio {result['ratio']:.3f} "
                    f"(pairs {result['pair_ratio_min']:.3f}-{result['pair_ratio_max']:.3f})",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(there)], cwd=ROOT, check=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"here": head.stdout.strip(), "there": rev.stdout.strip(), "threads": 1, "models": results}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
