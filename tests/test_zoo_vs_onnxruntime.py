"""Every zoo model, imported and run by flexnn, equals ONNX Runtime on seeded input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import flexnnd
from flexnnd import zoo
from flexnnd.graph.package import read_package
from flexnnd.planner.plan_budget import smallest_plan
from flexnnd.planner.resident import plan_resident
from tests.conftest import assert_close_to_reference, ort_run
from tests.zoo.inputs import example_feeds

SLOW = {"vgg16", "resnet50"}
# sum(p.numel() for p in model.parameters()) of torchvision's and transformers' models.
LARGE_PARAMETERS = {
    "resnet152": 60_192_808,
    "vgg19": 143_667_240,
    "vit_b_16": 86_859_496,
    "bert_base": 109_482_240,
    "gpt2": 124_439_808,
    "gpt2_decoder": 124_439_808,
}


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


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.LARGE_MODELS)
def test_large_model_has_its_parameters_and_matches_onnxruntime_resident_and_smallest(
    name, zoo_model, tmp_path
):
    path = zoo_model(name)
    model = onnx.load(path)
    assert zoo.parameter_count(model) == LARGE_PARAMETERS[name]
    feeds = example_feeds(model, 11)
    del model
    want = ort_run(path, feeds)
    # Only the ladder's two ends are planned: the 24 rungs between would double the test's time.
    package = read_package(flexnnd.import_model(path, tmp_path / "package", ladder=False))
    resident, smallest = plan_resident(package.graph), smallest_plan(package.graph)
    assert smallest.arena_bytes < resident.arena_bytes
    with flexnnd.Session(package, threads=1, ladder=[resident, smallest], plan=resident) as sess:
        for plan in (resident, smallest):
            if plan is not sess.plan:
                sess.adopt(plan, None, overlap=False)
            got = sess.run(feeds)
            for spec, reference in zip(sess.outputs, want, strict=True):
                assert_close_to_reference(got[spec.name], reference)
    if name in ("resnet152", "vgg19"):
        assert int(got["logits"].argmax()) == int(want[0].argmax())
