"""The same graph and budget give the same plan in every process, whatever the hash seed."""

from __future__ import annotations

import os
import subprocess
import sys

PLAN_TWICE = """
import hashlib, json, sys
from flexnnd import zoo
from flexnnd.graph.package import read_package
from flexnnd.runtime.ladders import import_model
from flexnnd.planner.plan_file import plan_to_json
from flexnnd.planner.plan_budget import Planner, plan_for_budget, smallest_plan
pkg = read_package(import_model(sys.argv[1], sys.argv[2], ladder=False))
planner = Planner(pkg.graph)
low = smallest_plan(pkg.graph, planner)
plans = [low, plan_for_budget(pkg.graph, low.arena_bytes * 3 // 2, planner)]
print(hashlib.sha256(json.dumps([plan_to_json(p) for p in plans]).encode()).hexdigest())
"""


def test_plans_do_not_depend_on_the_hash_seed(zoo_model, tmp_path):
    onnx_path = zoo_model("squeezenet1_1")  # many weights of equal size: ties in every ordering
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", PLAN_TWICE, str(onnx_path), str(tmp_path / f"pkg{seed}")],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1
