"""The OIP codec: round trips, every rejection with its numbers, and fuzzed requests that may only ever
raise InvalidRequest and never allocate what they declare."""

from __future__ import annotations

import importlib.util
import io
import math
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from flexnn_api.proto import inference_pb2 as pb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexnnd.daemon import oip
from flexnnd.errors import FlexnnError, InvalidRequest
from flexnnd.graph.package import TensorSpec

INPUTS = [TensorSpec("image", (1, 3, 4, 5), "float32"), TensorSpec("mask", (1, 7), "float32")]
OUTPUTS = [TensorSpec("logits", (1, 10), "float32"), TensorSpec("box", (1, 4), "float32")]
MAX_BYTES = 1 << 20
# What decoding these tiny inputs may allocate at most, whatever a request declares.
ALLOCATION_BOUND = 64 * 1024


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in INPUTS}


def request(feeds: dict[str, np.ndarray], raw: bool = True, datatype: str = "FP32") -> pb.ModelInferRequest:
    """A request as a client builds it: raw little-endian blobs, or the typed field of the datatype."""
    req = pb.ModelInferRequest(model_name="net", id="r1")
    for name, array in feeds.items():
        tensor = req.inputs.add(name=name, datatype=datatype, shape=array.shape)
        wire = array.astype("<f4" if datatype == "FP32" else np.uint8)
        if raw:
            req.raw_input_contents.append(wire.tobytes())
        elif datatype == "FP32":
            tensor.contents.fp32_contents.extend(wire.reshape(-1).tolist())
        else:
            tensor.contents.uint_contents.extend(wire.reshape(-1).tolist())
    return req


def decode(req: pb.ModelInferRequest, **kwargs) -> dict[str, np.ndarray]:
    return oip.decode_infer_request(req, INPUTS, kwargs.pop("max_bytes", MAX_BYTES), **kwargs)


def rejected(req: pb.ModelInferRequest, *words: str, **kwargs) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        decode(req, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    return info.value


# -- round trips ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_fp32_round_trip(raw):
    feeds = arrays()
    got = decode(request(feeds, raw=raw))
    assert list(got) == ["image", "mask"]
    for name, array in feeds.items():
        assert got[name].dtype == np.float32 and got[name].shape == array.shape
        np.testing.assert_array_equal(got[name], array)


def test_raw_fp32_is_a_view_of_the_request_bytes():
    got = decode(request(arrays()))
    assert not got["image"].flags.writeable and not got["image"].flags.owndata


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_uint8_becomes_float32_values_unscaled(raw):
    rng = np.random.default_rng(1)
    frames = {s.name: rng.integers(0, 256, s.shape).astype(np.uint8) for s in INPUTS}
    frames["mask"][0, :2] = [0, 255]
    got = decode(request(frames, raw=raw, datatype="UINT8"))
    for name, frame in frames.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], frame.astype(np.float32))
    assert got["mask"][0, 1] == 255.0


def test_mixed_datatypes_across_inputs():
    feeds = arrays()
    req = pb.ModelInferRequest()
    req.inputs.add(name="image", datatype="UINT8", shape=(1, 3, 4, 5))
    req.inputs.add(name="mask", datatype="FP32", shape=(1, 7))
    req.raw_input_contents.extend([bytes(range(60)), feeds["mask"].tobytes()])
    got = decode(req)
    np.testing.assert_array_equal(got["image"].reshape(-1), np.arange(60, dtype=np.float32))
    np.testing.assert_array_equal(got["mask"], feeds["mask"])


