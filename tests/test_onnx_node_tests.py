"""ONNX's own backend node tests, for every op flexnn supports, through tests/onnx_backend.py."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

import flexnnd
from flexnnd.ops import registered_ops
from tests.onnx_backend import FlexnnBackend

# The onnx.backend.test.case.node modules of the ops flexnn implements.
MODULES = [
    "add", "averagepool", "batch_normalization", "clip", "concat", "conv", "div", "dropout", "erf",
    "flatten", "gemm", "globalaveragepool", "globalmaxpool", "hardsigmoid", "hardswish",
    "identity", "leakyrelu", "matmul", "maxpool", "mul", "relu", "reshape", "sigmoid",
    "softmax", "squeeze", "sub", "sum", "transpose", "unsqueeze",
]  # fmt: skip

_INT = "flexnn runs float32 models; integer tensors are refused at import"
_1D3D = "flexnn's pooling kernels are 1-D and 2-D (3-D is refused)"
EXCLUDED = {
    **{
        f"test_{op}_{t}": _INT
        for op in ("add", "mul", "sub", "div")
        for t in ("int8", "int16", "uint8", "uint16", "uint32", "uint64")
    },
    "test_div_uint8": _INT,
    "test_div_int32_trunc": _INT,
    "test_clip_default_int8_inbounds_expanded": _INT,
    "test_reshape_allowzero_reordered": "zero-size tensors are refused at import",
    "test_clip_default_int8_inbounds": _INT,
    "test_clip_default_int8_max": _INT,
    "test_clip_default_int8_min": _INT,
    "test_maxpool_2d_uint8": _INT,
    "test_averagepool_3d_default": _1D3D,
    "test_averagepool_3d_dilations_small": _1D3D,
    "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_False": _1D3D,
    "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_True": _1D3D,
    "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_False": _1D3D,
    "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_True": _1D3D,
    "test_maxpool_3d_default": _1D3D,
    "test_maxpool_3d_dilations": _1D3D,
    "test_maxpool_3d_dilations_use_ref_impl": _1D3D,
    "test_maxpool_3d_dilations_use_ref_impl_large": _1D3D,
    "test_maxpool_with_argmax_2d_precomputed_pads": "MaxPool's Indices output is not supported (one output per op)",
    "test_maxpool_with_argmax_2d_precomputed_strides": "MaxPool's Indices output is not supported (one output per op)",
    "test_batchnorm_epsilon_training_mode": "inference only: training-mode BatchNormalization is refused",
    "test_batchnorm_example_training_mode": "inference only: training-mode BatchNormalization is refused",
    "test_dropout_default_mask": "Dropout's mask output is not supported (one output per op)",
    "test_dropout_default_mask_ratio": "Dropout's mask output is not supported (one output per op)",
    "test_training_dropout": "inference only: training-mode Dropout is refused",
    "test_training_dropout_default": "inference only: training-mode Dropout is refused",
    "test_training_dropout_default_mask": "inference only: training-mode Dropout is refused",
    "test_training_dropout_mask": "inference only: training-mode Dropout is refused",
    "test_training_dropout_zero_ratio": "inference only: training-mode Dropout is refused",
    "test_training_dropout_zero_ratio_mask": "inference only: training-mode Dropout is refused",
    "test_identity_sequence": "sequence types are not tensors",
    "test_identity_opt": "optional types are not tensors",
}


def _collect():
    import onnx.backend.test.case.node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some generators divide by zero on purpose
        for module in MODULES:
            importlib.import_module(f"onnx.backend.test.case.node.{module}")
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
            want = np.asarray(want)
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
