"""Engine benchmark: flexnn against ONNX Runtime (and ncnn, where installed), same run, interleaved.

    python -m benchmarks.engine                       # every zoo model, 1 and 2 threads, and the families
    python -m benchmarks.engine --models resnet18 --runs 30 --families
    python -m benchmarks.engine --models --update      # only the families; the zoo rows kept from --out

Per model: import time; first inference with a cold and a warm numba cache and RSS after load
(each in a fresh subprocess); median latency over `--runs` runs after warm-up at each thread
count, the engines interleaved run by run so that machine noise hits them alike. Latency ratios
are flexnn ÷ peer. Writes benchmarks/results/engine.json and prints a markdown table.

ncnn: `pip install ncnn` and `pip install --no-deps pnnx` (pnnx's wheel depends on torch, but its
converter binary reads ONNX without it). Without them ncnn is reported as not installed.

Families: one model per family of issue 17 (`benchmarks.families.REPRESENTATIVES`: a transformer
encoder, EfficientNet-B0, a YOLO head, a CNN+BiLSTM recognizer, an FPN segmenter, a QDQ int8 net),
flexnn's Session against ONNX Runtime at 1 thread in alternating blocks (`families.measure`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".cache"


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def probe(engine: str, model: str, onnx_path: str, package: str) -> dict:
    """Run in a fresh subprocess: load, first inference, RSS (printed as JSON)."""
    import flexnnd  # the runtime (imports, numba) counts before the model, not in its share

    before = rss_bytes()
    start = time.perf_counter()
    if engine == "flexnn":
        sess = flexnnd.Session(package, threads=1)
        name, shape = sess.inputs[0].name, sess.inputs[0].shape
        run = lambda x: sess.run({name: x})  # noqa: E731
    else:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        name, shape = sess.get_inputs()[0].name, (1, 3, 224, 224)
        run = lambda x: sess.run(None, {name: x})  # noqa: E731
    load = time.perf_counter() - start
    after_load = rss_bytes()
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    start = time.perf_counter()
    run(x)
    first = time.perf_counter() - start
    return {
        "load_s": load,
        "first_inference_s": first,
        "rss_before_load": before,
        "rss_after_load": after_load,
        "rss_after_first": rss_bytes(),
    }


def run_probe(engine: str, model: str, onnx_path: Path, package: Path, numba_cache: Path) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(numba_cache), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.engine", "--probe", engine, model, str(onnx_path), str(package)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


class Ncnn:
    def __init__(self, model: str, onnx_path: Path, threads: int):
        import ncnn

        # pnnx names its outputs after the input file, with '-' turned into '_': convert a link.
        folder = CACHE / "ncnn"
        folder.mkdir(parents=True, exist_ok=True)
        param, weights = folder / f"{model}.ncnn.param", folder / f"{model}.ncnn.bin"
        if not param.exists():
            link = folder / f"{model}.onnx"
            link.unlink(missing_ok=True)
            link.symlink_to(onnx_path.resolve())
            subprocess.run(
                [pnnx_binary(), link.name, "inputshape=[1,3,224,224]"],
                cwd=folder,
                check=True,
                capture_output=True,
            )
            for junk in [*folder.glob(f"{model}.pnnx*"), *folder.glob(f"{model}_*.py"), link]:
                junk.unlink()
        if not param.exists() or not weights.exists():
            raise RuntimeError(f"pnnx did not write {param} and {weights}")
        self.ncnn = ncnn
        self.net = ncnn.Net()
        self.net.opt.num_threads = threads
        self.net.opt.use_vulkan_compute = False
        # fp32 like the other engines: ncnn would otherwise store and compute in fp16/bf16 here.
        for flag in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
            setattr(self.net.opt, flag, False)
        if self.net.load_param(str(param)) or self.net.load_model(str(weights)):
            raise RuntimeError(f"ncnn could not load {param}")

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.net.create_extractor() as ex:
            ex.input("in0", self.ncnn.Mat(x[0]))
            _, out = ex.extract("out0")
            return np.array(out).reshape(1, -1)


def pnnx_binary() -> str | None:
    """pnnx's converter binary; found without importing the package, whose __init__ needs torch."""
    spec = importlib.util.find_spec("pnnx")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "pnnx"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("pnnx")


def ncnn_available() -> bool:
    return importlib.util.find_spec("ncnn") is not None and pnnx_binary() is not None


def latency(model: str, onnx_path: Path, package: Path, threads: int, runs: int, warmup: int) -> dict:
    import onnxruntime as ort

    import flexnnd  # the runtime (imports, numba) counts before the model, not in its share

    sess = flexnnd.Session(package, threads=threads)
    name = sess.inputs[0].name
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Interleaved runs: ORT's pool would otherwise spin after each run and take the cores from BLAS.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    ort_sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    ort_name = ort_sess.get_inputs()[0].name
    x = np.random.default_rng(1).standard_normal(sess.inputs[0].shape, dtype=np.float32)
    engines = {
        "flexnn": lambda: sess.run({name: x})[sess.outputs[0].name],
        "onnxruntime": lambda: ort_sess.run(None, {ort_name: x})[0],
    }
    if ncnn_available():
        net = Ncnn(model, onnx_path, threads)
        engines["ncnn"] = lambda: net.run(x)
    ref = engines["onnxruntime"]()
    diffs = {e: float(np.abs(f() - ref).max()) for e, f in engines.items()}
    times: dict[str, list[float]] = {e: [] for e in engines}
    for i in range(warmup + runs):
        for engine, fn in engines.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[engine].append(time.perf_counter() - start)
    sess.close()
    medians = {e: statistics.median(t) for e, t in times.items()}
    return {
        "median_s": medians,
        "p90_s": {e: float(np.percentile(t, 90)) for e, t in times.items()},
        "max_abs_diff_vs_onnxruntime": diffs,
        "ratio_vs": {e: medians["flexnn"] / medians[e] for e in engines if e != "flexnn"},
    }