def test_encode_response_round_trip():
    rng = np.random.default_rng(2)
    outputs = {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in OUTPUTS}
    response = oip.encode_infer_response("net", "1", "r1", outputs, ["box", "logits"])
    parsed = pb.ModelInferResponse.FromString(response.SerializeToString())
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("net", "1", "r1")
    assert [(o.name, o.datatype, tuple(o.shape)) for o in parsed.outputs] == [
        ("box", "FP32", (1, 4)),
        ("logits", "FP32", (1, 10)),
    ]
    assert len(parsed.raw_output_contents) == 2
    assert not any(o.HasField("contents") for o in parsed.outputs)
    for tensor, blob in zip(parsed.outputs, parsed.raw_output_contents, strict=True):
        got = np.frombuffer(blob, dtype="<f4").reshape(tuple(tensor.shape))
        np.testing.assert_array_equal(got, outputs[tensor.name])


def test_encode_writes_little_endian_whatever_the_array_order():
    big = np.arange(6, dtype=">f4").reshape(2, 3)
    response = oip.encode_infer_response("net", "", "", {"y": big.T}, ["y"])
    assert response.outputs[0].shape == [3, 2]
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4").reshape(3, 2), big.T)


def test_encode_refuses_a_dtype_without_an_oip_datatype():
    with pytest.raises(TypeError, match="complex64"):
        oip.encode_infer_response("net", "", "", {"y": np.zeros(2, np.complex64)}, ["y"])


TRITON_CHILD = """
import sys
import numpy as np
import tritonclient.grpc as g
from tritonclient.grpc import _utils, service_pb2

if sys.argv[1] == "request":
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    mask = rng.integers(0, 256, (1, 7)).astype(np.uint8)
    inputs = [g.InferInput("image", image.shape, "FP32"), g.InferInput("mask", mask.shape, "UINT8")]
    inputs[0].set_data_from_numpy(image)
    inputs[1].set_data_from_numpy(mask)
    outputs = [g.InferRequestedOutput("box")]
    request = _utils._get_inference_request("net", inputs, "", "r1", outputs, 0, False, 0, 0, None, None)
    sys.stdout.buffer.write(request.SerializeToString())
else:
    result = g.InferResult(service_pb2.ModelInferResponse.FromString(sys.stdin.buffer.read()))
    np.save(sys.stdout.buffer, result.as_numpy("box"))
"""


@pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="tritonclient is not installed")
def test_tritonclient_messages_in_a_subprocess():
    """tritonclient's own generated messages (in a child: they clash with ours in one process)."""

    def child(mode: str, data: bytes = b"") -> bytes:
        done = subprocess.run(
            [sys.executable, "-c", TRITON_CHILD, mode], input=data, capture_output=True, check=False
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout

    req = pb.ModelInferRequest.FromString(child("request"))
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    mask = rng.integers(0, 256, (1, 7)).astype(np.uint8)
    got = decode(req)
    np.testing.assert_array_equal(got["image"], image)
    np.testing.assert_array_equal(got["mask"], mask.astype(np.float32))
    assert oip.requested_outputs(req, OUTPUTS) == ["box"]
    box = np.arange(4, dtype=np.float32).reshape(1, 4) / 3
    response = oip.encode_infer_response("net", "", req.id, {"box": box}, ["box"])
    np.testing.assert_array_equal(np.load(io.BytesIO(child("response", response.SerializeToString()))), box)


def test_requested_outputs():
    req = pb.ModelInferRequest()
    assert oip.requested_outputs(req, OUTPUTS) == ["logits", "box"]
    req.outputs.add(name="box")
    assert oip.requested_outputs(req, OUTPUTS) == ["box"]
    req.outputs.add(name="logits")
    assert oip.requested_outputs(req, OUTPUTS) == ["box", "logits"]


@pytest.mark.parametrize(
    ("names", "words"),
    [(["box", "scores"], ["'scores'", "'logits'"]), (["box", "box"], ["duplicate output", "'box'"])],
)
def test_requested_outputs_rejects(names, words):
    req = pb.ModelInferRequest()
    for name in names:
        req.outputs.add(name=name)
    with pytest.raises(InvalidRequest) as info:
        oip.requested_outputs(req, OUTPUTS)
    assert all(w in str(info.value) for w in words)


def test_requested_outputs_rejects_classification():
    req = pb.ModelInferRequest()
    req.outputs.add(name="logits").parameters["classification"].int64_param = 5
    with pytest.raises(InvalidRequest, match="classification"):
        oip.requested_outputs(req, OUTPUTS)


def test_model_and_server_metadata():
    meta = oip.model_metadata("net", ["1"], INPUTS, OUTPUTS)
    assert (meta.name, list(meta.versions), meta.platform) == ("net", ["1"], "flexnn")
    assert [(t.name, t.datatype, tuple(t.shape)) for t in meta.inputs] == [
        ("image", "FP32", (1, 3, 4, 5)),
        ("mask", "FP32", (1, 7)),
    ]
    assert [t.name for t in meta.outputs] == ["logits", "box"]
    server = oip.server_metadata("0.1.0", ["model_repository"])
    assert (server.name, server.version, list(server.extensions)) == (
        "flexnnd",
        "0.1.0",
        ["model_repository"],
    )


# -- rejections ----------------------------------------------------------------------------------------


def test_invalid_request_is_a_flexnn_error():
    assert issubclass(InvalidRequest, FlexnnError)


def test_unknown_input():
    req = request(arrays())
    req.inputs[1].name = "masque"
    error = rejected(req, "unknown input", "'masque'", "'mask'")
    assert error.got == ["masque"]


def test_missing_input():
    feeds = arrays()
    del feeds["mask"]
    error = rejected(request(feeds), "missing input", "'mask'")
    assert error.expected == ["image", "mask"] and error.got == ["image"]


def test_duplicate_input():
    req = request(arrays())
    req.inputs[1].name = "image"
    error = rejected(req, "duplicate input", "'image'")
    assert error.got == 2


def test_shape_without_batch():
    req = request(arrays())
    del req.inputs[0].shape[0]
    error = rejected(req, "[3, 4, 5]", "[1, 3, 4, 5]")
    assert (error.expected, error.got, error.tensor) == ((1, 3, 4, 5), (3, 4, 5), "image")


@pytest.mark.parametrize("datatype", ["FP64", "INT64", "BYTES", "fp32", ""])
def test_unaccepted_datatype(datatype):
    req = request(arrays())
    req.inputs[0].datatype = datatype
    error = rejected(req, repr(datatype), "FP32 or FP16 or UINT8")
    assert error.got == datatype


def test_bytes_is_refused_saying_so():
    req = request(arrays())
    req.inputs[0].datatype = "BYTES"
    rejected(req, "BYTES tensors are not served")


def test_raw_fp16_is_widened_to_the_float32_input():
    feeds = arrays()
    req = pb.ModelInferRequest(model_name="net")
    for name, array in feeds.items():
        req.inputs.add(name=name, datatype="FP16", shape=array.shape)
        req.raw_input_contents.append(array.astype("<f2").tobytes())
    got = decode(req)
    for name, array in feeds.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], array.astype(np.float16).astype(np.float32))
    req.raw_input_contents[0] = np.full(60, np.inf, "<f2").tobytes()
    rejected(req, "NaN/Inf")


TOKENS = [TensorSpec("ids", (1, 6), "int64"), TensorSpec("mask", (1, 6), "bool")]


def decode_tokens(req):
    return oip.decode_infer_request(req, TOKENS, MAX_BYTES)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("datatype", ["INT64", "INT32"])
