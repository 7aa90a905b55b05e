"""Memory–latency benchmark: every rung of a model's ladder, measured, against its lower bound.

    python -m benchmarks.ladder --models squeezenet1_1 resnet18
    python -m benchmarks.ladder --plan-only          # ladder planning time of every zoo model
    python -m benchmarks.ladder --packages /dev/shm/flexnn --out benchmarks/results/tmpfs/ladder.json
                                                     # weights streamed from memory, not the disk
    python -m benchmarks.ladder --models vit_b_16 bert_base gpt2 --packages /dev/shm/flexnn --runs 3 --passes 1
                                                     # the large models: results/ladder-large.json
    python -m benchmarks.ladder --models gpt2 --packages /dev/shm/flexnn --quarter-ab 7
                                                     # quarter rung vs all-resident, alternated


Per rung: the median over `--passes` passes of the ladder of its median latency over `--runs` runs
(one thread), the planner's prediction, and two bounds, both from this run's measurements (per-node
compute times of the all-resident plan, the storage's read rate timed just before each rung):
- the issue's: max(all-resident latency, streamed bytes ÷ read rate);
- the streaming floor (flexnnd/planner/bound.py): what no schedule within the rung's budget can
  beat, because the loader cannot run further ahead than the memory left beside the activations.
Also per rung: the read rate the loader got while the model computed (read bytes ÷ time in its
reads), measured and predicted stalls, and the streaming floor again at the loader's rate.
ONNX Runtime's and ncnn's points are their median latency at their peak model memory (peak RSS
minus RSS before loading, in a fresh process). Writes benchmarks/results/ladder.json (ladder-large.json
when a model of `zoo.LARGE_MODELS` is among them) and one PNG per model (x: budget, y: latency).

Inputs have the model's types and shapes, seeded: token ids random within the table they index
(BERT's and GPT-2's vocabularies, BERT's two token types), other integer inputs (masks) all ones,
floats standard normal. A model taking token ids also reports steps per second per rung.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".cache"

# Run in a fresh process: peak RSS (VmHWM, reset first) minus RSS before the engine loads the model.
PROBE = """
import sys, json, numpy as np
def st(f):
    for l in open('/proc/self/status'):
        if l.startswith(f + ':'): return int(l.split()[1]) * 1024
