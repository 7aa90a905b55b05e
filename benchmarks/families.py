"""One model per op family of issue 17, built in code, flexnn against ONNX Runtime in the same run.

    python -m benchmarks.families                       # every family, 1 thread
    python -m benchmarks.families --models encoder --runs 50

The models are small stand-ins with seeded random weights for what real models of each family
run: a transformer encoder block (int64 token ids, embedding Gather, LayerNorm, attention with
Softmax, GELU MLP), an EfficientNet-style block (SiLU convolutions, squeeze-excitation), a
YOLO-style head (Split, Sigmoid, Concat, nearest Resize), a CNN+BiLSTM text recognizer
(LogSoftmax over the classes), an FPN/DB-style segmenter (ConvTranspose, linear Resize) and a QDQ
int8 conv net; then whole EfficientNet-B0 (real channels and strides), and standalone Sigmoid,
SiLU (x * Sigmoid(x)) and Gelu on [1, 96, 112, 112], the elementwise cases issue 17 measured. Each is imported once; then flexnn's Session (all-resident plan) and ONNX Runtime
run in alternating blocks on one thread. Latency ratios are flexnn ÷ ORT, medians of the block
medians; with `--passes N`, the median over N passes (each pass's ratio kept in `ratio_by_pass`).
Writes benchmarks/results/families.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RESULTS = Path(__file__).resolve().parent / "results"
RNG = np.random.default_rng(17)


def _w(*shape, scale=None):
    scale = scale if scale is not None else 1.0 / np.sqrt(max(1, np.prod(shape[1:])))
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(
        nodes,
        "family",
        inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def encoder():
    """Token ids -> embedding -> one pre-norm transformer block (4 heads of 64) -> pooled."""
    seq, width, heads, vocab = 128, 256, 4, 8000
    n = helper.make_node
    inits = {
        "table": _w(vocab, width, scale=0.1), "g1": np.ones(width, np.float32), "b1": np.zeros(width, np.float32),
        "wqkv": _w(width, 3 * width), "wo": _w(width, width), "g2": np.ones(width, np.float32),
        "b2": np.zeros(width, np.float32), "w1": _w(width, 4 * width), "w2": _w(4 * width, width),
        "split": np.array([width] * 3, np.int64), "heads": np.array([1, seq, heads, width // heads], np.int64),
        "flat": np.array([1, seq, width], np.int64), "scale": np.array(1 / 8, np.float32),
        "axes": np.array([1], np.int64),
    }  # fmt: skip
    nodes = [
        n("Gather", ["table", "ids"], ["x"]),
        n("LayerNormalization", ["x", "g1", "b1"], ["h"], axis=-1),
        n("MatMul", ["h", "wqkv"], ["qkv"]),
        n("Split", ["qkv", "split"], ["q0", "k0", "v0"], axis=-1),
        *[n("Reshape", [f"{t}0", "heads"], [f"{t}1"]) for t in "qkv"],
        n("Transpose", ["q1"], ["q"], perm=[0, 2, 1, 3]),
        n("Transpose", ["k1"], ["kt"], perm=[0, 2, 3, 1]),
        n("Transpose", ["v1"], ["v"], perm=[0, 2, 1, 3]),
        n("MatMul", ["q", "kt"], ["s0"]),
        n("Mul", ["s0", "scale"], ["s1"]),
        n("Softmax", ["s1"], ["p"], axis=-1),
        n("MatMul", ["p", "v"], ["o0"]),
        n("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["o1", "flat"], ["o2"]),
        n("MatMul", ["o2", "wo"], ["o3"]),
        n("Add", ["x", "o3"], ["r1"]),
        n("LayerNormalization", ["r1", "g2", "b2"], ["h2"], axis=-1),
        n("MatMul", ["h2", "w1"], ["m1"]),
        n("Gelu", ["m1"], ["m2"]),
        n("MatMul", ["m2", "w2"], ["m3"]),
        n("Add", ["r1", "m3"], ["r2"]),
        n("ReduceMean", ["r2", "axes"], ["y"], keepdims=0),
    ]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, seq])
    model = _model(nodes, [ids], ["y"], inits, opset=20)
    return model, {"ids": RNG.integers(0, vocab, (1, seq), dtype=np.int64)}


def _silu(n, x, y):
    return [n("Sigmoid", [x], [f"{y}_g"]), n("Mul", [x, f"{y}_g"], [y])]


def efficientnet_block():
    """MBConv: 1x1 expand + SiLU, 3x3 depthwise + SiLU, squeeze-excitation, 1x1 project, residual."""
    c, e, hw = 40, 240, 28
    n = helper.make_node
    inits = {
        "we": _w(e, c, 1, 1),
        "wd": _w(e, 1, 3, 3),
        "ws1": _w(10, e, 1, 1),
        "ws2": _w(e, 10, 1, 1),
        "wp": _w(c, e, 1, 1),
    }
    nodes = [
        n("Conv", ["x", "we"], ["a"]),
        *_silu(n, "a", "a1"),
        n("Conv", ["a1", "wd"], ["d"], group=e, pads=[1, 1, 1, 1]),
        *_silu(n, "d", "d1"),
        n("GlobalAveragePool", ["d1"], ["s"]),
        n("Conv", ["s", "ws1"], ["s1"]),
        *_silu(n, "s1", "s2"),
        n("Conv", ["s2", "ws2"], ["s3"]),
        n("Sigmoid", ["s3"], ["s4"]),
        n("Mul", ["d1", "s4"], ["se"]),
        n("Conv", ["se", "wp"], ["p"]),
        n("Add", ["x", "p"], ["y"]),
    ]
    return _model(nodes, [_f("x", [1, c, hw, hw])], ["y"], inits), {
        "x": RNG.standard_normal((1, c, hw, hw)).astype(np.float32)
    }


def yolo_head():
    """Conv + SiLU -> 2x nearest upsample -> head conv -> split box/class -> sigmoid -> concat."""
    c, hw, out = 64, 20, 85
    n = helper.make_node
    inits = {
        "w0": _w(c, c, 3, 3), "wh": _w(out, c, 1, 1), "scales": np.array([1, 1, 2, 2], np.float32),
        "split": np.array([4, 1, 80], np.int64), "shape": np.array([1, out, 4 * hw * hw], np.int64),
    }  # fmt: skip
    nodes = [
        n("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
        *_silu(n, "a", "a1"),
        n("Resize", ["a1", "", "scales"], ["u"], mode="nearest"),
        n("Conv", ["u", "wh"], ["h"]),
        n("Reshape", ["h", "shape"], ["h1"]),
        n("Split", ["h1", "split"], ["box", "obj", "cls"], axis=1),
        n("Sigmoid", ["obj"], ["obj1"]),
        n("Sigmoid", ["cls"], ["cls1"]),
        n("Concat", ["box", "obj1", "cls1"], ["y"], axis=1),
    ]
    return _model(nodes, [_f("x", [1, c, hw, hw])], ["y"], inits, opset=13), {
        "x": RNG.standard_normal((1, c, hw, hw)).astype(np.float32)
    }


def bilstm_recognizer():
    """Conv -> pool -> [T, N, C] -> bidirectional LSTM -> classes -> LogSoftmax (CTC-style)."""
    t, c, hidden, classes = 80, 64, 96, 97
    n = helper.make_node
    inits = {
        "wc": _w(c, 1, 3, 3), "W": _w(2, 4 * hidden, c * 4, scale=0.1), "R": _w(2, 4 * hidden, hidden, scale=0.1),
        "B": np.zeros((2, 8 * hidden), np.float32), "wo": _w(2 * hidden, classes),
        "seq": np.array([t, 1, c * 4], np.int64), "tnc": np.array([t, 1, 2 * hidden], np.int64),
    }  # fmt: skip
    nodes = [
        n("Conv", ["x", "wc"], ["a"], pads=[1, 1, 1, 1]),
        n("Relu", ["a"], ["a1"]),
        n("MaxPool", ["a1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),  # [1, c, 4, t]
        n("Transpose", ["p"], ["pt"], perm=[3, 0, 1, 2]),
        n("Reshape", ["pt", "seq"], ["s"]),
        n("LSTM", ["s", "W", "R", "B"], ["yl"], hidden_size=hidden, direction="bidirectional"),
        n("Transpose", ["yl"], ["yt"], perm=[0, 2, 1, 3]),
        n("Reshape", ["yt", "tnc"], ["f"]),
        n("MatMul", ["f", "wo"], ["logits"]),
        n("LogSoftmax", ["logits"], ["y"], axis=-1),
    ]
    return _model(nodes, [_f("x", [1, 1, 8, 2 * t])], ["y"], inits, opset=14), {
        "x": RNG.standard_normal((1, 1, 8, 2 * t)).astype(np.float32)
    }


def fpn_segmenter():
    """Conv -> ConvTranspose 4x4/2 -> linear 2x Resize -> skip Add -> Conv -> Sigmoid."""
    n = helper.make_node
    inits = {
        "w0": _w(64, 3, 3, 3), "wt": _w(64, 32, 4, 4), "w1": _w(1, 32, 3, 3),
        "scales": np.array([1, 1, 2, 2], np.float32),
    }  # fmt: skip
    nodes = [
        n("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1], strides=[4, 4]),
        n("Relu", ["a"], ["a1"]),
        n("ConvTranspose", ["a1", "wt"], ["u"], strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Resize", ["u", "", "scales"], ["u2"], mode="linear"),
        n("Add", ["u2", "skip"], ["m"]),
        n("Conv", ["m", "w1"], ["h"], pads=[1, 1, 1, 1]),
        n("Sigmoid", ["h"], ["y"]),
    ]
    feeds = {
        "x": RNG.standard_normal((1, 3, 320, 320)).astype(np.float32),
        "skip": RNG.standard_normal((1, 32, 320, 320)).astype(np.float32),
    }
    return _model(
        nodes, [_f("x", [1, 3, 320, 320]), _f("skip", [1, 32, 320, 320])], ["y"], inits, opset=13
    ), feeds


def qdq_convnet():
    """A QDQ int8 conv net: quantized input, int8 weights behind DequantizeLinear (folded)."""
    n = helper.make_node
    inits = {
        "w1": RNG.integers(-127, 128, (32, 3, 3, 3), dtype=np.int8), "s1": np.full(32, 0.01, np.float32),
        "z1": np.zeros(32, np.int8), "w2": RNG.integers(-127, 128, (64, 32, 3, 3), dtype=np.int8),
        "s2": np.array(0.005, np.float32), "z2": np.array(0, np.int8), "a_s": np.array(0.05, np.float32),
        "a_z": np.array(128, np.uint8),
    }  # fmt: skip
    nodes = [
        n("QuantizeLinear", ["x", "a_s", "a_z"], ["xq"]),
        n("DequantizeLinear", ["xq", "a_s", "a_z"], ["xd"]),
        n("DequantizeLinear", ["w1", "s1", "z1"], ["w1f"], axis=0),
        n("Conv", ["xd", "w1f"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        n("Relu", ["c1"], ["r1"]),
        n("DequantizeLinear", ["w2", "s2", "z2"], ["w2f"]),
        n("Conv", ["r1", "w2f"], ["y"], pads=[1, 1, 1, 1]),
    ]
    return _model(nodes, [_f("x", [1, 3, 224, 224])], ["y"], inits, opset=13), {
        "x": RNG.standard_normal((1, 3, 224, 224)).astype(np.float32)
    }


def _elementwise(build):
    """One standalone elementwise op on [1, 96, 112, 112], the size issue 17 measured Sigmoid at."""
    shape = [1, 96, 112, 112]
    nodes, opset = build(helper.make_node)
    return _model(nodes, [_f("x", shape)], ["y"], {}, opset=opset), {
        "x": RNG.standard_normal(shape).astype(np.float32) * 3
    }


def sigmoid():
    """A standalone Sigmoid on [1, 96, 112, 112] (issue 17: 7.5x ORT's time)."""
    return _elementwise(lambda n: ([n("Sigmoid", ["x"], ["y"])], 13))


def silu():
    """A standalone x * Sigmoid(x) on [1, 96, 112, 112]: fused into one Swish at import."""
    return _elementwise(lambda n: (_silu(n, "x", "y"), 13))


def gelu():
    """A standalone Gelu (opset 20, erf form) on [1, 96, 112, 112]."""
    return _elementwise(lambda n: ([n("Gelu", ["x"], ["y"])], 20))


# EfficientNet-B0's stages: (expand ratio, kernel, stride, output channels, repeats).
B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip


def efficientnet_b0():
    """EfficientNet-B0 at its real channels, kernels and strides on 224x224: stem, 16 MBConv blocks
    with squeeze-excitation (a quarter of the block's input channels) and SiLU, head, classifier.
    BatchNorm appears as each Conv's bias (exporters fold it); weights are seeded random."""
    n = helper.make_node
    inits: dict[str, np.ndarray] = {}
    nodes: list = []

    def conv(x, y, cin, cout, k=1, stride=1, group=1):
        inits[f"{y}_w"], inits[f"{y}_b"] = _w(cout, cin // group, k, k), _w(cout, scale=0.1)
        nodes.append(n("Conv", [x, f"{y}_w", f"{y}_b"], [y], kernel_shape=[k, k], strides=[stride, stride],
                       pads=[k // 2] * 4, group=group))  # fmt: skip
        return y

    def silu_of(x):
        nodes.extend(_silu(n, x, f"{x}_s"))
        return f"{x}_s"

    x = silu_of(conv("x", "stem", 3, 32, 3, 2))
    cin, index = 32, 0
    for expand, k, stride, cout, repeats in B0_STAGES:
        for r in range(repeats):
            b, s = f"b{index}", stride if r == 0 else 1
            mid = cin * expand
            h = silu_of(conv(x, f"{b}_e", cin, mid)) if expand != 1 else x
            h = silu_of(conv(h, f"{b}_d", mid, mid, k, s, group=mid))
            nodes.append(n("GlobalAveragePool", [h], [f"{b}_p"]))
            squeeze = silu_of(conv(f"{b}_p", f"{b}_r", mid, max(1, cin // 4)))
            nodes.append(n("Sigmoid", [conv(squeeze, f"{b}_x", max(1, cin // 4), mid)], [f"{b}_g"]))
            nodes.append(n("Mul", [h, f"{b}_g"], [f"{b}_se"]))
            y = conv(f"{b}_se", f"{b}_o", mid, cout)
            if s == 1 and cin == cout:
                nodes.append(n("Add", [x, y], [f"{b}_y"]))
                y = f"{b}_y"
            x, cin, index = y, cout, index + 1
    h = silu_of(conv(x, "head", cin, 1280))
    nodes.append(n("GlobalAveragePool", [h], ["pool"]))
    nodes.append(n("Flatten", ["pool"], ["flat"]))
    inits["fc_w"], inits["fc_b"] = _w(1000, 1280), np.zeros(1000, np.float32)
    nodes.append(n("Gemm", ["flat", "fc_w", "fc_b"], ["y"], transB=1))
    return _model(nodes, [_f("x", [1, 3, 224, 224])], ["y"], inits, opset=13), {
        "x": RNG.standard_normal((1, 3, 224, 224)).astype(np.float32)
    }


FAMILIES = {
    "encoder": encoder,
    "efficientnet_block": efficientnet_block,
    "yolo_head": yolo_head,
    "bilstm_recognizer": bilstm_recognizer,
    "fpn_segmenter": fpn_segmenter,
    "qdq_convnet": qdq_convnet,
    "sigmoid": sigmoid,
    "silu": silu,
    "gelu": gelu,
    "efficientnet_b0": efficientnet_b0,
}

# One model per family of real models issue 17 names, as benchmarks/engine.py reports them.
REPRESENTATIVES = {
    "transformer encoder": "encoder",
    "EfficientNet (SiLU, squeeze-excitation)": "efficientnet_b0",
    "YOLO-style detector head": "yolo_head",
    "CNN+BiLSTM text recognizer": "bilstm_recognizer",
    "FPN/DB-style segmenter": "fpn_segmenter",
    "QDQ int8 conv net": "qdq_convnet",
}


def measure(name: str, blocks: int, runs: int, work: Path) -> dict:
    import onnxruntime as ort

    import flexnnd

    global RNG
    RNG = np.random.default_rng(zlib.crc32(name.encode()))  # the same weights in every pass and order
    model, feeds = FAMILIES[name]()
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.onnx"
    onnx.save(model, str(path))
    start = time.perf_counter()
    sess = flexnnd.Session(path, threads=1, cache_dir=work / "cache")
    import_s = time.perf_counter() - start
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    peer = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got, want = sess.run(feeds), peer.run(None, feeds)
    diff = max(
        float(np.abs(got[o.name] - w).max()) / max(1.0, float(np.abs(w).max()))
        for o, w in zip(sess.outputs, want, strict=True)
    )
    for _ in range(3):
        sess.run(feeds)
        peer.run(None, feeds)
    ours, theirs = [], []
    for i in range(blocks):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                sess.run(feeds) if which == 0 else peer.run(None, feeds)
                times.append(time.perf_counter() - t)
            (ours if which == 0 else theirs).append(statistics.median(times))
    fused = sorted({n.op_type for n in sess.package.graph.nodes})
    sess.close()
    return {
        "model": name,
        "flexnn_median_s": statistics.median(ours),
        "ort_median_s": statistics.median(theirs),
        "ratio": statistics.median(ours) / statistics.median(theirs),
        "max_rel_diff_vs_ort": diff,
        "import_s": import_s,
        "ops_after_import": fused,
        "blocks": blocks,
        "runs_per_block": runs,
    }


def merge(passes: list[dict]) -> dict:
    """One row from several passes over a model: medians of the passes, each pass's ratio kept."""
    row = dict(passes[-1])
    for key in ("flexnn_median_s", "ort_median_s", "ratio", "import_s"):
        row[key] = statistics.median(p[key] for p in passes)
    row["max_rel_diff_vs_ort"] = max(p["max_rel_diff_vs_ort"] for p in passes)
    row["ratio_by_pass"] = [p["ratio"] for p in passes]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(FAMILIES))
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--passes", type=int, default=1, help="passes over all the models (a shared machine's load drifts)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "families.json")
    args = parser.parse_args(argv)
    passes: dict[str, list[dict]] = {name: [] for name in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(args.passes):
            for name in args.models:
                row = measure(name, args.blocks, args.runs, Path(tmp) / str(number))
                passes[name].append(row)
                print(
                    f"{name:20s} flexnn {row['flexnn_median_s'] * 1e3:8.2f} ms  ORT {row['ort_median_s'] * 1e3:8.2f} ms  "
                    f"ratio {row['ratio']:.2f}  max rel diff {row['max_rel_diff_vs_ort']:.1e}",
                    flush=True,
                )
    rows = [merge(p) for p in passes.values()]
    if args.passes > 1:
        for row in rows:
            print(
                f"{row['model']:20s} median ratio {row['ratio']:.2f} of {', '.join(f'{r:.2f}' for r in row['ratio_by_pass'])}"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": 1, "passes": args.passes, "models": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
