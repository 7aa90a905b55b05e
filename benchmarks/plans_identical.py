"""Every zoo model's ladder (its plans.json bytes), planned with fixed rates: the proof that a
refactor changed no plan.

    python -m benchmarks.plans_identical --save /tmp/plans-before            # before the change
    python -m benchmarks.plans_identical --compare /tmp/plans-before         # after: byte for byte
    python -m benchmarks.plans_identical --save /tmp/old --tree /tmp/wt      # as another checkout plans

The rates are fixed (RATES below, or `--rates FILE`, a JSON object of `Machine` fields) so that no
calibration runs and both dumps plan with the same numbers. `--tree` plans with the flexnnd of
another source tree (e.g. a `git worktree` of the revision before), run in a child process.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .ladder import CACHE, ROOT

# One calibration of the development machine (x86_64 AMD EPYC, numba 0.68.1).
RATES = {
    "gemm_flops": 85513228036.37944,
    "winograd_flops": 137812220712.60056,
    "depthwise_flops": 29311898915.916298,
    "memory_bytes": 25176748020.47075,
    "read_bytes": 1470863576.0684557,
    "step_overhead": 2e-06,
    "read_latency": 8.895235405394815e-06,
    "part_bytes": 19066923697.55119,
    "fc_bytes": 24615660903.297634,
    "read_cpu": 5.858245533290937e-11,
}

# Run in the child: imports each model without its ladder, then plans the ladder with the rates.
DUMP = """
import dataclasses, json, sys
from pathlib import Path
import flexnnd
from flexnnd import zoo
from flexnnd.graph.package import read_package
from flexnnd.planner.ladder import build_ladder
from flexnnd.planner.plan_file import write_plans
from flexnnd.planner.profile import Machine
cache, out, rates = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
known = {f.name for f in dataclasses.fields(Machine)}
machine = Machine(**{k: v for k, v in rates.items() if k in known})
for name in zoo.MODELS:
    folder = cache / "plans-identical" / name
    if not (folder / "manifest.json").is_file():
        flexnnd.import_model(zoo.cached(name, cache), folder, ladder=False)
    package = read_package(folder)
    write_plans(out / f"{name}.json", build_ladder(package.graph, machine), package.graph, package.weights_sha256)
    print(name, flush=True)
"""


def dump(out: Path, rates: dict, tree: Path) -> None:
    """Every zoo model's ladder as the flexnnd in `tree` plans it with `rates`, one file each in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}  # and run there: `-c` puts the cwd first
    subprocess.run(
        [sys.executable, "-c", DUMP, str(CACHE), str(out), json.dumps(rates)], env=env, cwd=tree, check=True
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--save", type=Path, help="write each model's plans.json into this folder")
    what.add_argument("--compare", type=Path, help="plan again and compare with this folder's files")
    p.add_argument("--rates", type=Path, help="a JSON object of Machine fields (default: RATES)")
    p.add_argument("--tree", type=Path, default=ROOT, help="the source tree to plan with")
    a = p.parse_args()
    rates = json.loads(a.rates.read_text()) if a.rates else RATES
    if a.save:
        dump(a.save, rates, a.tree.resolve())
        return
    with tempfile.TemporaryDirectory(prefix="flexnn-plans-") as tmp:
        dump(Path(tmp), rates, a.tree.resolve())
        names = sorted(p.name for p in a.compare.glob("*.json"))
        if sorted(p.name for p in Path(tmp).glob("*.json")) != names:
            raise SystemExit(f"the models differ: {names} against {sorted(os.listdir(tmp))}")
        differ = [n for n in names if not filecmp.cmp(Path(tmp) / n, a.compare / n, shallow=False)]
    for n in names:
        print(f"{n}: {'DIFFERENT' if n in differ else 'identical'}")
    if differ:
        raise SystemExit(f"{len(differ)} of {len(names)} ladders differ")


if __name__ == "__main__":
    main()