def main(argv: list[str] | None = None) -> int:
    from flexnnd import zoo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(zoo.MODELS))
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "engine.json")
    parser.add_argument(
        "--families",
        nargs="*",
        default=None,
        metavar="MODEL",
        help="families.py models to measure at 1 thread (default: one per family; none given: none)",
    )
    parser.add_argument("--family-blocks", type=int, default=9, help="alternating blocks per family model")
    parser.add_argument("--family-runs", type=int, default=10, help="runs per block per family model")
    parser.add_argument(
        "--update", action="store_true", help="keep the rows of --out that this run does not measure"
    )
    parser.add_argument(
        "--probe", nargs=4, metavar=("ENGINE", "MODEL", "ONNX", "PACKAGE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(*args.probe)))
        return 0

    import flexnnd  # the runtime (imports, numba) counts before the model, not in its share
    from benchmarks import families

    CACHE.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "ncnn": ncnn_available(),
        "models": {},
        "families": {},
    }
    if args.update and args.out.exists():
        kept = json.loads(args.out.read_text())
        report["models"].update(kept.get("models", {}))
        report["families"].update(kept.get("families", {}))
    for model in args.models:
        onnx_path = zoo.cached(model, CACHE)
        package = CACHE / f"{model}.pkg"
        start = time.perf_counter()
        flexnnd.import_model(onnx_path, package)
        import_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as numba_cache:
            cold = run_probe("flexnn", model, onnx_path, package, Path(numba_cache))
            warm = run_probe("flexnn", model, onnx_path, package, Path(numba_cache))
        ort_probe = run_probe("onnxruntime", model, onnx_path, package, CACHE / "numba")
        entry = {
            "import_s": import_s,
            "flexnn_cold_numba_cache": cold,
            "flexnn_warm_numba_cache": warm,
            "onnxruntime_load": ort_probe,
            "latency": {},
        }
        for t in args.threads:
            entry["latency"][str(t)] = latency(model, onnx_path, package, t, args.runs, args.warmup)
            lat = entry["latency"][str(t)]
            ratios = ", ".join(f"÷{k} {v:.2f}" for k, v in lat["ratio_vs"].items())
            print(f"{model} {t}T: flexnn {lat['median_s']['flexnn'] * 1e3:.1f} ms ({ratios})", flush=True)
        report["models"][model] = entry
    chosen = list(families.REPRESENTATIVES.values()) if args.families is None else args.families
    family_of = {m: f for f, m in families.REPRESENTATIVES.items()}
    with tempfile.TemporaryDirectory() as work:
        for model in chosen:
            row = families.measure(model, args.family_blocks, args.family_runs, Path(work))
            row["family"] = family_of.get(model, model)
            report["families"][model] = row
            print(
                f"{model} 1T: flexnn {row['flexnn_median_s'] * 1e3:.2f} ms (÷onnxruntime {row['ratio']:.2f})"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [
        "| model | threads | flexnn ms | ORT ms | flexnn ÷ ORT | ncnn ms | flexnn ÷ ncnn |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, entry in report["models"].items():
        for t, lat in entry["latency"].items():
            m = lat["median_s"]
            ncnn_ms = f"{m['ncnn'] * 1e3:.1f}" if "ncnn" in m else "—"
            ncnn_ratio = f"{lat['ratio_vs']['ncnn']:.2f}" if "ncnn" in m else "—"
            lines.append(
                f"| {model} | {t} | {m['flexnn'] * 1e3:.1f} | {m['onnxruntime'] * 1e3:.1f} | "
                f"{lat['ratio_vs']['onnxruntime']:.2f} | {ncnn_ms} | {ncnn_ratio} |"
            )
    if report.get("families"):
        lines += [
            "",
            "| family | model | threads | flexnn ms | ORT ms | flexnn ÷ ORT | max rel diff |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for model, row in report["families"].items():
            lines.append(
                f"| {row['family']} | {model} | 1 | {row['flexnn_median_s'] * 1e3:.2f} | "
                f"{row['ort_median_s'] * 1e3:.2f} | {row['ratio']:.2f} | {row['max_rel_diff_vs_ort']:.1e} |"
            )
    lines += [
        "",
        "| model | import s | first inference, cold numba cache s | warm cache s | RSS after load MiB (model share) | ORT RSS after load MiB (model share) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    mib = 2**20
    for model, e in report["models"].items():
        cold, warm, o = e["flexnn_cold_numba_cache"], e["flexnn_warm_numba_cache"], e["onnxruntime_load"]
        lines.append(
            f"| {model} | {e['import_s']:.2f} | {cold['first_inference_s'] + cold['load_s']:.2f} | "
            f"{warm['first_inference_s'] + warm['load_s']:.2f} | {warm['rss_after_load'] / mib:.0f} "
            f"({(warm['rss_after_load'] - warm['rss_before_load']) / mib:.0f}) | {o['rss_after_load'] / mib:.0f} "
            f"({(o['rss_after_load'] - o['rss_before_load']) / mib:.0f}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
