"""Hostile requests against the real flexnnd (squeezenet1_1), sent with the raw generated stubs.

Every malformed request gets its own status code, the daemon keeps answering valid requests with
the same output, and its RSS stays within a fixed bound across hundreds of hostile requests.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnx
import pytest
from flexnn_api.proto import inference_pb2 as pb
from flexnn_api.proto import inference_pb2_grpc as pbg
from flexnn_api.proto.flexnn.control.v1 import control_pb2 as cp
from flexnn_api.proto.flexnn.control.v1 import control_pb2_grpc as cpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexnnd import zoo
from tests.conftest import assert_close_to_reference, ort_run
from tests.daemon.harness import DaemonProcess
from tests.daemon.test_models import fc_model
from tests.graph.hostile_models import tensor

MODEL = "squeezenet1_1"
MAX_MESSAGE = 2 << 20  # the daemon's max_message_bytes here: a frame fits, 3 MiB does not
SHAPE = [1, 3, 224, 224]
COUNT = math.prod(SHAPE)
X = np.random.default_rng(3).uniform(0, 1, SHAPE).astype(np.float32)
IDLE_BOUND = 24 << 20  # idle after a burst: heap trimmed, a few buffers and caches remain
RSS_BOUND = 48 << 20  # growth allowed across the hostile loop: a few request buffers and gRPC's caches


def fixed(examples: int) -> settings:
    """Derandomized, no database: CI sends the same requests on every run."""
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


cases_run: dict[str, int] = {}


def counted(test: str) -> None:
    cases_run[test] = cases_run.get(test, 0) + 1


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    models = root / "models"
    models.mkdir()
    outside = root / "outside.onnx"
    zoo.save(MODEL, outside)  # a real model, but outside the models directory
    (models / "link.onnx").symlink_to(outside)
    (models / "garbage.onnx").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    huge = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Add", ["x", "w"], ["y"])],
            "huge",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            [tensor("w", (1 << 20, 1 << 20))],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    (models / "huge.onnx").write_bytes(huge.SerializeToString())
    fc_model(models / "tiny.onnx", width=64, layers=2)
    (models / "alias.onnx").symlink_to(models / "tiny.onnx")  # a symlink that stays inside: allowed
    return models


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, models_dir):
    d = DaemonProcess(
        tmp_path_factory.mktemp("daemon"),
        [
            "--models-dir",
            str(models_dir),
            "--models",
            MODEL,
            "--threads",
            "1",
            "--no-watch-pressure",
            "--max-message-bytes",
            str(MAX_MESSAGE),
        ],
    )
    d.start()
    yield d
    d.stop()
    d.close()
    print(f"hostile request cases run: {cases_run}")


@pytest.fixture(scope="module")
def channel(daemon):
    ch = grpc.insecure_channel(
        f"unix:{daemon.socket}", options=[("grpc.max_receive_message_length", 8 << 20)]
    )
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel):
    return pbg.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def control(channel):
    return cpg.ControlStub(channel)


@pytest.fixture(scope="module")
def baseline(stub, daemon):
    """The output for X before any hostile request, checked against ONNX Runtime."""
    out = infer_ok(stub, valid_request())
    want = ort_run(zoo.cached_path(MODEL, daemon.cache / "zoo"), {"input": X})[0]
    assert_close_to_reference(out, want)
    return out


def valid_request(x: np.ndarray = X) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL, id="ok")
    request.inputs.add(name="input", datatype="FP32", shape=SHAPE)
    request.raw_input_contents.append(x.tobytes())
    return request


def infer_ok(stub, request) -> np.ndarray:
    response = stub.ModelInfer(request, timeout=60)
    assert [o.name for o in response.outputs] == ["logits"]
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(
        list(response.outputs[0].shape)
    )


def status_of(call, request) -> grpc.StatusCode:
    try:
        call(request, timeout=60)
    except grpc.RpcError as e:
        assert len(e.details() or "") < 4096, "status details are capped so that clients can read them"
        return e.code()
    return grpc.StatusCode.OK


def vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# ----- fixed malformed ModelInfer requests --------------------------------------------------------


def request_with(name="input", datatype="FP32", shape=SHAPE, raw=None, typed=None, model=MODEL, version=""):
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    t = request.inputs.add(name=name, datatype=datatype, shape=shape)
    if typed is not None:
        getattr(t.contents, "uint_contents" if datatype == "UINT8" else "fp32_contents").extend(typed)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


def extra_input():
    request = valid_request()
    request.inputs.add(name="extra", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\0" * 4)
    return request


def with_value(value: float) -> bytes:
    x = X.copy()
    x[0, 1, 100, 100] = value
    return x.tobytes()


RAW = X.tobytes()
INVALID, NOT_FOUND, EXHAUSTED = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
CASES = {
    "wrong input name": (lambda: request_with(name="image", raw=RAW), INVALID),
    "missing input": (lambda: pb.ModelInferRequest(model_name=MODEL), INVALID),
    "extra input": (extra_input, INVALID),
    "duplicate input": (lambda: _twice(request_with(raw=RAW)), INVALID),
    "wrong shape": (lambda: request_with(shape=[1, 3, 112, 448], raw=RAW), INVALID),
    "wrong rank": (lambda: request_with(shape=[3, 224, 224], raw=RAW), INVALID),
    "wrong datatype": (lambda: request_with(datatype="FP16", raw=RAW[: COUNT * 2]), INVALID),
    "lowercase datatype": (lambda: request_with(datatype="fp32", raw=RAW), INVALID),
    "raw one byte short": (lambda: request_with(raw=RAW[:-1]), INVALID),
    "raw one byte long": (lambda: request_with(raw=RAW + b"\0"), INVALID),
    "uint8 raw given fp32 bytes": (lambda: request_with(datatype="UINT8", raw=RAW), INVALID),
    "typed one value short": (lambda: request_with(typed=X.reshape(-1)[:-1]), INVALID),
    "typed uint8 above 255": (lambda: request_with(datatype="UINT8", typed=[256] * COUNT), INVALID),
    "no data": (lambda: request_with(), INVALID),
    "raw and typed": (lambda: request_with(raw=RAW, typed=X.reshape(-1)), INVALID),
    "NaN": (lambda: request_with(raw=with_value(np.nan)), INVALID),
    "+Inf": (lambda: request_with(raw=with_value(np.inf)), INVALID),
    "-Inf typed": (lambda: request_with(typed=np.frombuffer(with_value(-np.inf), np.float32)), INVALID),
    "2**40 elements, 4 bytes": (lambda: request_with(shape=[1, 1 << 40], raw=b"\0" * 4), INVALID),
    "2**40 elements, typed": (lambda: request_with(shape=[1 << 20, 1 << 20], typed=[1.0]), INVALID),
    "negative dims": (lambda: request_with(shape=[-1, 3, 224, 224], raw=RAW), INVALID),
    "dims multiply to the right count": (lambda: request_with(shape=[-1, -3, 224, 224], raw=RAW), INVALID),
    "10,000 dims": (lambda: request_with(shape=[1] * 10_000, raw=RAW), INVALID),
    "unknown output": (lambda: _with_output(valid_request(), "probabilities"), INVALID),
    "unknown model": (lambda: request_with(model="resnet1000", raw=RAW), NOT_FOUND),
    "empty model name": (lambda: request_with(model="", raw=RAW), NOT_FOUND),
    "unknown version": (lambda: request_with(version="2", raw=RAW), NOT_FOUND),
    "model name of 100 KB": (lambda: request_with(model="m" * 100_000, raw=RAW), NOT_FOUND),
    "non-ASCII model name of 100 KB": (lambda: request_with(model="é" * 50_000, raw=RAW), NOT_FOUND),
    "datatype of 100 KB": (lambda: request_with(datatype="F" * 100_000, raw=RAW), INVALID),
    "3 MiB message": (lambda: request_with(raw=b"\0" * (3 << 20)), EXHAUSTED),
    "3 MiB of typed values": (lambda: request_with(typed=[0.0] * (3 << 18) + [0.0]), EXHAUSTED),
}


def _twice(request):
    request.inputs.append(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])
    return request


def _with_output(request, name):
    request.outputs.add(name=name)
    return request


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_request_gets_its_status_and_the_daemon_keeps_serving(stub, baseline, case):
    make, want = CASES[case]
    assert status_of(stub.ModelInfer, make()) == want
    counted("fixed ModelInfer")
    np.testing.assert_array_equal(infer_ok(stub, valid_request()), baseline)


def test_typed_fp32_and_uint8_inputs_are_served(stub, baseline):
    np.testing.assert_array_equal(infer_ok(stub, request_with(typed=X.reshape(-1))), baseline)
    pixels = np.random.default_rng(4).integers(0, 256, COUNT, dtype=np.uint8)
    raw_u8 = infer_ok(stub, request_with(datatype="UINT8", raw=pixels.tobytes()))
    typed_u8 = infer_ok(stub, request_with(datatype="UINT8", typed=pixels.tolist()))
    as_float = infer_ok(stub, valid_request(pixels.astype(np.float32).reshape(SHAPE)))
    np.testing.assert_array_equal(raw_u8, as_float)
    np.testing.assert_array_equal(typed_u8, as_float)


def test_undeserializable_bytes_are_refused_and_the_daemon_keeps_serving(channel, stub, baseline, daemon):
    """gRPC itself refuses them (INTERNAL) before any servicer runs, and logs a traceback each time."""
    raw = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    payloads = [b"\xff" * n for n in range(1, 30)] + [b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05ab", b"\x0a"]
    for payload in payloads:
        assert status_of(raw, payload) == grpc.StatusCode.INTERNAL
        counted("undeserializable")
    np.testing.assert_array_equal(infer_ok(stub, valid_request()), baseline)
    lines = daemon.log().count("Exception deserializing message")
    print(f"{len(payloads)} undeserializable requests: {lines} 'Exception deserializing' log records")


# ----- generated malformed ModelInfer requests ------------------------------------------------------

EXTREME_DIMS = [-(2**63), -1, 0, 1, 3, 224, 2**31, 2**40, 2**63 - 1]


@st.composite
def infer_requests(draw):
    """A request and the status it must get, most of them malformed in one or several ways."""
    # One in eight requests names an unknown model or version: the rest reach the codec.
    unknown = draw(st.integers(0, 7)) == 0
    model = draw(st.sampled_from(["", "squeezenet", "x" * 300, MODEL])) if unknown else MODEL
    version = (
        draw(st.sampled_from(["0", "2", "latest"]))
        if unknown and model == MODEL
        else draw(st.sampled_from(["", "1"]))
    )
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    valid = True
    n_inputs = draw(st.sampled_from([1, 1, 1, 0, 2]))
    valid &= n_inputs == 1
    kind = draw(st.sampled_from(["raw", "typed", "both", "none"]))
    valid &= kind in ("raw", "typed")
    nonfinite = draw(st.sampled_from([None, None, None, np.nan, np.inf, -np.inf]))
    for i in range(n_inputs):
        name = draw(st.sampled_from(["input", "input", "input", "x", "", "INPUT"])) if i == 0 else "input"
        datatype = draw(st.sampled_from(["FP32", "FP32", "UINT8", "FP16", "INT64", "BYTES", ""]))
        shape = draw(st.sampled_from([SHAPE, SHAPE, None]))
        if shape is None:
            shape = draw(st.lists(st.sampled_from(EXTREME_DIMS), max_size=6))
        valid &= name == "input" and datatype in ("FP32", "UINT8") and shape == SHAPE
        t = request.inputs.add(name=name, datatype=datatype, shape=shape)
        count = draw(st.sampled_from([COUNT, COUNT, COUNT, 0, 1, COUNT - 1, COUNT + 1]))
        valid &= count == COUNT
        if datatype == "UINT8":
            values = np.full(count, 7, dtype=np.uint8)
        else:
            values = np.resize(X.reshape(-1), count)
            if nonfinite is not None and count:
                values[count // 2] = nonfinite
                valid = False
        if kind in ("raw", "both"):
            request.raw_input_contents.append(values.tobytes())
        if kind in ("typed", "both"):
            field = t.contents.uint_contents if datatype == "UINT8" else t.contents.fp32_contents
            field.extend(values.tolist())
    if model != MODEL or version not in ("", "1"):
        return request, grpc.StatusCode.NOT_FOUND
    return request, grpc.StatusCode.OK if valid else grpc.StatusCode.INVALID_ARGUMENT


def test_generated_malformed_requests_get_the_right_status(stub, baseline):
    statuses: dict[str, int] = {}

    @fixed(300)
    @given(infer_requests())
    def check(case):
        request, want = case
        if request.ByteSize() > MAX_MESSAGE:
            want = grpc.StatusCode.RESOURCE_EXHAUSTED
        got = status_of(stub.ModelInfer, request)
        if got != want and want == grpc.StatusCode.OK:
            raise AssertionError(f"a valid request was refused with {got}")
        if got == grpc.StatusCode.OK and request.inputs[0].datatype == "FP32":
            np.testing.assert_array_equal(infer_ok(stub, request), baseline)  # the generator sends X
        assert got == want, (
            f"{got} instead of {want} for {request.model_name[:20]!r} {list(request.inputs)[:2]}"
        )
        statuses[got.name] = statuses.get(got.name, 0) + 1
        counted("generated ModelInfer")

    check()
    print(f"generated ModelInfer statuses: {statuses}")
    assert statuses.get("INVALID_ARGUMENT", 0) > 100 and statuses.get("NOT_FOUND", 0) > 5
    assert statuses.get("OK", 0) > 5  # the oracle also knows valid requests when it sees them
    np.testing.assert_array_equal(infer_ok(stub, valid_request()), baseline)


OTHER_RPCS = {
    "ModelReady": lambda stub, control, name: (stub.ModelReady, pb.ModelReadyRequest(name=name)),
    "ModelMetadata": lambda stub, control, name: (stub.ModelMetadata, pb.ModelMetadataRequest(name=name)),
    "ModelMetadata version": lambda stub, control, name: (
        stub.ModelMetadata,
        pb.ModelMetadataRequest(name=MODEL, version=name),
    ),
    "ListPlans": lambda stub, control, name: (control.ListPlans, cp.ListPlansRequest(model=name)),
    "UnloadModel": lambda stub, control, name: (control.UnloadModel, cp.UnloadModelRequest(name=name)),
}


@pytest.mark.parametrize("rpc", sorted(OTHER_RPCS))
@pytest.mark.parametrize(
    "name", ["nope", "", "\0", "é" * 50_000, "../" + MODEL], ids=["nope", "empty", "nul", "long", "dotdot"]
)
def test_other_rpcs_with_unknown_names_are_not_found(stub, control, rpc, name):
    call, request = OTHER_RPCS[rpc](stub, control, name)
    latest = rpc == "ModelMetadata version" and name == ""  # an empty version means the latest: valid
    assert status_of(call, request) == (grpc.StatusCode.OK if latest else grpc.StatusCode.NOT_FOUND)
    counted("other RPCs")
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=30).ready


# ----- the control service ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, want",
    [
        ("/etc/passwd", grpc.StatusCode.INVALID_ARGUMENT),
        ("../outside.onnx", grpc.StatusCode.INVALID_ARGUMENT),
        ("sub/../../outside.onnx", grpc.StatusCode.INVALID_ARGUMENT),
        ("link.onnx", grpc.StatusCode.INVALID_ARGUMENT),  # a symlink to a model outside the folder
        ("missing.onnx", grpc.StatusCode.INVALID_ARGUMENT),
        ("garbage.onnx\0.onnx", grpc.StatusCode.INVALID_ARGUMENT),
        ("a" * 300 + ".onnx", grpc.StatusCode.INVALID_ARGUMENT),
        ("a/" * 3000, grpc.StatusCode.INVALID_ARGUMENT),
        ("garbage.onnx", grpc.StatusCode.FAILED_PRECONDITION),  # inside, but not ONNX: an import error
        ("huge.onnx", grpc.StatusCode.FAILED_PRECONDITION),  # declares a 4 TiB weight
    ],
)
def test_load_model_refuses_paths_outside_and_bad_files(control, stub, baseline, path, want):
    assert status_of(control.LoadModel, cp.LoadModelRequest(name="intruder", path=path)) == want
    counted("LoadModel")
    names = [m.name for m in control.ListModels(cp.ListModelsRequest(), timeout=30).models]
    assert names == [MODEL]
    np.testing.assert_array_equal(infer_ok(stub, valid_request()), baseline)


def test_load_model_of_a_name_already_loaded_is_already_exists(control, stub, baseline):
    assert status_of(control.LoadModel, cp.LoadModelRequest(name=MODEL)) == grpc.StatusCode.ALREADY_EXISTS
    counted("LoadModel")
    np.testing.assert_array_equal(infer_ok(stub, valid_request()), baseline)


def test_load_model_inside_the_folder_still_works_through_a_symlink(control, stub, baseline):
    """The refusals above are not a blanket refusal: a model inside the folder (via a symlink) loads."""
    response = control.LoadModel(cp.LoadModelRequest(name="tiny", path="alias.onnx"), timeout=300)
    try:
        assert response.model.ready
        x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
        request = pb.ModelInferRequest(model_name="tiny")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 64])
        request.raw_input_contents.append(x.tobytes())
        assert stub.ModelInfer(request, timeout=60).outputs[0].shape == [1, 64]
    finally:
        control.UnloadModel(cp.UnloadModelRequest(name="tiny"), timeout=60)
    counted("LoadModel")
    np.testing.assert_array_equal(infer_ok(stub, valid_request()), baseline)


def test_generated_load_model_paths_outside_are_refused(control):
    @fixed(100)
    @given(
        st.lists(
            st.sampled_from(["..", ".", "", "/", "etc", "passwd", "link.onnx", "\0", "é", "~"]),
            min_size=1,
            max_size=8,
        )
    )
    def check(parts):
        path = "/".join(parts)
        got = status_of(control.LoadModel, cp.LoadModelRequest(name="intruder", path=path or "/"))
        # "." names the models folder itself: not a package, a failed precondition.
        assert got in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), (path, got)
        counted("generated LoadModel")

    check()


GARBAGE_BUDGETS = [
    "garbage",
    "",
    " ",
    "-5",
    "-5M",
    "1e400",
    "9" * 400 + "G",
    "99999999999999999999999999G",
    "\0",
    "NaN",
    "inf",
    "0x10",
    "1_000",
    "5 Q",
    "M",
    "1.5.5M",
    "٣٣٣٣" * 100,
    "x" * 100_000,
]


def test_set_budget_with_garbage_is_invalid_and_changes_nothing(control):
    def budget():
        status = control.GetStatus(cp.GetStatusRequest(), timeout=30).status
        return status.effective_budget_bytes, status.budget_source, status.operator_budget, status.swaps

    before = budget()
    for text in GARBAGE_BUDGETS:
        got = status_of(control.SetBudget, cp.SetBudgetRequest(budget=text))
        assert got in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), (
            text[:40],
            got,
        )
        counted("SetBudget garbage")
    assert budget() == before


def test_generated_budget_strings_never_fail_unexpectedly(control, stub, baseline):
    @fixed(150)
    @given(st.text(max_size=40) | st.from_regex(r"\A\s*\d{1,30}(\.\d{1,5})?\s*[A-Za-z]{0,4}\s*\Z"))
    def check(text):
        got = status_of(control.SetBudget, cp.SetBudgetRequest(budget=text))
        ok = (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
        assert got in ok, (text, got)
        counted("generated SetBudget")

    try:
        check()
    finally:
        assert status_of(control.SetBudget, cp.SetBudgetRequest(budget="auto")) == grpc.StatusCode.OK
    np.testing.assert_array_equal(infer_ok(stub, valid_request()), baseline)


# ----- memory ---------------------------------------------------------------------------------


def hostile_mix(i: int) -> pb.ModelInferRequest:
    """Hundreds of requests, many as large as allowed, that all fail after their bytes were read."""
    return [
        lambda: request_with(
            raw=RAW[:-4] + b"\0" * (MAX_MESSAGE - COUNT * 4 - 200)
        ),  # near the limit, wrong count
        lambda: request_with(raw=b"\0" * (3 << 20)),  # above the limit
        lambda: request_with(shape=[1, 1 << 40], raw=b"\0" * 4),
        lambda: request_with(raw=with_value(np.nan)),
        lambda: request_with(typed=X.reshape(-1)[:-1]),
        lambda: request_with(model="m" * 50_000, raw=RAW),
    ][i % 6]()


def test_rss_stays_bounded_across_hostile_requests(stub, baseline, daemon):
    for i in range(30):  # warm-up: gRPC's buffers and the allocator's arenas reach their working size
        status_of(stub.ModelInfer, hostile_mix(i))
    infer_ok(stub, valid_request())
    before = vm_rss(daemon.proc.pid)
    n = 300
    for i in range(n):
        assert status_of(stub.ModelInfer, hostile_mix(i)) != grpc.StatusCode.OK
        counted("RSS loop")
    np.testing.assert_array_equal(infer_ok(stub, valid_request()), baseline)
    after = vm_rss(daemon.proc.pid)
    growth = after - before
    print(
        f"daemon RSS across {n} hostile requests: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB "
        f"({growth / 2**20:+.1f} MiB)"
    )
    assert growth < RSS_BOUND, f"RSS grew by {growth:,} bytes across {n} hostile requests"
    assert daemon.proc.poll() is None and os.path.exists(daemon.socket)


def test_rss_plateaus_under_concurrent_hostile_requests(stub, baseline, daemon):
    """Concurrent near-limit requests hold up to (concurrent RPCs x max message) while in flight, and the
    allocator keeps some of it; the growth stays within that bound and levels off wave after wave."""
    request = request_with(raw=RAW[:-4] + b"\0" * (MAX_MESSAGE - COUNT * 4 - 200))
    waves, per_wave, threads = 3, 192, 32
    rss = [vm_rss(daemon.proc.pid)]
    for _ in range(waves):
        with ThreadPoolExecutor(threads) as pool:
            codes = list(pool.map(lambda _: status_of(stub.ModelInfer, request), range(per_wave)))
        # Over capacity is an allowed answer; anything else must be the codec's refusal.
        assert set(codes) <= {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
        counted("concurrent RSS waves")
        rss.append(vm_rss(daemon.proc.pid))
    np.testing.assert_array_equal(infer_ok(stub, valid_request()), baseline)
    print(
        f"daemon RSS across {waves} waves of {per_wave} concurrent ({threads}) hostile requests: "
        + " -> ".join(f"{r / 2**20:.0f}" for r in rss)
        + " MiB"
    )
    # In flight: at most `threads` messages, each copied a few times (gRPC's buffer, bytes, the parsed message).
    in_flight_bound = threads * MAX_MESSAGE * 3
    assert rss[-1] - rss[0] < in_flight_bound, f"RSS grew beyond {in_flight_bound:,} bytes: {rss}"
    # A leak grows with every wave; what the allocator keeps goes up and down with the last wave's timing.
    assert rss[-1] - max(rss[1:-1]) < RSS_BOUND, f"RSS still grows wave after wave: {rss}"
    # Idle again, the main loop trims the heap: what the burst took goes back to the OS.
    deadline = time.monotonic() + 30
    while vm_rss(daemon.proc.pid) - rss[0] > IDLE_BOUND and time.monotonic() < deadline:
        time.sleep(0.25)
    settled = vm_rss(daemon.proc.pid)
    assert settled - rss[0] <= IDLE_BOUND, f"idle RSS stays {(settled - rss[0]) / 2**20:.0f} MiB above: {rss}"
