"""Every zoo model, imported and run by flexnn, equals ONNX Runtime on seeded input."""

from __future__ import annotations

import numpy as np
import pytest

import flexnnd
from flexnnd import zoo
from tests.conftest import assert_close_to_reference, ort_run

SLOW = {"vgg16", "resnet50"}


@pytest.mark.parametrize(
    "name", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in zoo.MODELS]
)
def test_zoo_model_matches_onnxruntime(name, zoo_model, package_cache):
    path = zoo_model(name)
    x = np.random.default_rng(11).standard_normal((1, 3, 224, 224), dtype=np.float32)
    want = ort_run(path, {"input": x})[0]
    with flexnnd.Session(path, threads=1, cache_dir=package_cache) as sess:
        got = sess.run({"input": x})["logits"]
        # No BatchNormalization, Dropout or shape arithmetic survives import.
        ops = {n.op_type for n in sess.package.graph.nodes}
    assert_close_to_reference(got, want)
    assert int(got.argmax()) == int(want.argmax())
    assert not ops & {"BatchNormalization", "Dropout", "Identity", "Shape", "Gather"}
