"""The committed generated code matches proto/*.proto, keeps the public OIP field numbers, and runs on
the lowest protobuf and grpcio that pyproject allows."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from flexnn_api.proto import inference_pb2
from flexnn_api.proto.flexnn.control.v1 import control_pb2
from google.protobuf import descriptor_pb2, text_format

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "clients" / "flexnn_api" / "proto"
COMMITTED = {"inference.proto": inference_pb2, "flexnn/control/v1/control.proto": control_pb2}


def _generate_script():
    spec = importlib.util.spec_from_file_location("flexnn_proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generate():
    return _generate_script()


@pytest.fixture(scope="module")
def fresh(generate, tmp_path_factory) -> tuple[dict[str, descriptor_pb2.FileDescriptorProto], Path]:
    """The .proto files compiled now with the installed grpc_tools: descriptors, and generated modules."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools is needed to recompile the .proto files")
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("protoc")
    descriptor_set = out / "set.pb"
    args = ["protoc", f"-I{generate.PROTO_DIR}", f"--descriptor_set_out={descriptor_set}"]
    assert protoc.main([*args, *(str(generate.PROTO_DIR / p) for p in generate.PROTOS)]) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    modules = out / "modules"
    modules.mkdir()
    generate.compile_protos(modules)
    generate.make_package(modules)
    return {f.name: f for f in files}, modules


def test_generate_covers_exactly_the_committed_protos(generate):
    assert set(generate.PROTOS) == set(COMMITTED)
    assert sorted(
        p.relative_to(ROOT / "proto").as_posix() for p in (ROOT / "proto").rglob("*.proto")
    ) == sorted(generate.PROTOS)


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_committed_descriptor_matches_proto(fresh, name):
    descriptors, _ = fresh
    committed = descriptor_pb2.FileDescriptorProto.FromString(COMMITTED[name].DESCRIPTOR.serialized_pb)
    recompiled = _without_json_names(descriptors[name])
    assert text_format.MessageToString(committed) == text_format.MessageToString(recompiled), (
        f"{name} changed since clients/flexnn_api/proto was generated: run proto/generate.py (see its docstring)"
    )


def _without_json_names(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """protoc strips json_name from the descriptor it embeds in Python code, not from a descriptor set."""
    file = descriptor_pb2.FileDescriptorProto.FromString(file.SerializeToString())
    messages = list(file.message_type)
    while messages:
        message = messages.pop()
        for field in message.field:
            field.ClearField("json_name")
        messages.extend(message.nested_type)
    return file


def _method_paths(text: str) -> list[str]:
    return sorted(set(re.findall(r"'(/[\w.]+/\w+)'", text)))


def test_committed_grpc_stubs_match_proto(fresh):
    _, modules = fresh
    for path in sorted(modules.rglob("*_pb2_grpc.py")):
        relative = path.relative_to(modules)
        committed = (GENERATED / relative).read_text()
        assert _method_paths(committed) == _method_paths(path.read_text()), relative
        # the package rewrite gives the same imports of our modules whatever the generator version
        assert _own_imports(committed) == _own_imports(path.read_text()), relative


def _own_imports(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"(from \S+ )?import \w+_pb2 ", line)]


def test_stub_methods_are_the_services_methods():
    from flexnn_api.proto import inference_pb2_grpc
    from flexnn_api.proto.flexnn.control.v1 import control_pb2_grpc

    for module, stubs in ((inference_pb2, inference_pb2_grpc), (control_pb2, control_pb2_grpc)):
        for service in module.DESCRIPTOR.services_by_name.values():
            paths = _method_paths(Path(stubs.__file__).read_text())
            assert [p for p in paths if p.startswith(f"/{service.full_name}/")] == sorted(
                f"/{service.full_name}/{m.name}" for m in service.methods
            )


def _minimum(requirement: str) -> tuple[int, ...]:
    import tomllib  # Python >= 3.11; the test environment has it

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in dependencies if re.fullmatch(rf"{re.escape(requirement)}\s*>=.*", d)]
    return tuple(int(x) for x in spec.split(">=")[1].strip().split("."))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


@pytest.mark.parametrize("path", sorted(GENERATED.rglob("*_pb2.py")), ids=lambda p: p.name)
def test_messages_do_not_demand_a_protobuf_newer_than_pyproject_allows(path):
    text = path.read_text()
    minimum = _minimum("protobuf")
    header = re.search(r"^# Protobuf Python Version: ([\d.]+)$", text, re.MULTILINE)
    assert header, f"{path.name} has no 'Protobuf Python Version' header: regenerate with proto/generate.py"
    # protobuf accepts gencode of its own major.minor series; newer gencode may need newer runtime features
    assert _version(header[1])[:2] <= minimum[:2], (
        f"{path.name} generated for protobuf {header[1]} > {minimum}"
    )
    check = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*([\d,\s]+)", text
    )
    if check:
        demanded = tuple(int(x) for x in re.findall(r"\d+", check[1])[:3])
        assert demanded <= minimum + (0,) * (3 - len(minimum)), f"{path.name} demands protobuf {demanded}"


