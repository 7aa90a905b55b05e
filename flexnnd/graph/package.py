"""The model package on disk: `manifest.json` (graph, weight index) and `weights.bin`.

Weights are written once, in execution order, already in their kernel's layout, each at an
offset aligned to 4096 bytes (flexnnd.weights_file), so that loading one is a single `os.preadv` into an arena view
(and O_DIRECT stays possible). The manifest carries a format version and checksums; a stale or
corrupt package is rejected with a message that says what to run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from flexnnd.errors import PackageError, UnsupportedOp
from flexnnd.graph.import_limits import DEFAULT_LIMITS
from flexnnd.graph.ir import WIDENED, Graph, Node, TensorInfo, nbytes_of
from flexnnd.ops import op_class
from flexnnd.storage import fsync_dir, storage_error
from flexnnd.weights_file import align, weight_offsets

FORMAT = "flexnn-package"
# Bump whenever the manifest schema or any op's prepared weight layout changes.
VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.bin"


@dataclass(frozen=True)
class WeightEntry:
    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int
    crc32: int


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as a caller sees it: name, static shape, numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Package:
    path: Path
    graph: Graph
    weights: Mapping[str, WeightEntry]
    weights_size: int
    weights_sha256: str
    source: Mapping[str, Any]

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @cached_property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """As the caller feeds them: a float16 or double input keeps its declared type; state inputs
        (`Graph.state`) are the arena's, not the caller's."""
        state = set(self.graph.state.values())
        return tuple(
            TensorSpec(t.name, t.shape, self.graph.boundary_dtype(t.name))
            for t in self.graph.inputs
            if t.name not in state
        )

    @cached_property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """As the caller gets them: a float16 or double output keeps its declared type; state outputs
        stay in the arena."""
        return tuple(
            TensorSpec(t.name, t.shape, self.graph.boundary_dtype(t.name))
            for t in self.graph.outputs
            if t.name not in self.graph.state
        )

    @cached_property
    def output_bytes(self) -> int:
        """What one inference allocates besides the arena: the copies of its outputs it returns, in
        their declared types (a double output's copy is twice its float32 tensor)."""
        return sum(nbytes_of(s.shape, s.dtype) for s in self.outputs)

    def read_weight(self, name: str) -> np.ndarray:
        """One weight as a fresh array (tests and tools; the runtime reads into its arena)."""
        entry = self.weights[name]
        out = np.empty(entry.shape, dtype=entry.dtype)
        with open(self.weights_path, "rb") as f:
            got = os.preadv(f.fileno(), [memoryview(out).cast("B")], entry.offset)
        if got != entry.nbytes:
            raise PackageError(f"{self.weights_path}: short read of {name!r} ({got} of {entry.nbytes} bytes)")
        return out


def graph_to_json(graph: Graph) -> dict[str, Any]:
    return {
        "name": graph.name,
        "opset": graph.opset,
        "inputs": [t.name for t in graph.inputs],
        "outputs": [t.name for t in graph.outputs],
        "constants": list(graph.constants),
        "tensors": [[t.name, list(t.shape), t.dtype] for t in graph.tensors.values()],
        # Only when some input or output is float16/double: older packages have none and read alike.
        **({"declared": dict(graph.declared)} if graph.declared else {}),
        **({"state": dict(graph.state)} if graph.state else {}),  # likewise: only a stateful model's
        "nodes": [
            {
                "name": n.name,
                "op_type": n.op_type,
                "attrs": n.op.to_dict(),
                "inputs": list(n.inputs),
                "outputs": list(n.outputs),
                "in_shapes": [None if s is None else list(s) for s in n.in_shapes],
                **({"guard": [[c, b] for c, b in n.guard]} if n.guard else {}),
            }
            for n in graph.nodes
        ],
    }


def graph_from_json(d: Mapping[str, Any]) -> Graph:
    tensors = {name: TensorInfo(name, tuple(shape), dtype) for name, shape, dtype in d["tensors"]}
    nodes = []
    for n in d["nodes"]:
        op = op_class(n["op_type"], n["name"]).from_dict(n["attrs"])
        in_shapes = tuple(None if s is None else tuple(s) for s in n["in_shapes"])
        guard = tuple((str(c), bool(b)) for c, b in n.get("guard", ()))
        nodes.append(Node(n["name"], op, tuple(n["inputs"]), tuple(n["outputs"]), in_shapes, guard))
    return Graph(
        name=d["name"],
        inputs=tuple(tensors[i] for i in d["inputs"]),
        outputs=tuple(tensors[o] for o in d["outputs"]),
        nodes=tuple(nodes),
        tensors=tensors,
        constants=tuple(d["constants"]),
        opset=d["opset"],
        declared=dict(d.get("declared", {})),
        state=dict(d.get("state", {})),
    )


def write_package(
    graph: Graph, consts: Mapping[str, np.ndarray], path: str | os.PathLike, source: Mapping[str, Any]
) -> Package:
    """Write the package atomically: a temporary folder beside `path`, fsync'd, then renamed."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    needed = sum(align(np.asarray(consts[name]).nbytes) for name in graph.constants)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        entries: dict[str, WeightEntry] = {}
        digest = hashlib.sha256()
        offset, starts = 0, weight_offsets(graph)
        with open(tmp / WEIGHTS, "wb") as f:
            for name in graph.constants:
                value = np.ascontiguousarray(consts[name])
                start = starts[name]  # the planner's simulator reads the same layout
                pad = bytes(start - offset)
                raw = memoryview(value).cast("B")
                f.write(pad)
                f.write(raw)
                digest.update(pad)
                digest.update(raw)
                entries[name] = WeightEntry(
                    name, tuple(value.shape), str(value.dtype), start, value.nbytes, zlib.crc32(raw)
                )
                offset = start + value.nbytes
            f.flush()
            os.fsync(f.fileno())
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "source": dict(source),
            "graph": graph_to_json(graph),
            "weights": {
                "file": WEIGHTS,
                "size": offset,
                "sha256": digest.hexdigest(),
                "tensors": [
                    [e.name, list(e.shape), e.dtype, e.offset, e.nbytes, e.crc32] for e in entries.values()
                ],
            },
        }
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        fsync_dir(path.parent)
    except OSError as e:  # a full disk or a read-only cache: the old package, if any, was not touched
        raise storage_error("model package", path, e, needed) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_package(path)


def read_package(path: str | os.PathLike, verify: bool = False) -> Package:
    """Open a package; `verify` also checks the weights file's sha256 (reads it whole)."""
    path = Path(path)
    redo = f"re-import it: flexnnctl import MODEL.onnx {path}"
    try:
        with open(path / MANIFEST) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise PackageError(f"{path}: not a flexnn model package (no {MANIFEST}); {redo}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{path}/{MANIFEST} is corrupt ({e}); {redo}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PackageError(f"{path}/{MANIFEST} is not a flexnn package manifest; {redo}")
    if manifest.get("version") != VERSION:
        raise PackageError(
            f"{path}: package format version {manifest.get('version')}, this flexnn reads version {VERSION}; {redo}"
        )
    try:
        w = manifest["weights"]
        graph = graph_from_json(manifest["graph"])
        entries = {
            name: WeightEntry(
                name, tuple(int(d) for d in shape), str(dtype), int(offset), int(nbytes), int(crc)
            )
            for name, shape, dtype, offset, nbytes, crc in w["tensors"]
        }
        size, sha = int(w["size"]), str(w["sha256"])
    except UnsupportedOp as e:
        raise PackageError(f"{path}: {e}; {redo}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise PackageError(f"{path}/{MANIFEST} is corrupt ({type(e).__name__}: {e}); {redo}") from None
    missing = [c for c in graph.constants if c not in entries]
    if missing:
        raise PackageError(f"{path}: weights {missing[:3]} are not in the weight index; {redo}")
    try:
        actual = os.stat(path / WEIGHTS).st_size
    except FileNotFoundError:
        raise PackageError(f"{path}: {WEIGHTS} is missing; {redo}") from None
    if actual != size:
        raise PackageError(f"{path}/{WEIGHTS} has {actual:,} bytes, the manifest says {size:,}; {redo}")
    _check_index(path, graph, entries, size, redo)
    package = Package(
        path, graph, MappingProxyType(entries), size, sha, MappingProxyType(manifest.get("source", {}))
    )
    if verify:
        verify_weights(package)
    return package


DTYPES = frozenset(
    {"float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "int64", "bool"}
)


def _check_index(path: Path, graph: Graph, entries: Mapping[str, WeightEntry], size: int, redo: str) -> None:
    """A package may come from anyone who can write the models folder: every declared size is checked
    against the limits and the file before anything is allocated or read."""
    limit = DEFAULT_LIMITS.max_tensor_bytes
    for name, info in graph.tensors.items():
        if (
            any(not isinstance(d, int) or d < 0 for d in info.shape)
            or len(info.shape) > DEFAULT_LIMITS.max_rank
        ):
            raise PackageError(f"{path}: tensor {name!r} has shape {list(info.shape)[:8]}; {redo}")
        if info.dtype not in DTYPES:
            raise PackageError(f"{path}: tensor {name!r} has dtype {str(info.dtype)[:40]!r}; {redo}")
        nbytes = info.nbytes
        if nbytes > limit:
            raise PackageError(f"{path}: tensor {name!r} declares {nbytes:,} bytes, above {limit:,}; {redo}")
    boundary = {t.name for t in (*graph.inputs, *graph.outputs)}
    for name, dtype in graph.declared.items():
        if (
            name not in boundary
            or not isinstance(dtype, str)
            or dtype not in WIDENED
            or graph.tensors[name].dtype != "float32"
        ):
            raise PackageError(
                f"{path}: {str(name)[:80]!r} is declared {str(dtype)[:40]!r}; only float32 graph inputs "
                f"and outputs may be declared {sorted(WIDENED)}; {redo}"
            )
    if not isinstance(graph.state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in graph.state.items()
    ):
        raise PackageError(f"{path}: the state pairs are not names; {redo}")
    problem = graph.state_problem()
    if problem:
        raise PackageError(f"{path}: {problem}; {redo}")
    for e in entries.values():
        try:
            expected = nbytes_of(e.shape, e.dtype) if e.dtype in DTYPES else -1
        except (TypeError, ValueError, KeyError):
            expected = -1
        if not (e.offset >= 0 and e.offset + e.nbytes <= size and e.nbytes == expected <= limit):
            raise PackageError(
                f"{path}: weight {e.name!r} ({e.dtype} {list(e.shape)[:8]}, {expected:,} bytes) at offset "
                f"{e.offset:,} with {e.nbytes:,} bytes does not fit the {size:,}-byte weights file; {redo}"
            )


def verify_weights(package: Package) -> None:
    digest = hashlib.sha256()
    with open(package.weights_path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    if digest.hexdigest() != package.weights_sha256:
        raise PackageError(
            f"{package.weights_path}: checksum mismatch (file changed since import); "
            f"re-import it: flexnnctl import MODEL.onnx {package.path}"
        )