feeds = dict(np.load(sys.argv[2]))
x = feeds.get('input')
%s
before = st('VmRSS'); open('/proc/self/clear_refs', 'w').write('5')
%s
print(json.dumps({'peak_model_bytes': st('VmHWM') - before}))
"""
ORT_PROBE = PROBE % (
    "import onnxruntime as ort",
    "o = ort.SessionOptions(); o.intra_op_num_threads = 1\n"
    "s = ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])\n"
    "s.run(None, feeds)",
)
NCNN_PROBE = PROBE % (
    "import ncnn\nfrom pathlib import Path\nfrom benchmarks.engine import Ncnn",
    "net = Ncnn(sys.argv[1], Path(sys.argv[3]), 1)\nnet.run(x)",
)


def model_feeds(package) -> dict[str, np.ndarray]:
    """Seeded inputs of the model's types: token ids within the table they index, masks all ones."""
    rows = {  # an input used as a Gather's indices into a weight -> that weight's rows
        node.inputs[1]: package.weights[node.inputs[0]].shape[0]
        for node in package.graph.nodes
        if node.op_type == "Gather" and len(node.inputs) > 1 and node.inputs[0] in package.weights
    }
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in package.inputs:
        dtype = np.dtype(spec.dtype)
        if spec.name in rows:
            feeds[spec.name] = rng.integers(0, rows[spec.name], spec.shape, dtype=dtype)
        elif np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            feeds[spec.name] = np.ones(spec.shape, dtype)
        else:
            feeds[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
    return feeds


def node_seconds(sess, feeds: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    """Median compute time of each node of the all-resident plan, kernel by kernel."""
    ex = sess._executor
    times: dict[str, list[float]] = {}
    for _ in range(runs + 1):
        for name, view in ex.inputs:  # later steps reuse the input's memory
            np.copyto(view, feeds[name])
        seen: dict[str, float] = {}
        for step, kernel in zip(ex.plan.steps, ex.kernels, strict=True):
            start = time.perf_counter()
            kernel()
            seen[step.node] = seen.get(step.node, 0.0) + time.perf_counter() - start
        for node, t in seen.items():
            times.setdefault(node, []).append(t)
    return {node: statistics.median(t[1:]) for node, t in times.items()}


def seconds_by_op(graph, per_node: dict[str, float]) -> dict[str, float]:
    """Per-node times summed by op type, slowest first."""
    op_of = {node.name: node.op_type for node in graph.nodes}
    by_op: dict[str, float] = {}
    for node, seconds in per_node.items():
        op = op_of.get(node, "other")
        by_op[op] = by_op.get(op, 0.0) + seconds
    return dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def median_latency(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plan_times(name: str, repeat: int) -> dict:
    """Seconds to plan the whole ladder: the first planning in this process, then the best of
    `repeat` more (wall, and CPU, which other busy processes on the machine disturb less)."""
    from flexnnd import zoo
    from flexnnd.graph.package import read_package
    from flexnnd.planner.ladder import build_ladder
    from flexnnd.runtime.calibrate import machine
    from flexnnd.runtime.session import package_for

    onnx_path = zoo.cached(name, CACHE)
    package = read_package(package_for(onnx_path, CACHE / "packages", calibration_dir=CACHE))
    rates = machine(CACHE, package.weights_path)
    walls, cpus = [], []
    for _ in range(repeat + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        ladder = build_ladder(package.graph, rates)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "rungs": len(ladder),
        "first_wall_s": walls[0],
        "wall_s": min(walls[1:]),
        "cpu_s": min(cpus[1:]),
        "steps_smallest_rung": len(ladder[0].steps),
    }


def bench_model(name: str, runs: int, passes: int, packages: Path | None = None) -> dict:
    import onnxruntime as ort

    import flexnnd
    from flexnnd import zoo
    from flexnnd.graph.package import read_package
    from flexnnd.planner.bound import streaming_floor
    from flexnnd.planner.ladder import build_ladder, timeline
    from flexnnd.planner.plan_budget import Planner
    from flexnnd.runtime.calibrate import machine, storage_speed
    from flexnnd.runtime.session import package_for

    from .engine import Ncnn, ncnn_available

    onnx_path = zoo.cached(name, CACHE)
    package = read_package(package_for(onnx_path, packages or CACHE / "packages", calibration_dir=CACHE))
    rates = machine(CACHE, package.weights_path)  # per filesystem: another --packages is calibrated apart
    start = time.perf_counter()
    ladder = build_ladder(package.graph, rates)
    ladder_seconds = time.perf_counter() - start
    feeds = model_feeds(package)
    rungs = []
    with flexnnd.Session(package, threads=1, ladder=ladder) as sess:  # the ladder timed above
        sess.set_budget(ladder[-1].arena_bytes + sess.output_bytes)
        sess.run(feeds)
        per_node = node_seconds(sess, feeds, runs)
        # Passes over the whole ladder, each rung measured once per pass: the storage drifts 2x
        # within minutes here, so one pass would give neighbouring rungs different storages.
        measured: list[list[tuple]] = [[] for _ in ladder]
        for _ in range(passes):
            for k in reversed(range(len(ladder))):  # all-resident first
                rung = ladder[k]
                storage = storage_speed(package.weights_path)  # the storage now, beside the rung
                sess.set_budget(rung.arena_bytes + sess.output_bytes)
                seen = []  # (read bytes, read seconds, stall seconds) of each inference

                def run_once(seen=seen):
                    sess.run(feeds)
                    s = sess.stats()
                    seen.append((s["last_read_bytes"], s["last_read_seconds"], s["last_stall_seconds"]))

                measured[k].append((median_latency(run_once, runs), seen, storage))
        for k in reversed(range(len(ladder))):
            rung, passed = ladder[k], measured[k]
            seen = [s for _, one, _ in passed for s in one]
            read_bytes_sum, read_seconds_sum, _ = np.sum(seen, axis=0)
            rungs.append(
                {
                    "budget": rung.budget + sess.output_bytes,  # the rung's; neighbours may share a plan
                    "arena_bytes": rung.arena_bytes,
                    "streamed_bytes": sum(rung.region[ld.piece].nbytes for ld in rung.loads),
                    "loads": len(rung.loads),
                    "steps": len(rung.steps),
                    "predicted_s": rung.predicted_seconds,
                    "median_s": statistics.median(t for t, _, _ in passed),  # of the passes' medians
                    "pass_medians_s": [t for t, _, _ in passed],
                    # What the loader got while the model computed, and how long compute waited.
                    "loader_read_bytes_per_s": read_bytes_sum / read_seconds_sum
                    if read_seconds_sum
                    else None,
                    "stall_s": statistics.median(t for *_, t in seen),
                    "predicted_stall_s": timeline(package.graph, rung, rates).stall_seconds,
                    "read_bytes_per_s": statistics.median(st[0] for _, _, st in passed),
                    "read_latency_s": statistics.median(st[1] for _, _, st in passed),
                }
            )
    resident = rungs[0]["median_s"]
    planner = Planner(package.graph)
    for r in rungs:
        r["lower_bound_s"] = max(resident, r["streamed_bytes"] / r["read_bytes_per_s"])
        r["ratio_to_bound"] = r["median_s"] / r["lower_bound_s"]
        floor = streaming_floor(package.graph, r["arena_bytes"], per_node, r["read_bytes_per_s"], planner)
        r["floor_s"] = max(floor, resident)  # the floor's nodes timed one by one sum a little lower
        r["ratio_to_floor"] = r["median_s"] / r["floor_s"]
        if r["loader_read_bytes_per_s"]:  # the same floor at the rate the loader got in this rung
            got = streaming_floor(
                package.graph, r["arena_bytes"], per_node, r["loader_read_bytes_per_s"], planner
            )
            r["floor_at_loader_rate_s"] = max(got, resident)
            r["ratio_to_floor_at_loader_rate"] = r["median_s"] / r["floor_at_loader_rate_s"]
    top = rungs[0]["arena_bytes"]
    quarter = min(rungs, key=lambda r: abs(r["arena_bytes"] - top / 4))
    read_bytes = statistics.median(r["read_bytes_per_s"] for r in rungs)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    ort_sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    ort_seconds = median_latency(lambda: ort_sess.run(None, feeds), runs)
    feeds_path = CACHE / f"{name}-feeds.npz"
    np.savez(feeds_path, **feeds)
    probe = subprocess.run(
        [sys.executable, "-c", ORT_PROBE, str(onnx_path), str(feeds_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    ort_peak = json.loads(probe.stdout)["peak_model_bytes"]
    result = {
        "ladder_plan_seconds": ladder_seconds,
        "read_bytes_per_s": read_bytes,  # the median of the rungs' own
        "calibrated_read_bytes_per_s": rates.read_bytes,
        "resident_node_seconds_sum": sum(per_node.values()),
        # Where the all-resident time goes: by op type, and the slowest nodes.
        "resident_seconds_by_op": seconds_by_op(package.graph, per_node),
        "resident_slowest_nodes": dict(sorted(per_node.items(), key=lambda kv: -kv[1])[:8]),
        "rungs": sorted(rungs, key=lambda r: r["budget"]),
        "onnxruntime": {"median_s": ort_seconds, "peak_model_bytes": ort_peak},
        "smallest_budget_vs_ort_peak": min(r["budget"] for r in rungs) / ort_peak,
        "resident_vs_ort": resident / ort_seconds,
        "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()},
        "quarter": {
            "budget": quarter["budget"],
            "ratio_to_resident": quarter["median_s"] / resident,
            # The best any plan could do at a quarter of the all-resident arena, ÷ all-resident.
            "floor_ratio_to_resident": max(
                streaming_floor(package.graph, top // 4, per_node, quarter["read_bytes_per_s"], planner),
                resident,
            )
            / resident,
        },
    }
    if "input_ids" in feeds:  # a step of a token model: its rate, and the tokens it reads
        result["tokens_per_step"] = feeds["input_ids"].shape[-1]
        for r in result["rungs"]:
            r["steps_per_s"] = 1.0 / r["median_s"]
        result["onnxruntime"]["steps_per_s"] = 1.0 / ort_seconds
    result["bar"] = bar_summary(result["rungs"])
    if ncnn_available() and name in zoo.MODELS:  # ncnn's wrapper takes one 224x224 image
        net = Ncnn(name, onnx_path, 1)
        ncnn_seconds = median_latency(lambda: net.run(feeds["input"]), runs)
        probe = subprocess.run(
            [sys.executable, "-c", NCNN_PROBE, name, str(feeds_path), str(onnx_path)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        result["ncnn"] = {
            "median_s": ncnn_seconds,
            "peak_model_bytes": json.loads(probe.stdout)["peak_model_bytes"],
        }
    return result


BAR = 1.2  # the issue's: every rung within this many times its lower bound


def bar_summary(rungs: list[dict]) -> dict:
    """How many rungs meet the issue's bar, and of the others, how many no plan could meet: the
    streaming floor at the storage's rate is above it, or (the loader reads slower than the storage
    alone, partly for its smaller reads) the floor at the rate the loader got."""
    missed = [r for r in rungs if r["ratio_to_bound"] > BAR]
    at_storage = [r for r in missed if r["floor_s"] > BAR * r["lower_bound_s"]]
    at_loader = [
        r
        for r in missed
        if r not in at_storage and r.get("floor_at_loader_rate_s", 0.0) > BAR * r["lower_bound_s"]
    ]
    return {
        "rungs": len(rungs),
        "within": len(rungs) - len(missed),
        "beyond_any_plan": len(at_storage),  # the machine's limit, not the plan's
        "beyond_any_plan_at_loader_rate": len(at_loader),
        "plan_limited": len(missed) - len(at_storage) - len(at_loader),
    }


def plot(name: str, result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mib = 2**20
    rungs = result["rungs"]
    fig, ax = plt.subplots(figsize=(7, 6))
    at_rate = [r for r in rungs if "floor_at_loader_rate_s" in r]
    for shown, key, style, label in (
        (rungs, "median_s", "o-", "flexnn (measured)"),
        (rungs, "lower_bound_s", "--", "issue's bound: max(resident, streamed ÷ read rate)"),
        (rungs, "floor_s", "-.", "streaming floor (no plan of this budget is faster)"),
        (at_rate, "floor_at_loader_rate_s", "-.", "streaming floor at the rate the loader got"),
        (rungs, "predicted_s", ":", "flexnn (predicted)"),
    ):
        ax.plot([r["budget"] / mib for r in shown], [r[key] * 1e3 for r in shown], style, label=label)
    o = result["onnxruntime"]
    ax.plot(
        [o["peak_model_bytes"] / mib], [o["median_s"] * 1e3], "s", label="ONNX Runtime (peak model memory)"
    )
    if "ncnn" in result:
        n = result["ncnn"]
        ax.plot([n["peak_model_bytes"] / mib], [n["median_s"] * 1e3], "^", label="ncnn (peak model memory)")
    ax.set_xscale("log")
    ax.set_xlabel("model memory budget (MiB)")
    ax.set_ylabel("latency, 1 thread (ms)")
    ax.set_title(f"{name}: latency against memory")
    if "tokens_per_step" in result:  # a token model's step: its rate on the right
        ax.set_title(f"{name}: {result['tokens_per_step']} tokens a step, latency against memory")
        rate = lambda v: 1e3 / np.maximum(v, 1e-9)  # noqa: E731 - ms <-> steps/s, its own inverse
        steps = ax.secondary_yaxis("right", functions=(rate, rate))
        steps.set_yticks([1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50])  # the default crowds the fast end
        steps.set_ylabel("steps per second")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # off the points
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="*", help="default: squeezenet1_1 resnet18 (--plan-only: every zoo model)"
    )
    parser.add_argument("--runs", type=int, default=7, help="timed inferences per rung and pass")
    parser.add_argument(
        "--passes", type=int, default=3, help="passes over the ladder; a rung's latency is their median"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="default: results/ladder.json (or ladder-plan.json)"
    )
    parser.add_argument(
        "--quarter-ab",
        type=int,
        metavar="ROUNDS",
        help="only the quarter rung against all-resident, alternated ROUNDS times (ladder-large-quarter.json)",
    )
    parser.add_argument("--plan-only", action="store_true", help="only time ladder planning (all zoo models)")
    parser.add_argument("--repeat", type=int, default=3, help="--plan-only: timed runs per model")
    parser.add_argument(
        "--summary", action="store_true", help="only summarize the bar over the results file (--out)"
    )
    parser.add_argument(
        "--packages",
        type=Path,
        default=None,
        help="where the imported packages (so the weights streamed) live; default: benchmarks/.cache/packages",
    )
    args = parser.parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.plan_only:
        return plan_only(args)
    if args.quarter_ab:
        if not args.models:
            parser.error("--quarter-ab needs --models")
        out = args.out or RESULTS / "ladder-large-quarter.json"
        report = json.loads(out.read_text()) if out.exists() else {}
        for name in args.models:
            report[name] = q = quarter_ab(name, args.quarter_ab, args.runs, args.packages)
            print(
                f"{name}: quarter rung ÷ all-resident, alternated: {q['ratio_to_resident']}; "
                f"CPU time {q['cpu_ratio_to_resident']:.2f}",
                flush=True,
            )
        out.write_text(json.dumps(report, indent=1))
        return 0
    if args.summary:
        return summarize(args.out or RESULTS / "ladder.json")
    from flexnnd import zoo

    args.models = args.models or ["squeezenet1_1", "resnet18"]
    # The large models' figures go apart: rerunning them must not touch the CNNs' results.
    large = any(name in zoo.LARGE_MODELS for name in args.models)
    args.out = args.out or RESULTS / ("ladder-large.json" if large else "ladder.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)  # the plots go beside it as they are made
    report = json.loads(args.out.read_text()) if args.out.exists() else {}  # models not rerun are kept
    for name in args.models:
        report[name] = result = bench_model(name, args.runs, args.passes, args.packages)
        plot(name, result, args.out.with_name(f"ladder-{name}.png"))
        bound = sorted(r["ratio_to_bound"] for r in result["rungs"])
        floor = sorted(r["ratio_to_floor"] for r in result["rungs"])
        q = result["quarter"]
        print(
            f"{name}: {len(result['rungs'])} rungs planned in {result['ladder_plan_seconds']:.1f} s; smallest budget "
            f"= {result['smallest_budget_vs_ort_peak']:.3f} × ORT's peak model memory; latency ÷ issue's bound "
            f"median {bound[len(bound) // 2]:.2f} worst {bound[-1]:.2f} ({sum(b <= 1.2 for b in bound)}/{len(bound)} "
            f"≤ 1.2); ÷ floor median {floor[len(floor) // 2]:.2f} worst {floor[-1]:.2f}; quarter rung "
            f"{q['ratio_to_resident']:.2f} × all-resident (floor there {q['floor_ratio_to_resident']:.2f}); "
            f"all-resident {result['resident_vs_ort']:.2f} × ORT",
            flush=True,
        )
        if "tokens_per_step" in result:
            print(
                f"    steps/s by rung, smallest to all-resident: "
                f"{' '.join(format(r['steps_per_s'], '.2f') for r in result['rungs'])} "
                f"(ORT {result['onnxruntime']['steps_per_s']:.2f})",
                flush=True,
            )
        print_bar(name, result["bar"])
        rates = [r["loader_read_bytes_per_s"] for r in result["rungs"] if r["loader_read_bytes_per_s"]]
        at_rate = sorted(
            r["ratio_to_floor_at_loader_rate"] for r in result["rungs"] if r["loader_read_bytes_per_s"]
        )
        error = sorted(r["median_s"] / r["predicted_s"] for r in result["rungs"])
        print(
            f"    loader's read rate while computing: median {statistics.median(rates) / 1e9:.2f} GB/s (storage "
            f"alone {result['read_bytes_per_s'] / 1e9:.2f}); measured ÷ predicted median {error[len(error) // 2]:.2f} "
            f"range {error[0]:.2f}-{error[-1]:.2f}; ÷ floor at the loader's rate median "
            f"{at_rate[len(at_rate) // 2]:.2f} worst {at_rate[-1]:.2f}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


def print_bar(name: str, bar: dict) -> None:
    print(
        f"    {name}: {bar['within']}/{bar['rungs']} rungs within {BAR} × the issue's bound; of the rest, the "
        f"streaming floor is above it in {bar['beyond_any_plan']} (at the rate the loader got: "
        f"{bar['beyond_any_plan_at_loader_rate']} more), {bar['plan_limited']} plan-limited",
        flush=True,
    )


def summarize(path: Path) -> int:
    """The bar summary of every model in a results file (written back into it), measuring nothing."""
    report = json.loads(path.read_text())
    for name, result in report.items():
        result["bar"] = bar_summary(result["rungs"])
        print_bar(name, result["bar"])
    path.write_text(json.dumps(report, indent=1))
    return 0


def quarter_ab(name: str, rounds: int, runs: int, packages: Path | None) -> dict:
    """The quarter rung against all-resident, alternated within each round (the load of a shared
    machine drifts between a ladder's passes), with every thread on the compute's core and then free
    to use core 0 too: on tmpfs a read is a memory copy the loader makes on whichever core it has."""
    import os

    import flexnnd
    from flexnnd import zoo
    from flexnnd.graph.package import read_package
    from flexnnd.planner.ladder import build_ladder
    from flexnnd.runtime.calibrate import machine
    from flexnnd.runtime.session import package_for

    onnx_path = zoo.cached(name, CACHE)
    package = read_package(package_for(onnx_path, packages or CACHE / "packages", calibration_dir=CACHE))
    ladder = build_ladder(package.graph, machine(CACHE, package.weights_path))
    quarter = min(ladder, key=lambda r: abs(r.arena_bytes - ladder[-1].arena_bytes / 4))
    feeds = model_feeds(package)
    own = os.sched_getaffinity(0)
    ratios: dict[str, list[float]] = {}
    cpu_ratios: list[float] = []  # the process's CPU time, all threads: what the others' load leaves alone
    with flexnnd.Session(package, threads=1, ladder=ladder) as sess:
        for _ in range(rounds):
            for cores in dict.fromkeys((frozenset(own), frozenset(own | {0}))):  # one set if own has 0
                seconds, cpu = [], []
                for rung in (ladder[-1], quarter):
                    sess.set_budget(rung.arena_bytes + sess.output_bytes)
                    sess.run(feeds)  # adopts the plan, and starts its loader thread
                    for tid in os.listdir("/proc/self/task"):  # the loader's thread too
                        os.sched_setaffinity(int(tid), cores)
                    walls, cpus = [], []
                    for _ in range(runs):
                        wall, used = time.perf_counter(), time.process_time()
                        sess.run(feeds)
                        walls.append(time.perf_counter() - wall)
                        cpus.append(time.process_time() - used)
                    seconds.append(statistics.median(walls))
                    cpu.append(statistics.median(cpus))
                ratios.setdefault(f"cores {','.join(map(str, sorted(cores)))}", []).append(
                    seconds[1] / seconds[0]
                )
                cpu_ratios.append(cpu[1] / cpu[0])
    return {
        "quarter_budget": quarter.budget + sess.output_bytes,
        "streamed_bytes": sum(quarter.region[ld.piece].nbytes for ld in quarter.loads),
        "ratio_to_resident": {k: statistics.median(v) for k, v in ratios.items()},
        "ratio_by_round": ratios,
        # compute and the loader's copies together: one core's time for the quarter rung ÷ all-resident
        "cpu_ratio_to_resident": statistics.median(cpu_ratios),
        "cpu_ratio_by_round": cpu_ratios,
    }


def plan_only(args: argparse.Namespace) -> int:
    from flexnnd import zoo

    models = args.models or list(zoo.MODELS)
    out = args.out or RESULTS / "ladder-plan.json"
    report = {}
    print(f"{'model':<14} {'rungs':>5} {'first (s)':>9} {'wall (s)':>8} {'cpu (s)':>7}")
    for name in models:
        report[name] = r = plan_times(name, args.repeat)
        print(
            f"{name:<14} {r['rungs']:>5} {r['first_wall_s']:>9.2f} {r['wall_s']:>8.2f} {r['cpu_s']:>7.2f}",
            flush=True,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