@pytest.mark.parametrize("path", sorted(GENERATED.rglob("*_pb2_grpc.py")), ids=lambda p: p.name)
def test_stubs_do_not_demand_a_grpcio_newer_than_pyproject_allows(path):
    demanded = re.search(r"^GRPC_GENERATED_VERSION = '([\d.]+)'$", path.read_text(), re.MULTILINE)
    if demanded:  # grpcio-tools >= 1.63 writes a runtime check; 1.62 does not
        assert _version(demanded[1]) <= _minimum("grpcio"), f"{path.name} demands grpcio {demanded[1]}"


# The public Open Inference Protocol v2 numbers (kserve grpc_predict_v2.proto, Triton grpc_service.proto).
PUBLIC_FIELDS = {
    "ServerLiveResponse": {"live": 1},
    "ServerReadyResponse": {"ready": 1},
    "ModelReadyRequest": {"name": 1, "version": 2},
    "ModelReadyResponse": {"ready": 1},
    "ServerMetadataResponse": {"name": 1, "version": 2, "extensions": 3},
    "ModelMetadataRequest": {"name": 1, "version": 2},
    "ModelMetadataResponse": {"name": 1, "versions": 2, "platform": 3, "inputs": 4, "outputs": 5},
    "ModelMetadataResponse.TensorMetadata": {"name": 1, "datatype": 2, "shape": 3},
    "InferParameter": {
        "bool_param": 1,
        "int64_param": 2,
        "string_param": 3,
        "double_param": 4,
        "uint64_param": 5,
    },
    "InferTensorContents": {
        "bool_contents": 1,
        "int_contents": 2,
        "int64_contents": 3,
        "uint_contents": 4,
        "uint64_contents": 5,
        "fp32_contents": 6,
        "fp64_contents": 7,
        "bytes_contents": 8,
    },
    "ModelInferRequest": {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "inputs": 5,
        "outputs": 6,
        "raw_input_contents": 7,
    },
    "ModelInferRequest.InferInputTensor": {
        "name": 1,
        "datatype": 2,
        "shape": 3,
        "parameters": 4,
        "contents": 5,
    },
    "ModelInferRequest.InferRequestedOutputTensor": {"name": 1, "parameters": 2},
    "ModelInferResponse": {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "outputs": 5,
        "raw_output_contents": 6,
    },
    "ModelInferResponse.InferOutputTensor": {
        "name": 1,
        "datatype": 2,
        "shape": 3,
        "parameters": 4,
        "contents": 5,
    },
    # Triton extensions (grpc_service.proto and model_config.proto): the fields flexnnd declares.
    "ModelConfigRequest": {"name": 1, "version": 2},
    "ModelConfigResponse": {"config": 1},
    "ModelConfig": {
        "name": 1,
        "platform": 2,
        "max_batch_size": 4,
        "input": 5,
        "output": 6,
        "backend": 17,
    },
    "ModelInput": {"name": 1, "data_type": 2, "dims": 4},
    "ModelOutput": {"name": 1, "data_type": 2, "dims": 3},
    "ModelStatisticsRequest": {"name": 1, "version": 2},
    "ModelStatisticsResponse": {"model_stats": 1},
    "ModelStatistics": {
        "name": 1,
        "version": 2,
        "last_inference": 3,
        "inference_count": 4,
        "execution_count": 5,
        "inference_stats": 6,
        "memory_usage": 8,
    },
    "InferStatistics": {
        "success": 1,
        "fail": 2,
        "queue": 3,
        "compute_input": 4,
        "compute_infer": 5,
        "compute_output": 6,
    },
    "StatisticDuration": {"count": 1, "ns": 2},
    "MemoryUsage": {"type": 1, "id": 2, "byte_size": 3},
    "ModelRepositoryParameter": {"bool_param": 1, "int64_param": 2, "string_param": 3, "bytes_param": 4},
    "RepositoryIndexRequest": {"repository_name": 1, "ready": 2},
    "RepositoryIndexResponse": {"models": 1},
    "RepositoryIndexResponse.ModelIndex": {"name": 1, "version": 2, "state": 3, "reason": 4},
    "RepositoryModelLoadRequest": {"repository_name": 1, "model_name": 2, "parameters": 3},
    "RepositoryModelLoadResponse": {},
    "RepositoryModelUnloadRequest": {"repository_name": 1, "model_name": 2, "parameters": 3},
    "RepositoryModelUnloadResponse": {},
}
# Triton's DataType enum (model_config.proto).
PUBLIC_DATATYPES = {
    "TYPE_INVALID": 0,
    "TYPE_BOOL": 1,
    "TYPE_UINT8": 2,
    "TYPE_UINT16": 3,
    "TYPE_UINT32": 4,
    "TYPE_UINT64": 5,
    "TYPE_INT8": 6,
    "TYPE_INT16": 7,
    "TYPE_INT32": 8,
    "TYPE_INT64": 9,
    "TYPE_FP16": 10,
    "TYPE_FP32": 11,
    "TYPE_FP64": 12,
    "TYPE_STRING": 13,
    "TYPE_BF16": 14,
}
PUBLIC_METHODS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
    "ModelConfig": ("ModelConfigRequest", "ModelConfigResponse"),
    "ModelStatistics": ("ModelStatisticsRequest", "ModelStatisticsResponse"),
    "RepositoryIndex": ("RepositoryIndexRequest", "RepositoryIndexResponse"),
    "RepositoryModelLoad": ("RepositoryModelLoadRequest", "RepositoryModelLoadResponse"),
    "RepositoryModelUnload": ("RepositoryModelUnloadRequest", "RepositoryModelUnloadResponse"),
}


