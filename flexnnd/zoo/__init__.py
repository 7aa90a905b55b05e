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
}
MODELS: tuple[str, ...] = tuple(_BUILDERS)
DEFAULT_MODEL = "mobilenet_v2"

# Inputs of these ops that torchvision counts as parameters (weight, bias); BN running stats are not.
_PARAMETER_INPUTS = {"Conv": (1, 2), "BatchNormalization": (1, 2), "Gemm": (1, 2)}


class UnknownModel(FlexnnError, ValueError, KeyError):
    """A name that is not in the zoo; a ValueError, and a KeyError for dict-like lookups."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"unknown zoo model {name!r}; the zoo has: {', '.join(MODELS)}")

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
    """torchvision's count: conv weights and biases, BN weight and bias, Linear weight and bias."""
    initializers = {t.name: t for t in model.graph.initializer}
    names = {
        node.input[i]
        for node in model.graph.node
        for i in _PARAMETER_INPUTS.get(node.op_type, ())
        if i < len(node.input) and node.input[i] in initializers
    }
    return sum(math.prod(initializers[n].dims) for n in names)


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


__all__ = ["DEFAULT_MODEL", "MODELS", "UnknownModel", "build", "cached", "parameter_count", "save"]
