"""Built-in model zoo: torchvision architectures as ONNX graphs with fixed seeded weights.

The graphs are built in code (no download), look like what the PyTorch exporter writes (opset 17,
Conv → BatchNormalization → Relu as separate nodes, Gemm for Linear), and have exactly
torchvision's parameter counts. Weights are random but deterministic for a seed, and BatchNorm
statistics are chosen so that activations keep a sane scale through the whole network.
"""

from __future__ import annotations

import importlib
import math
import os
import pathlib
import secrets
from typing import TYPE_CHECKING

from flexnnd.errors import FlexnnError

if TYPE_CHECKING:
    import onnx

# name -> the module building it; imported (with onnx) only when a model is built: the daemon reads
# DEFAULT_MODEL and MODELS but serves packages, and must not pay for onnx.
_BUILDERS: dict[str, str] = {
    "resnet18": "flexnnd.zoo.resnet",
    "resnet50": "flexnnd.zoo.resnet",
    "mobilenet_v2": "flexnnd.zoo.mobilenet",
    "squeezenet1_1": "flexnnd.zoo.squeezenet",
    "vgg16": "flexnnd.zoo.vgg",
    "googlenet": "flexnnd.zoo.googlenet",
    "resnet152": "flexnnd.zoo.resnet",
    "vgg19": "flexnnd.zoo.vgg",
    "vit_b_16": "flexnnd.zoo.vit",
    "bert_base": "flexnnd.zoo.bert",
    "gpt2": "flexnnd.zoo.gpt2",
    "gpt2_decoder": "flexnnd.zoo.gpt2",
    "vit_mini": "flexnnd.zoo.vit",
    "bert_mini": "flexnnd.zoo.bert",
    "gpt2_mini": "flexnnd.zoo.gpt2",
    "gpt2_mini_decoder": "flexnnd.zoo.gpt2",
}
# The 224x224 image classifiers that the per-model tests and benchmarks iterate.
MODELS: tuple[str, ...] = ("resnet18", "resnet50", "mobilenet_v2", "squeezenet1_1", "vgg16", "googlenet")
# 0.2 to 0.6 GB of weights each: built only when named, each tested on its own.
LARGE_MODELS: tuple[str, ...] = ("resnet152", "vgg19", "vit_b_16", "bert_base", "gpt2", "gpt2_decoder")
# The transformers' graphs, narrowed and shortened to run in milliseconds, for fast tests.
MINI_MODELS: tuple[str, ...] = ("vit_mini", "bert_mini", "gpt2_mini", "gpt2_mini_decoder")
# Every name build() and the daemon take.
ALL_MODELS: tuple[str, ...] = MODELS + LARGE_MODELS + MINI_MODELS
DEFAULT_MODEL = "mobilenet_v2"


class UnknownModel(FlexnnError, ValueError, KeyError):
    """A name that is not in the zoo; a ValueError, and a KeyError for dict-like lookups."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"unknown zoo model {name!r}; the zoo has: {', '.join(ALL_MODELS)}")

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and wrap it in quotes.
        return str(self.args[0])


def build(name: str, seed: int = 0) -> onnx.ModelProto:
    """The model `name` with weights drawn from numpy's default_rng(seed)."""
    try:
        module = _BUILDERS[name]
    except KeyError:
        raise UnknownModel(name) from None
    return getattr(importlib.import_module(module), name)(seed)


def parameter_count(model: onnx.ModelProto) -> int:
    """torch's count, sum(p.numel() for p in model.parameters()), read from the graph.

    The rule: every floating-point initializer of rank 1 or more, each counted once (a tied weight
    is one initializer), except BatchNormalization's running mean and variance (inputs 3 and 4:
    buffers in torch). Literals (shapes, indices, scales, Clip's bounds, Dropout's ratio) are
    Constant nodes or 0-d; masks and position ids are bool or int64 buffers, not counted.
    """
    import numpy as np
    from onnx import helper

    running_stats = {
        node.input[i] for node in model.graph.node if node.op_type == "BatchNormalization" for i in (3, 4)
    }
    return sum(
        math.prod(t.dims)
        for t in model.graph.initializer
        if len(t.dims) >= 1
        and t.name not in running_stats
        and np.issubdtype(helper.tensor_dtype_to_np_dtype(t.data_type), np.floating)
    )


def save(name: str, path: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Build `name` and write it to `path` as one .onnx file (VGG-16 is 553 MB: no external data)."""
    import onnx

    path = pathlib.Path(path)
    onnx.save(build(name, seed), path)
    return path


def cached_path(name: str, cache_dir: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Where `cached` keeps the model (built or not)."""
    if name not in _BUILDERS:
        raise UnknownModel(name)
    return pathlib.Path(cache_dir) / f"{name}-{seed}.onnx"


def cached(name: str, cache_dir: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """cache_dir/<name>-<seed>.onnx, built and written on first use and reused afterwards."""
    path = cached_path(name, cache_dir, seed)
    cache_dir = path.parent
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename: a reader never sees a half-written model. Not mkstemp:
    # its 0600 mode would outlive the rename, while onnx.save's open() honours the umask.
    tmp = cache_dir / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        save(name, tmp, seed)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


__all__ = [
    "ALL_MODELS",
    "DEFAULT_MODEL",
    "LARGE_MODELS",
    "MINI_MODELS",
    "MODELS",
    "UnknownModel",
    "build",
    "cached",
    "parameter_count",
    "save",
]