def test_integer_and_bool_inputs_round_trip(raw, datatype):
    ids = np.array([[101, 7592, -3, 0, 2**31 - 1, 102]])
    mask = np.array([[1, 1, 0, 1, 0, 1]], dtype=bool)
    req = pb.ModelInferRequest(model_name="bert")
    t_ids = req.inputs.add(name="ids", datatype=datatype, shape=ids.shape)
    t_mask = req.inputs.add(name="mask", datatype="BOOL", shape=mask.shape)
    if raw:
        req.raw_input_contents.append(ids.astype("<i8" if datatype == "INT64" else "<i4").tobytes())
        req.raw_input_contents.append(mask.tobytes())
    else:
        field = t_ids.contents.int64_contents if datatype == "INT64" else t_ids.contents.int_contents
        field.extend(ids.reshape(-1).tolist())
        t_mask.contents.bool_contents.extend(mask.reshape(-1).tolist())
    got = decode_tokens(req)
    assert got["ids"].dtype == np.int64 and got["mask"].dtype == np.bool_
    np.testing.assert_array_equal(got["ids"], ids)
    np.testing.assert_array_equal(got["mask"], mask)


def test_an_integer_input_refuses_float_and_a_bool_byte_above_one():
    req = pb.ModelInferRequest(model_name="bert")
    req.inputs.add(name="ids", datatype="FP32", shape=(1, 6))
    req.inputs.add(name="mask", datatype="BOOL", shape=(1, 6))
    req.raw_input_contents.extend([np.zeros(6, "<f4").tobytes(), bytes(6)])
    with pytest.raises(InvalidRequest, match="int64 input; send INT64 or INT32"):
        decode_tokens(req)
    req.inputs[0].datatype = "INT64"
    req.raw_input_contents[0] = np.zeros(6, "<i8").tobytes()
    req.raw_input_contents[1] = bytes([0, 1, 2, 0, 0, 0])
    with pytest.raises(InvalidRequest, match="BOOL byte 2 at flat index 2"):
        decode_tokens(req)


def test_response_carries_integer_and_bool_outputs():
    outputs = {"ids": np.array([[3, 1, 2]], dtype=np.int64), "keep": np.array([[True, False, True]])}
    response = oip.encode_infer_response("net", "1", "r", outputs, list(outputs))
    assert [o.datatype for o in response.outputs] == ["INT64", "BOOL"]
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<i8"), [3, 1, 2])


@pytest.mark.parametrize("delta", [-4, -1, 1, 4])
def test_raw_byte_count(delta):
    req = request(arrays())
    blob = req.raw_input_contents[0]
    req.raw_input_contents[0] = blob[:delta] if delta < 0 else blob + b"\0" * delta
    error = rejected(req, f"{240 + delta:,} bytes", "expected 240")
    assert (error.expected, error.got) == (240, 240 + delta)


def test_raw_uint8_byte_count_uses_one_byte_per_element():
    req = request(arrays())
    req.inputs[1].datatype = "UINT8"
    error = rejected(req, "28 bytes", "expected 7")
    assert (error.expected, error.got) == (7, 28)


def test_raw_blob_count():
    req = request(arrays())
    del req.raw_input_contents[1]
    error = rejected(req, "1 raw_input_contents", "2 input")
    assert (error.expected, error.got) == (2, 1)


def test_typed_value_count():
    req = request(arrays(), raw=False)
    req.inputs[1].contents.fp32_contents.append(0.0)
    error = rejected(req, "8 values", "expected 7")
    assert (error.expected, error.got) == (7, 8)


def test_typed_values_in_the_wrong_field():
    req = request(arrays(), raw=False)
    req.inputs[1].contents.int_contents.append(3)
    rejected(req, "'mask'", "fp32_contents", "int_contents")


def test_mixed_raw_and_typed():
    req = request(arrays())
    req.inputs[1].contents.fp32_contents.extend([0.0] * 7)
    error = rejected(req, "mixes", "2 raw_input_contents", "'mask'")
    assert error.got == 1


def test_no_data_at_all():
    req = request(arrays())
    del req.raw_input_contents[:]
    rejected(req, "'image' has no data")


