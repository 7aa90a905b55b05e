"""What the op tests share: arena-like views, binding an op to them, allocation checks, ORT."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

ALIGN = 64


def arena_views(shapes):
    """Float32 views at 64-byte-aligned offsets of one byte buffer, as the executor's arena gives."""
    sizes = [int(np.prod(s, dtype=np.int64)) * 4 for s in shapes]
    buf = np.empty(sum(-(-n // ALIGN) * ALIGN for n in sizes) + ALIGN, dtype=np.uint8)
    offset = -buf.ctypes.data % ALIGN
    views = []
    for shape, n in zip(shapes, sizes, strict=True):
        views.append(buf[offset : offset + n].view(np.float32).reshape(shape))
        offset += -(-n // ALIGN) * ALIGN
    return views


def run_in_arena(op, inputs):
    """Bind `op` to arena views holding `inputs`; return (kernel, outputs)."""
    out_shapes = op.infer([x.shape for x in inputs], [None] * len(inputs))
    views = arena_views([x.shape for x in inputs] + list(out_shapes))
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


def ort_run(op_type, inputs, consts=(), opset=19, **attrs):
    """Run one node; `consts` are extra (name-less) constant inputs given as initializers."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    names = [f"x{i}" for i in range(len(inputs))]
    const_names = [f"c{i}" for i in range(len(consts))]
    node = helper.make_node(op_type, names + const_names, ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, x.shape)
            for n, x in zip(names, inputs, strict=True)
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(c, n) for n, c in zip(const_names, consts, strict=True)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip(names, inputs, strict=True)))[0]
