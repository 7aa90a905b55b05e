"""What the op tests share: arena-like views, binding an op to them, allocation checks, ORT."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

ALIGN = 64


def arena_views(shapes, dtypes=None):
    """Views (float32 unless `dtypes` says) at 64-byte-aligned offsets of one byte buffer, as the
    executor's arena gives."""
    dtypes = [np.dtype(d) for d in (dtypes or ["float32"] * len(shapes))]
    sizes = [int(np.prod(s, dtype=np.int64)) * d.itemsize for s, d in zip(shapes, dtypes, strict=True)]
    buf = np.empty(sum(-(-n // ALIGN) * ALIGN for n in sizes) + ALIGN, dtype=np.uint8)
    offset = -buf.ctypes.data % ALIGN
    views = []
    for shape, n, dtype in zip(shapes, sizes, dtypes, strict=True):
        views.append(buf[offset : offset + n].view(dtype).reshape(shape))
        offset += -(-n // ALIGN) * ALIGN
    return views


def run_in_arena(op, inputs, consts=None):
    """Bind `op` to arena views holding `inputs` (any dtype; `consts`: which of them are constants
    known at import, as op.infer sees them); return (kernel, outputs). Output dtypes come from
    op.output_dtypes, so integer and bool tensors work as in the executor."""
    consts = list(consts) if consts is not None else [None] * len(inputs)
    in_dtypes = [str(x.dtype) for x in inputs]
    op = op.typed(in_dtypes)  # as the importer does, before anything else
    out_shapes = op.infer([x.shape for x in inputs], consts)
    out_dtypes = op.output_dtypes(in_dtypes)[: len(out_shapes)]
    views = arena_views([x.shape for x in inputs] + list(out_shapes), in_dtypes + list(out_dtypes))
    for view, x in zip(views, inputs, strict=False):
        view[...] = x
    outs = views[len(inputs) :]
    nbytes = op.scratch_bytes([x.shape for x in inputs])
    scratch = arena_views([(nbytes // 4,)])[0] if nbytes else None
    return op.bind(views[: len(inputs)], outs, scratch), outs


def assert_no_numpy_allocations(call):
    """After a warm-up, `call()` allocates no numpy memory (neither kept nor temporary)."""
    call()
    numpy_only = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(numpy_only)
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        call()
        _, peak = tracemalloc.get_traced_memory()
        after = tracemalloc.take_snapshot().filter_traces(numpy_only)
    finally:
        tracemalloc.stop()
    assert not [d for d in after.compare_to(before, "filename") if d.size_diff or d.count_diff]
    # A temporary array would raise the peak by its size; the test tensors are far larger than this.
    assert peak - start < 1024


def ort_run(op_type, inputs, consts=(), opset=19, outputs=1, **attrs):
    """Run one node; `consts` are extra (name-less) constant inputs given as initializers. Inputs
    keep their dtypes. With outputs > 1, the list of that many outputs; else the first."""
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from onnx import helper, numpy_helper

    names = [f"x{i}" for i in range(len(inputs))]
    const_names = [f"c{i}" for i in range(len(consts))]
    out_names = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op_type, names + const_names, out_names, **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.asarray(x).dtype), x.shape)
            for n, x in zip(names, inputs, strict=True)
        ],
        [onnx.ValueInfoProto(name=n) for n in out_names],  # types left to ORT's inference
        initializer=[numpy_helper.from_array(c, n) for n, c in zip(const_names, consts, strict=True)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    results = session.run(None, dict(zip(names, inputs, strict=True)))
    return results if outputs > 1 else results[0]
