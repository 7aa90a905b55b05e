"""`flexnnd`: until the daemon lands, run a model once and print its outputs and timing."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flexnnd", description="Run a model once with flexnn.")
    parser.add_argument("--model", default=None, help="an .onnx file, a package folder or a zoo name")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: all cores)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs after the first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    import flexnnd
    from flexnnd import zoo
    from flexnnd.runtime.session import default_cache_dir

    name = args.model or zoo.DEFAULT_MODEL
    start = time.perf_counter()
    try:
        model = Path(name) if Path(name).exists() else zoo.cached(name, default_cache_dir().parent / "zoo")
        sess = flexnnd.Session(model, threads=args.threads)
    except flexnnd.FlexnnError as e:
        print(f"flexnnd: {e}", file=sys.stderr)
        return 1
    load = time.perf_counter() - start
    spec = sess.inputs[0]
    x = np.random.default_rng(0).standard_normal(spec.shape, dtype=np.float32)
    start = time.perf_counter()
    outs = sess.run({spec.name: x})
    first = time.perf_counter() - start
    times = []
    for _ in range(args.runs):
        sess.run({spec.name: x})
        times.append(sess.last_inference_seconds)
    out_name, y = next(iter(outs.items()))
    top = np.argsort(y.reshape(-1))[::-1][:5]
    print(f"model {sess.package.graph.name}: input {spec.name} {spec.shape}, output {out_name} {y.shape}")
    print("top-5:", ", ".join(f"{i} ({y.reshape(-1)[i]:.4f})" for i in top))
    print(
        f"load {load * 1e3:.0f} ms, first inference {first * 1e3:.1f} ms, median {np.median(times) * 1e3:.2f} ms"
    )
    print(f"arena {sess.stats()['arena_bytes'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
