"""ONNX backend node tests flexnn refuses on purpose, each with the reason: one module per op family
(each defines EXCLUDED), so an op family's author adds a file and touches no shared list. Every
excluded case is checked to be refused with a flexnn error (tests/test_onnx_node_tests.py)."""

from __future__ import annotations

import importlib
import pkgutil


def excluded() -> dict[str, str]:
    """Every family's EXCLUDED, merged; a case excluded twice is an error."""
    merged: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        family = importlib.import_module(f"{__name__}.{info.name}")
        twice = merged.keys() & family.EXCLUDED.keys()
        if twice:
            raise ValueError(f"{info.name} excludes {sorted(twice)} again")
        merged.update(family.EXCLUDED)
    return merged
