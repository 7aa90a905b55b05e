"""The bounds of an import (ImportLimits), apart from flexnnd.graph.limits, which imports onnx: a
package reader checks its index against them in a daemon that never imports onnx."""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30


@dataclass(frozen=True)
class ImportLimits:
    # Largest tensor (weight, folded constant or activation); the planner needs it in one arena.
    max_tensor_bytes: int = GiB
    # All constants held during import together (file weights + folded ones); bounds import memory.
    max_total_bytes: int = 4 * GiB
    # Largest ONNX file read into memory; protobuf cannot parse more than 2 GiB anyway.
    max_file_bytes: int = 2 * GiB
    # Dimensions of one tensor; no supported op needs more, and it bounds per-shape work.
    max_rank: int = 16
    # Work of one op evaluated at import on constant inputs (~seconds of numpy); bounds import time.
    max_fold_flops: int = 10**10


DEFAULT_LIMITS = ImportLimits()