def test_inference_messages_keep_the_public_field_numbers():
    pool = inference_pb2.DESCRIPTOR.pool
    for message, fields in PUBLIC_FIELDS.items():
        descriptor = pool.FindMessageTypeByName(f"inference.{message}")
        assert {f.name: f.number for f in descriptor.fields} == fields, message


def test_datatype_enum_keeps_the_public_numbers():
    enum = inference_pb2.DESCRIPTOR.enum_types_by_name["DataType"]
    assert {v.name: v.number for v in enum.values} == PUBLIC_DATATYPES


def test_inference_service_has_the_public_methods():
    service = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    got = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    assert got == {k: (f"inference.{i}", f"inference.{o}") for k, (i, o) in PUBLIC_METHODS.items()}
    assert not any(m.client_streaming or m.server_streaming for m in service.methods)


def test_a_triton_style_raw_request_parses():
    """Bytes as a stock client puts them on the wire: field 7 carries the raw input."""
    wire = (
        b"\x0a\x03net"  # model_name = 1
        + b"\x2a\x0e\x0a\x01x\x12\x04FP32\x1a\x03\x01\x02\x02"  # inputs = 5 {name=1, datatype=2, shape=3 packed}
        + b"\x3a\x04\x00\x00\x80\x3f"  # raw_input_contents = 7: float32 1.0
    )
    request = inference_pb2.ModelInferRequest.FromString(wire)
    assert request.model_name == "net"
    assert (request.inputs[0].name, request.inputs[0].datatype, list(request.inputs[0].shape)) == (
        "x",
        "FP32",
        [1, 2, 2],
    )
    assert request.raw_input_contents == [b"\x00\x00\x80\x3f"]


def test_control_service_methods():
    service = control_pb2.DESCRIPTOR.services_by_name["Control"]
    assert service.full_name == "flexnn.control.v1.Control"
    assert [m.name for m in service.methods] == [
        "SetBudget",
        "GetStatus",
        "ListModels",
        "LoadModel",
        "UnloadModel",
        "ListPlans",
        "WatchEvents",
    ]
    watch = service.methods_by_name["WatchEvents"]
    assert watch.server_streaming and not watch.client_streaming
    assert watch.output_type.full_name == "flexnn.control.v1.Event"


def test_generated_stubs_serve_over_a_unix_socket(tmp_path):
    """The committed code works with the installed grpcio: a unary OIP call and the Control event stream."""
    from concurrent import futures

    import grpc
    from flexnn_api.proto import inference_pb2_grpc
    from flexnn_api.proto.flexnn.control.v1 import control_pb2_grpc

    class Inference(inference_pb2_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request, context):
            return inference_pb2.ServerLiveResponse(live=True)

    class Control(control_pb2_grpc.ControlServicer):
        def WatchEvents(self, request, context):
            for i in range(3):
                yield control_pb2.Event(kind=control_pb2.Event.KIND_SWAP, from_bytes=i, to_bytes=i + 1)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Inference(), server)
    control_pb2_grpc.add_ControlServicer_to_server(Control(), server)
    address = f"unix://{tmp_path}/s.sock"
    assert server.add_insecure_port(address)
    server.start()
    try:
        with grpc.insecure_channel(address) as channel:
            assert (
                inference_pb2_grpc.GRPCInferenceServiceStub(channel)
                .ServerLive(inference_pb2.ServerLiveRequest(), timeout=30)
                .live
            )
            events = list(
                control_pb2_grpc.ControlStub(channel).WatchEvents(
                    control_pb2.WatchEventsRequest(), timeout=30
                )
            )
            assert [(e.kind, e.from_bytes, e.to_bytes) for e in events] == [(2, 0, 1), (2, 1, 2), (2, 2, 3)]
            with pytest.raises(grpc.RpcError) as info:
                inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    inference_pb2.ModelInferRequest(), timeout=30
                )
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(None).wait()