def test_typed_uint8_above_255():
    frames = {s.name: np.zeros(s.shape, np.uint8) for s in INPUTS}
    req = request(frames, raw=False, datatype="UINT8")
    req.inputs[1].contents.uint_contents[3] = 256
    error = rejected(req, "256", "flat index 3", "outside [0, 255]")
    assert (error.expected, error.got) == ([0, 255], 256)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_non_finite_rejected_by_default(value, raw):
    feeds = arrays()
    feeds["image"][0, 1, 2, 3] = value
    feeds["image"][0, 2, 0, 0] = value
    error = rejected(request(feeds, raw=raw), "2 NaN/Inf", "of 60", "flat index 33")
    assert (error.got, error.tensor) == (2, "image")
    assert np.isnan(decode(request(feeds, raw=raw), allow_nonfinite=True)["image"]).any() == bool(
        np.isnan(value)
    )


def test_non_finite_found_beyond_the_first_chunk():
    spec = [TensorSpec("x", (1, 3 * oip._FINITE_CHUNK + 5), "float32")]
    x = np.zeros(spec[0].shape, np.float32)
    x[0, -1] = np.nan
    with pytest.raises(
        InvalidRequest, match=f"1 NaN/Inf value\\(s\\) of {x.size:,}, the first at flat index {x.size - 1}"
    ):
        oip.decode_infer_request(request({"x": x}), spec, 1 << 30)


def test_inputs_above_max_bytes():
    error = rejected(request(arrays()), "268 bytes", "limit of 267", max_bytes=267)
    assert (error.expected, error.got) == (267, 268)
    assert decode(request(arrays()), max_bytes=268)


def test_model_input_of_another_dtype():
    spec = [TensorSpec("ids", (1, 4), "int64")]
    req = pb.ModelInferRequest()
    req.inputs.add(name="ids", datatype="FP32", shape=(1, 4))
    req.raw_input_contents.append(bytes(16))
    with pytest.raises(InvalidRequest, match="int64"):
        oip.decode_infer_request(req, spec, MAX_BYTES)


def test_huge_declared_shape_with_tiny_payload_allocates_nothing_sized_from_it():
    req = request(arrays())
    del req.inputs[0].shape[:]
    req.inputs[0].shape.extend([2**40, 2**40, 2**40])
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequest) as info:
            decode(req)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "[1099511627776, 1099511627776, 1099511627776]" in str(info.value)
    assert peak < ALLOCATION_BOUND


def test_huge_model_input_rejected_by_max_bytes_before_allocating():
    spec = [TensorSpec("x", (1, 2**20, 2**20), "float32")]
    req = pb.ModelInferRequest()
    req.inputs.add(name="x", datatype="UINT8", shape=spec[0].shape)
    req.raw_input_contents.append(b"\0" * 16)
    with pytest.raises(InvalidRequest, match=f"{4 * 2**40:,} bytes, above the limit of {MAX_BYTES:,}"):
        oip.decode_infer_request(req, spec, MAX_BYTES)


def test_long_name_lists_are_truncated_in_messages():
    req = request(arrays())
    for i in range(1000):
        req.inputs.add(name=f"extra{i}" * 100, datatype="FP32", shape=[1])
    message = str(rejected(req, "unknown input", "... 992 more"))
    assert len(message) < 2000


# -- fuzzing -------------------------------------------------------------------------------------------

NAMES = st.sampled_from(["image", "mask", "", "Image", "mask ", "logits"]) | st.text(max_size=12)
DIM = st.sampled_from([0, 1, 3, 4, 5, 7, -1, 2**31, 2**40, 2**62, -(2**63)]) | st.integers(
    -(2**63), 2**63 - 1
)
SHAPES = st.sampled_from([s.shape for s in INPUTS]) | st.lists(DIM, max_size=6).map(tuple)
DATATYPES = st.sampled_from(["FP32", "UINT8", "FP16", "INT64", "BYTES", "", "fp32"]) | st.text(max_size=6)
FLOATS = st.floats(width=32, allow_nan=True, allow_infinity=True)


def _sometimes(draw, odds: int) -> bool:
    """True about once in `odds` draws: each malformation is rare so that later checks are reached.

    A middle value, not 0: hypothesis favours the ends of a range."""
    return draw(st.integers(0, odds - 1)) == odds // 2


