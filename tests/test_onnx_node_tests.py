"""ONNX's own backend node tests, for every op flexnn supports, through tests/onnx_backend.py."""

from __future__ import annotations

import importlib
import pkgutil
import warnings

import numpy as np
import pytest

import flexnnd
from flexnnd.ops import registered_ops
from tests.node_exclusions import excluded
from tests.onnx_backend import FlexnnBackend, as_array

EXCLUDED = excluded()


def _collect():
    import onnx.backend.test.case.node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some generators divide by zero on purpose
        # Every op's cases: those whose ops are all registered run, so a new op brings its own.
        for module in pkgutil.iter_modules(node_cases.__path__):
            importlib.import_module(f"onnx.backend.test.case.node.{module.name}")
    supported = set(registered_ops())
    cases = {}
    for case in node_cases._NodeTestCases:
        ops = {n.op_type for n in case.model.graph.node}
        if ops <= supported and case.name not in cases:
            cases[case.name] = case
    return cases


CASES = _collect()


@pytest.mark.parametrize("name", sorted(n for n in CASES if n not in EXCLUDED))
def test_node(name):
    case = CASES[name]
    for inputs, expected in case.data_sets:
        outputs = FlexnnBackend.prepare(case.model).run(inputs)
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected, strict=True):
            want = as_array(want)
            assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
            np.testing.assert_allclose(got, want, rtol=max(case.rtol, 1e-5), atol=max(case.atol, 1e-6))


@pytest.mark.parametrize("name", sorted(n for n in EXCLUDED if n in CASES))
def test_excluded_node_is_refused_clearly(name):
    """Every excluded case is refused with a flexnn error, never answered wrongly."""
    case = CASES[name]
    inputs, _ = case.data_sets[0]
    with pytest.raises(flexnnd.FlexnnError):
        FlexnnBackend.prepare(case.model).run(inputs)


def test_every_supported_op_has_node_tests():
    covered = {n.op_type for case in CASES.values() for n in case.model.graph.node}
    assert covered >= {"Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "Softmax", "Concat", "Reshape"}
