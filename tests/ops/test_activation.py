"""Relu, Clip, LeakyRelu, Sigmoid, HardSigmoid, HardSwish: the shared kernel against its reference,
the reference against onnxruntime, standalone and fused into a Conv; and the float32 exp the
elementwise kernels share, against float64 over the whole float32 range."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from flexnnd.ops.activation import ACT_CODES, Clip, HardSigmoid, HardSwish, LeakyRelu, Relu, Sigmoid, activate
from flexnnd.ops.base import op_class
from flexnnd.ops.unary import Exp
from tests.conftest import assert_model_matches_ort, make_model
from tests.ops.harness import assert_no_numpy_allocations, ort_run, run_in_arena

SHAPES = [(1,), (7,), (3, 1), (2, 13, 5, 7), (1, 24, 3, 3, 2)]
OPS = [
    (Relu(), "Relu", {}),
    (Sigmoid(), "Sigmoid", {}),
    (HardSwish(), "HardSwish", {}),
    (LeakyRelu(alpha=0.1), "LeakyRelu", {"alpha": 0.1}),
    (HardSigmoid(alpha=0.3, beta=0.4), "HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
]
# Sigmoid follows ONNX Runtime's rational fit, within 1.7e-7 of the exact logistic (the reference).
ATOL = 2e-7


def values(shape, seed=0):
    """Normal values spread to about +-30, with the special points first."""
    x = (np.random.default_rng(seed).standard_normal(shape) * 10).astype(np.float32)
    special = np.array([0.0, -0.0, 100.0, -100.0, 1e-6, -3.0, 3.0], np.float32)
    flat = x.reshape(-1)
    flat[: min(flat.size, special.size)] = special[: min(flat.size, special.size)]
    return x


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", [o[0] for o in OPS] + [Clip(min=-1.5, max=2.0)], ids=lambda o: o.op_type)
def test_kernel_matches_reference(op, shape):
    x = values(shape)
    kernel, (y,) = run_in_arena(op, [x])
    kernel()
    np.testing.assert_allclose(y, op.reference([x])[0], rtol=3e-7, atol=ATOL)


@pytest.mark.parametrize(("op", "op_type", "attrs"), OPS, ids=[o[1] for o in OPS])
def test_reference_matches_onnxruntime(op, op_type, attrs):
    x = values((2, 3, 5, 4), seed=1)
    want = ort_run(op_type, [x], opset=14, **attrs)
    np.testing.assert_allclose(op.reference([x])[0], want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", [o[0] for o in OPS] + [Clip(min=-1.5, max=2.0)], ids=lambda o: o.op_type)
def test_in_place_as_fused_ops_run_it(op):
    """activate(y, y, ...) (the fused Add's epilogue) runs its own one-array loop: same results."""
    x = values((3, 1000, 7))
    y = x.reshape(-1).copy()
    name, alpha, beta = op.act()
    activate(y, y, ACT_CODES[name], alpha, beta)
    np.testing.assert_allclose(y.reshape(x.shape), op.reference([x])[0], rtol=3e-7, atol=ATOL)


def test_sigmoid_saturates_and_keeps_nan():
    x = np.array([-200.0, -104.0, -88.0, 88.0, 89.0, 200.0, np.inf, -np.inf, np.nan], np.float32)
    kernel, (y,) = run_in_arena(Sigmoid(), [x])
    kernel()
    np.testing.assert_array_equal(y[:-1], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    assert np.isnan(y[-1])


def test_sigmoid_equals_onnxruntime_within_an_ulp_including_the_tails():
    """Exact 1/(1+e^-x) is 1.1e-7 at x = -16 where ONNX Runtime gives 0: a score map that is all
    tails (a detector on a blank image) would differ from ORT by its whole scale."""
    x = np.linspace(-30, 30, 600_001, dtype=np.float32)
    kernel, (y,) = run_in_arena(Sigmoid(), [x])
    kernel()
    want = ort_run("Sigmoid", [x], opset=14)
    assert np.all(np.abs(y - want) <= np.spacing(np.abs(want)))
    assert y[x < -17].max() == want[x < -17].max()


def test_exp_within_two_ulp_over_float32():
    """exp32 (through the Exp op) against float64 on 2M points from -110 to 92, each result within
    2e-7 relative where float32 is normal, and its limits exact."""
    x = np.linspace(-110, 92, 2_000_001, dtype=np.float32)
    kernel, (y,) = run_in_arena(Exp(), [x])
    kernel()
    want = np.exp(x.astype(np.float64))
    normal = (want > np.finfo(np.float32).tiny) & (want < np.finfo(np.float32).max)
    assert normal.sum() > 1_000_000
    rel = np.abs(y[normal] - want[normal]) / want[normal]
    assert rel.max() < 2e-7
    assert np.all(np.isinf(y[want > 3.5e38]))
    assert np.all(np.abs(y[~normal & (x < 0)]) <= 1.2e-38)  # subnormal or 0, as float32 holds them
    special = np.array([np.inf, -np.inf, np.nan, 0.0], np.float32)
    kernel, (y,) = run_in_arena(Exp(), [special])
    kernel()
    assert y[0] == np.inf and y[1] == 0.0 and np.isnan(y[2]) and y[3] == 1.0


@pytest.mark.parametrize("op", [o[0] for o in OPS], ids=lambda o: o.op_type)
def test_kernel_allocates_nothing(op):
    kernel, _ = run_in_arena(op, [values((2, 13, 5, 7))])
    assert_no_numpy_allocations(kernel)


def test_registered_and_never_sliced():
    for op, op_type, _ in OPS:
        assert op_class(op_type) is type(op)
        assert op.slice_axes([(2, 3)], [(2, 3)]) == ()
        assert op.cost_kind([(2, 3)]) == "memory"


def test_conv_with_fused_and_standalone_sigmoid_matches_ort(tmp_path):
    """Conv -> Sigmoid fuses into the conv's epilogue; Conv -> x * Sigmoid(x) (SiLU) keeps a
    standalone Sigmoid, since the conv's output has two readers. Both match ORT."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.5).astype(np.float32)
    w2 = (rng.standard_normal((6, 8, 1, 1)) * 0.5).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"]),
        helper.make_node("Conv", ["s1", "w2"], ["c2"]),
        helper.make_node("Sigmoid", ["c2"], ["s2"]),
        helper.make_node("Mul", ["c2", "s2"], ["y"]),
    ]
    model = make_model(nodes, [("x", (1, 3, 17, 13))], [("y", (1, 6, 17, 13))], [("w1", w1), ("w2", w2)])
    x = (rng.standard_normal((1, 3, 17, 13)) * 3).astype(np.float32)
    assert_model_matches_ort(model, {"x": x}, tmp_path)