@st.composite
def malformed_requests(draw) -> pb.ModelInferRequest:
    """Requests near valid ones: random names, shapes (huge, negative), datatypes, payloads and modes."""
    req = pb.ModelInferRequest()
    specs = list(draw(st.permutations(INPUTS)))
    if _sometimes(draw, 8):
        specs.pop()
    if _sometimes(draw, 8):
        specs.append(draw(st.sampled_from(INPUTS)))
    if _sometimes(draw, 8):
        specs.append(None)
    mode = draw(st.sampled_from(["raw", "typed"])) if not _sometimes(draw, 6) else None
    for spec in specs:
        name = spec.name if spec is not None and not _sometimes(draw, 10) else draw(NAMES)
        shape = spec.shape if spec is not None and not _sometimes(draw, 5) else draw(SHAPES)
        datatype = draw(st.sampled_from(["FP32", "UINT8"])) if not _sometimes(draw, 6) else draw(DATATYPES)
        tensor = req.inputs.add(name=name, datatype=datatype, shape=shape)
        count = math.prod(spec.shape) if spec is not None else 1
        if _sometimes(draw, 4):
            count = draw(st.sampled_from([count - 1, count + 1, 0, 4 * count]))
        how = mode or draw(st.sampled_from(["raw", "typed", "both", "none"]))
        if how in ("raw", "both"):
            if datatype == "UINT8" and not _sometimes(draw, 4):
                req.raw_input_contents.append(draw(st.binary(min_size=count, max_size=count)))
            else:
                req.raw_input_contents.append(
                    np.asarray(draw(st.lists(FLOATS, min_size=count, max_size=count)), "<f4").tobytes()
                )
        if how in ("typed", "both"):
            if datatype == "UINT8" and not _sometimes(draw, 4):
                values = st.integers(0, 255) if not _sometimes(draw, 4) else st.integers(0, 2**32 - 1)
                tensor.contents.uint_contents.extend(draw(st.lists(values, min_size=count, max_size=count)))
            else:
                tensor.contents.fp32_contents.extend(draw(st.lists(FLOATS, min_size=count, max_size=count)))
            if _sometimes(draw, 10):
                tensor.contents.int64_contents.append(1)
    if _sometimes(draw, 10):
        req.raw_input_contents.append(draw(st.binary(max_size=64)))
    return req


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=malformed_requests(), max_bytes=st.sampled_from([0, 100, 268, MAX_BYTES]))
def test_fuzzed_requests_raise_only_invalid_request_and_allocate_little(req, max_bytes):
    tracemalloc.start()
    try:
        try:
            feeds = oip.decode_infer_request(req, INPUTS, max_bytes)
        except InvalidRequest:
            feeds = None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ALLOCATION_BOUND
    if feeds is not None:
        assert list(feeds) == [t.name for t in req.inputs]
        for spec in INPUTS:
            assert feeds[spec.name].shape == spec.shape and feeds[spec.name].dtype == np.float32
            assert np.isfinite(feeds[spec.name]).all()


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    raw=st.booleans(),
    datatype=st.sampled_from(["FP32", "UINT8"]),
    order=st.permutations([s.name for s in INPUTS]),
)
def test_valid_requests_round_trip(seed, raw, datatype, order):
    rng = np.random.default_rng(seed)
    if datatype == "FP32":
        feeds = {n: arrays(seed)[n] * np.float32(rng.uniform(1e-30, 1e30)) for n in order}
    else:
        feeds = {
            n: rng.integers(0, 256, dict((s.name, s.shape) for s in INPUTS)[n]).astype(np.uint8)
            for n in order
        }
    got = decode(request(feeds, raw=raw, datatype=datatype))
    assert list(got) == order
    for name, array in feeds.items():
        np.testing.assert_array_equal(got[name], array.astype(np.float32))
