"""A zoo model's ladder as another revision plans it against this checkout's, rung by rung, interleaved.

A planner change is judged here, not by two ladder runs minutes apart: the storage drifts 2x
within minutes, so each rung's two plans are measured back to back, in alternating order, over
several passes, in one session. The other revision plans in a temporary git worktree of it, with
this checkout's calibration (benchmarks/.cache; rates that revision has no field for are left out),
and both ladders are predicted by this checkout's simulator:

    python -m benchmarks.plans_ab resnet50 --against ffceb56

Prints and saves (results/plans-ab-MODEL.json) each differing rung's median latency under both,
their ratio and predicted ratio, and streamed bytes; and the geometric mean of the ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .ladder import CACHE, RESULTS, ROOT


def _package(name: str):
    from flexnnd import zoo
    from flexnnd.graph.package import read_package
    from flexnnd.runtime.session import package_for

    return read_package(package_for(zoo.cached(name, CACHE), CACHE / "packages", calibration_dir=CACHE))


# Run by the other revision's interpreter: only APIs every revision with plan files has.
DUMP = """
import dataclasses, json, sys
from pathlib import Path
from flexnnd import zoo
from flexnnd.graph.package import read_package
from flexnnd.planner.ladder import build_ladder
from flexnnd.planner.plan_file import write_plans
from flexnnd.planner.profile import Machine
from flexnnd.runtime.session import package_for
name, cache, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
known = {f.name for f in dataclasses.fields(Machine)}
rates = Machine(**{k: v for k, v in json.loads(sys.argv[4]).items() if k in known})
package = read_package(package_for(zoo.cached(name, cache), cache / "packages", calibration_dir=cache))
write_plans(out, build_ladder(package.graph, rates), package.graph, package.weights_sha256)
"""


def _rates(name: str) -> str:
    """This checkout's calibration for `name`'s weights file, as JSON for DUMP."""
    from flexnnd.runtime.calibrate import machine

    return json.dumps(dataclasses.asdict(machine(CACHE, _package(name).weights_path)))


def _dump(tree: Path, name: str, out: Path, rates: str) -> None:
    """`name`'s ladder as the flexnnd in source tree `tree` plans it with `rates`, written to `out`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}  # and run there: `-c` puts the cwd first
    subprocess.run(
        [sys.executable, "-c", DUMP, name, str(CACHE), str(out), rates], env=env, cwd=tree, check=True
    )


def ladder_at(revision: str, name: str, out: Path, rates: str) -> None:
    """`name`'s ladder as `revision` plans it, written to `out` in this revision's plan format."""
    with tempfile.TemporaryDirectory(prefix="flexnn-ab-") as tmp:
        tree = Path(tmp) / "src"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), revision], check=True
        )
        try:
            _dump(tree, name, out, rates)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    # Read as this revision's format: reading verifies every plan, so one that really differs fails there.
    from flexnnd.planner.plan import PLAN_VERSION

    text = out.read_text()
    out.write_text(re.sub(r'"version": \d+', f'"version": {PLAN_VERSION}', text, count=1))


def _same(a, b) -> bool:
    return dataclasses.replace(a, budget=None, predicted_seconds=None) == dataclasses.replace(
        b, budget=None, predicted_seconds=None
    )


def compare(name: str, paths: tuple[Path, Path], passes: int, runs: int) -> dict:
    import flexnnd
    from flexnnd.planner.ladder import predict
    from flexnnd.planner.plan_file import read_plans
    from flexnnd.runtime.calibrate import machine

    package = _package(name)
    rates = machine(CACHE, package.weights_path)
    ladders = [read_plans(p, package.graph, package.weights_sha256) for p in paths]
    # Both predicted by this simulator, so the predicted ratio isolates the plans.
    ladders = [
        [dataclasses.replace(p, predicted_seconds=predict(package.graph, p, rates)) for p in lad]
        for lad in ladders
    ]
    if len(ladders[0]) != len(ladders[1]):
        raise SystemExit(f"the two ladders have {len(ladders[0])} and {len(ladders[1])} rungs")
    differ = [k for k in range(len(ladders[0])) if not _same(ladders[0][k], ladders[1][k])]
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    seconds: dict[int, tuple[list[float], list[float]]] = {k: ([], []) for k in differ}

    def median_latency(sess) -> float:
        sess.run({"input": x})  # the first run after a swap pays for the new arena
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            sess.run({"input": x})
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    with flexnnd.Session(package, threads=1, ladder=ladders[0]) as sess:
        for p in range(passes):
            for k in differ:
                order = (0, 1) if (p + k) % 2 == 0 else (1, 0)  # neither always goes first
                for which in order:
                    sess.adopt(ladders[which][k], None, overlap=False)
                    seconds[k][which].append(median_latency(sess))
    rungs = []
    for k in differ:
        a, b = (ladders[i][k] for i in (0, 1))
        ma, mb = (statistics.median(s) for s in seconds[k])
        rungs.append(
            {
                "rung": k,
                "arena_bytes": [a.arena_bytes, b.arena_bytes],
                "median_s": [ma, mb],
                "pass_medians_s": list(seconds[k]),
                "ratio": mb / ma,
                "predicted_ratio": b.predicted_seconds / a.predicted_seconds,
                "streamed_bytes": [sum(p.region[ld.piece].nbytes for ld in p.loads) for p in (a, b)],
            }
        )
        print(
            f"{name} rung {k:2d}: {ma * 1e3:6.1f} -> {mb * 1e3:6.1f} ms, {mb / ma:.3f} (predicted "
            f"{b.predicted_seconds / a.predicted_seconds:.3f}); streamed {rungs[-1]['streamed_bytes'][0] / 1e6:.0f} -> "
            f"{rungs[-1]['streamed_bytes'][1] / 1e6:.0f} MB",
            flush=True,
        )
    ratios = [r["ratio"] for r in rungs]
    result = {
        "passes": passes,
        "runs": runs,
        "rungs": rungs,
        "geomean_ratio": float(np.exp(np.mean(np.log(ratios)))) if ratios else 1.0,
        "predicted_geomean_ratio": float(np.exp(np.mean(np.log([r["predicted_ratio"] for r in rungs]))))
        if rungs
        else 1.0,
    }
    print(
        f"{name}: {len(differ)} of {len(ladders[0])} rungs differ; this checkout ÷ the other revision, geometric mean "
        f"{result['geomean_ratio']:.3f} (predicted {result['predicted_geomean_ratio']:.3f})",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a zoo model, e.g. resnet50")
    parser.add_argument("--against", required=True, metavar="REV", help="the git revision to compare with")
    parser.add_argument("--passes", type=int, default=3, help="passes over the differing rungs")
    parser.add_argument("--runs", type=int, default=7, help="timed inferences per rung, plan and pass")
    parser.add_argument("--out", type=Path, default=None, help="default: results/plans-ab-MODEL.json")
    args = parser.parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flexnn-ab-") as tmp:
        paths = (Path(tmp) / "theirs.json", Path(tmp) / "ours.json")
        rates = _rates(args.model)
        ladder_at(args.against, args.model, paths[0], rates)
        _dump(ROOT, args.model, paths[1], rates)  # this checkout, not whatever flexnnd is installed
        result = compare(args.model, paths, args.passes, args.runs)
    result["against"] = args.against
    out = args.out or RESULTS / f"plans-ab-{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
