"""A small onnx.backend adapter around flexnnd, for ONNX's own node tests.

flexnn needs weights (and parameters such as Reshape's shape) to be constants known at import,
while the node tests feed them as graph inputs. The adapter bakes the values of such inputs into
initializers when it runs, then imports the model and runs it like any user would.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

import flexnnd


def runtime_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs that stay inputs: those read as the first (data) input of some node."""
    return {n.input[0] for n in model.graph.node if n.input}


def as_array(value) -> np.ndarray:
    """A node test's value: some cases (Cast's) give TensorProtos rather than arrays."""
    return onnx.numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


class FlexnnRep(BackendRep):
    def __init__(self, model: onnx.ModelProto):
        self.model = model

    def run(self, inputs, **kwargs):
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        data = runtime_inputs(model)
        names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        feeds = {}
        keep = []
        for name, value in zip(names, inputs, strict=False):
            value = as_array(value)
            if name in data:
                feeds[name] = value
                keep.append(name)
            else:
                model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        kept = [i for i in model.graph.input if i.name in keep]
        del model.graph.input[:]
        model.graph.input.extend(kept)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(model, str(path))
            # No ladder: a node test runs the all-resident plan only, planned on demand.
            package = flexnnd.import_model(path, Path(tmp) / "package", ladder=False)
            with flexnnd.Session(package) as sess:
                outs = sess.run(feeds)
                return [outs[o.name] for o in self.model.graph.output]


class FlexnnBackend(Backend):
    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        return FlexnnRep(model)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"
