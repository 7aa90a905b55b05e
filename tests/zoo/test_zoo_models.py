"""The built-in zoo: torchvision's parameter counts, valid ONNX, sane numbers under onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from flexnnd import zoo
from flexnnd.zoo.builder import INPUT, GraphBuilder

# torchvision's sum(p.numel() for p in model.parameters()).
TORCHVISION_PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "squeezenet1_1": 1_235_496,
    "vgg16": 138_357_544,
    "googlenet": 6_624_904,
}
SLOW = {"resnet50", "vgg16"}
# Tensors whose scale the zoo promises to keep sane (root mean square over the whole tensor).
ACTIVATION_OPS = {
    "Conv",
    "BatchNormalization",
    "Relu",
    "Clip",
    "Add",
    "Concat",
    "MaxPool",
    "GlobalAveragePool",
}


def _params():
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in zoo.MODELS]


# Module-scoped and parametrized: pytest runs all tests of one model, then drops it (VGG-16 is 553 MB).
@pytest.fixture(scope="module", params=_params())
def model_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(model_name) -> onnx.ModelProto:
    return zoo.build(model_name)


@pytest.fixture(scope="module")
def outputs(model) -> dict[str, np.ndarray]:
    """Every activation of the model on a seeded standard-normal image, by tensor name."""
    ort = pytest.importorskip("onnxruntime")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for node in model.graph.node:
        # ResNet-50's axis-0 Concat builds view()'s int64 target shape; it is not an activation.
        shape_arithmetic = node.op_type == "Concat" and helper.get_node_attr_value(node, "axis") == 0
        if node.op_type in ACTIVATION_OPS and node.output[0] != "logits" and not shape_arithmetic:
            probe.graph.output.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": image}), strict=True))


def test_the_zoo_is_complete():
    assert set(zoo.MODELS) == set(TORCHVISION_PARAMETERS)
    assert zoo.DEFAULT_MODEL in zoo.MODELS
    # The per-model tests here iterate MODELS only; the large and mini models are tested by name.
    assert zoo.LARGE_MODELS == ("resnet152", "vgg19", "vit_b_16", "bert_base", "gpt2", "gpt2_decoder")
    assert zoo.MINI_MODELS == ("vit_mini", "bert_mini", "gpt2_mini", "gpt2_mini_decoder")
    assert zoo.ALL_MODELS == zoo.MODELS + zoo.LARGE_MODELS + zoo.MINI_MODELS
    assert len(set(zoo.ALL_MODELS)) == len(zoo.ALL_MODELS)


def test_parameter_count_skips_buffers_and_literals():
    """The rule: float initializers of rank >= 1, once each; not BN's running statistics, not a
    0-d scalar, not a bool or int64 buffer."""
    b = GraphBuilder(0)
    x = b.batch_norm(b.conv(INPUT, 3, 4, 1, "conv"), 4, "bn")  # 12 + (4 + 4) counted, not the 8 stats
    x = b.dropout(x, 0.5)  # a 0-d ratio
    x = b.node("Add", [x, b.initializer("shift", np.ones((4, 1, 1), np.float32))])  # 4
    b.initializer("mask", np.ones((3, 3), bool))
    b.initializer("positions", np.arange(5))
    x = b.node("Add", [x, "shift"])  # the same initializer read twice is one parameter
    assert zoo.parameter_count(b.model(b.linear(b.flatten(x), 4, 2, "fc"), "t")) == 12 + 8 + 4 + 10


def test_parameter_count_is_torchvisions(model_name, model):
    assert zoo.parameter_count(model) == TORCHVISION_PARAMETERS[model_name]


def test_model_passes_the_full_checker(model):
    onnx.checker.check_model(model, full_check=True)


def test_model_interface(model):
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "input" and inp.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, 224, 224]
    assert out.name == "logits"
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 1000]
    assert len({n.name for n in model.graph.node}) == len(model.graph.node)


def test_exporter_style(model_name, model):
    ops = [n.op_type for n in model.graph.node]
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    # SqueezeNet classifies with a 1x1 conv; every other model ends in Linear layers.
    assert bool(gemms) == (model_name != "squeezenet1_1")
    assert all(helper.get_node_attr_value(n, "transB") == 1 for n in gemms)
    if model_name == "resnet50":
        assert "Flatten" not in ops
        i = ops.index("Reshape")
        assert {"Shape", "Gather", "Unsqueeze", "Concat"} <= set(ops[i - 8 : i])
    else:
        assert "Flatten" in ops
    if model_name == "mobilenet_v2":
        assert all(len(n.input) == 3 for n in model.graph.node if n.op_type == "Clip")
    if model_name in ("mobilenet_v2", "squeezenet1_1", "vgg16", "googlenet"):
        assert "Dropout" in ops


def test_batchnorm_statistics_are_not_trivial(model_name, model):
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    norms = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    if model_name in ("squeezenet1_1", "vgg16"):
        assert not norms
        return
    assert norms
    expected_eps = 1e-3 if model_name == "googlenet" else 1e-5
    for node in norms:
        eps = next(a.f for a in node.attribute if a.name == "epsilon")
        assert eps == pytest.approx(expected_eps)
        mean, var = weights[node.input[3]], weights[node.input[4]]
        assert np.all(var > 0) and not np.allclose(var, 1.0) and not np.allclose(mean, 0.0)


def test_logits_have_a_clear_top1(outputs):
    logits = outputs["logits"]
    assert logits.shape == (1, 1000)
    assert np.all(np.isfinite(logits))
    largest = float(np.abs(logits).max())
    assert 0.1 <= largest <= 1000
    first, second = np.sort(logits[0])[-2:][::-1]
    assert first - second > 1e-3 * largest


def test_activations_stay_in_a_sane_range(outputs):
    for name, value in outputs.items():
        rms = float(np.sqrt(np.mean(np.square(value, dtype=np.float64))))
        assert 0.1 <= rms <= 30, f"{name}: rms {rms:.3g}"


def test_build_is_deterministic_per_seed():
    first, again = zoo.build("squeezenet1_1", seed=3), zoo.build("squeezenet1_1", seed=3)
    other = zoo.build("squeezenet1_1", seed=4)
    assert first.SerializeToString() == again.SerializeToString()
    assert first.graph.initializer[0].raw_data != other.graph.initializer[0].raw_data


def test_unknown_name_lists_the_zoo():
    with pytest.raises(ValueError, match=r"resnet18.*googlenet") as caught:
        zoo.build("alexnet")
    assert isinstance(caught.value, KeyError)
    assert "'alexnet'" in str(caught.value)
    with pytest.raises(ValueError, match="mobilenet_v2"):
        zoo.cached("alexnet", "/nonexistent")


def test_cached_writes_once_and_reuses(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = zoo.cached("squeezenet1_1", cache, seed=1)
    assert path == cache / "squeezenet1_1-1.onnx"
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left behind
    before = path.stat()
    loaded = onnx.load(path)
    assert zoo.parameter_count(loaded) == TORCHVISION_PARAMETERS["squeezenet1_1"]
    assert loaded.SerializeToString() == zoo.build("squeezenet1_1", seed=1).SerializeToString()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("cached() rebuilt a model that was already in the cache")

    monkeypatch.setattr(zoo, "save", no_rebuild)
    assert zoo.cached("squeezenet1_1", cache, seed=1) == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )


def test_save_writes_a_loadable_model(tmp_path):
    path = zoo.save("mobilenet_v2", tmp_path / "m.onnx", seed=2)
    assert zoo.parameter_count(onnx.load(path)) == TORCHVISION_PARAMETERS["mobilenet_v2"]
