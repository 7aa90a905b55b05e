"""The real daemon serves a half-precision model with FP16 in and out, and a double one with FP64,
over OIP: metadata, raw and typed requests, refusals, and the stock tritonclient."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import grpc
import numpy as np
import pytest
from flexnn_api.proto import inference_pb2 as pb
from flexnn_api.proto import inference_pb2_grpc

from tests.conftest import ort_run, save
from tests.daemon.harness import DaemonProcess
from tests.graph.test_float16 import cnn, mlp

X16 = np.random.default_rng(21).standard_normal((1, 3, 24, 24)).astype(np.float16)
X64 = np.random.default_rng(22).standard_normal((2, 64))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    save(cnn(np.float16), d / "half.onnx")
    save(mlp(np.float64), d / "double.onnx")
    return d


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, models_dir):
    d = DaemonProcess(
        tmp_path_factory.mktemp("daemon"),
        ["--models-dir", str(models_dir), "--models", "half.onnx", "double.onnx", "--threads", "1"],
    )
    d.start()
    yield d
    d.stop()
    d.close()


@pytest.fixture(scope="module")
def stub(daemon):
    with grpc.insecure_channel(f"unix://{daemon.socket}") as channel:
        yield inference_pb2_grpc.GRPCInferenceServiceStub(channel)


def ort(models_dir, name, x):
    return ort_run(models_dir / f"{name}.onnx", {"x": x})[0]


def assert_float16_bar(got, want):
    """The issue's bar: max |diff| <= 1e-3 x max |ref| (ORT rounds each float16 activation)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    assert diff <= 1e-3 * float(np.abs(want.astype(np.float64)).max()), diff


def raw_request(model, x, datatype):
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype=datatype, shape=x.shape)
    request.raw_input_contents.append(x.astype(x.dtype.newbyteorder("<")).tobytes())
    return request


def output(response, dtype):
    (out,) = response.outputs
    return np.frombuffer(response.raw_output_contents[0], dtype=dtype).reshape(tuple(out.shape)), out.datatype


def test_metadata_and_config_report_fp16_and_fp64(stub):
    half = stub.ModelMetadata(pb.ModelMetadataRequest(name="half"))
    assert [(t.name, t.datatype, list(t.shape)) for t in half.inputs] == [("x", "FP16", [1, 3, 24, 24])]
    assert [(t.name, t.datatype, list(t.shape)) for t in half.outputs] == [("y", "FP16", [1, 10])]
    double = stub.ModelMetadata(pb.ModelMetadataRequest(name="double"))
    assert [t.datatype for t in (*double.inputs, *double.outputs)] == ["FP64", "FP64"]
    config = stub.ModelConfig(pb.ModelConfigRequest(name="half")).config
    assert [t.data_type for t in (*config.input, *config.output)] == [pb.TYPE_FP16, pb.TYPE_FP16]


def test_fp16_in_fp16_out_matches_ort(stub, models_dir):
    got, datatype = output(stub.ModelInfer(raw_request("half", X16, "FP16")), "<f2")
    assert datatype == "FP16"
    assert_float16_bar(got, ort(models_dir, "half", X16))


def test_fp64_in_fp64_out_raw_and_typed(stub, models_dir):
    want = ort(models_dir, "double", X64)
    got, datatype = output(stub.ModelInfer(raw_request("double", X64, "FP64")), "<f8")
    assert datatype == "FP64"
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, float(np.abs(want).max())))
    typed = pb.ModelInferRequest(model_name="double")
    typed.inputs.add(name="x", datatype="FP64", shape=X64.shape).contents.fp64_contents.extend(X64.ravel())
    again, _ = output(stub.ModelInfer(typed), "<f8")
    np.testing.assert_array_equal(again, got)
    # FP32 data widens into a double input; the answer is still FP64
    widened, datatype = output(stub.ModelInfer(raw_request("double", X64.astype(np.float32), "FP32")), "<f8")
    assert datatype == "FP64" and widened.shape == want.shape


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "UINT8"])
def test_a_float16_input_takes_only_fp16(stub, datatype):
    x = X16.astype({"FP32": np.float32, "FP64": np.float64, "UINT8": np.uint8}[datatype])
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(raw_request("half", x, datatype))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "float16 input; send FP16" in error.value.details()


# Runs in a child (tritonclient's `inference` messages clash with ours): one FP16 inference.
TRITON = r"""
import json, sys
import numpy as np
import tritonclient.grpc as g

client = g.InferenceServerClient(url=sys.argv[1])
x = np.load(sys.argv[2])
tensor = g.InferInput("x", list(x.shape), "FP16")
tensor.set_data_from_numpy(x)
y = client.infer("half", [tensor]).as_numpy("y")
print(json.dumps({"dtype": str(y.dtype), "values": y.astype(float).ravel().tolist()}))
"""


@pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="tritonclient is not installed")
def test_stock_tritonclient_sends_and_gets_fp16(daemon, models_dir, tmp_path):
    np.save(tmp_path / "x.npy", X16)
    done = subprocess.run(
        [sys.executable, "-c", TRITON, f"unix://{daemon.socket}", str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["dtype"] == "float16"
    assert_float16_bar(np.array(got["values"], np.float16).reshape(1, 10), ort(models_dir, "half", X16))


def test_an_fp64_value_beyond_float32_is_refused_and_the_model_still_serves(stub):
    x = X64.copy()
    x[1, 5] = 1e300
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(raw_request("double", x, "FP64"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "beyond float32's range" in error.value.details()
    got, _ = output(stub.ModelInfer(raw_request("double", X64, "FP64")), "<f8")
    assert np.isfinite(got).all()
