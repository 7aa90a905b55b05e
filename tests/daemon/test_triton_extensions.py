"""Triton's extensions (model statistics, configuration, repository index, load and unload) through the
stock tritonclient against the real daemon, and our messages against tritonclient's on the wire.

tritonclient runs in a child process: its generated `inference` messages and ours cannot be imported
in one process.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import grpc
import pytest
from flexnn_api.proto import inference_pb2, inference_pb2_grpc

from tests.daemon.harness import DaemonProcess
from tests.daemon.test_models import fc_model

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None, reason="tritonclient is not installed"
)

# Runs in the child: `python -c CHILD SCENARIO URL`; prints one JSON object.
CHILD = r"""
import json, sys
import numpy as np
import tritonclient.grpc as g
from tritonclient.utils import InferenceServerException

scenario, url = sys.argv[1], sys.argv[2]
out = {}


def repeated(field):  # protobuf 6 drops `label` for `is_repeated`
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


def error(call):
    try:
        call()
    except InferenceServerException as e:
        return e.status()
    return None


if scenario == "descriptors":
    from tritonclient.grpc import model_config_pb2, service_pb2

    pool = service_pb2.DESCRIPTOR.pool
    for name in json.loads(sys.stdin.read()):
        message = pool.FindMessageTypeByName(name)
        out[name] = {
            f.name: [f.number, f.type, repeated(f), f.message_type.full_name if f.message_type else ""]
            for f in message.fields
        }
    out["DataType"] = {v.name: v.number for v in model_config_pb2.DataType.DESCRIPTOR.values}
    print(json.dumps(out))
    sys.exit(0)

client = g.InferenceServerClient(url=url)


def infer(model, width):
    x = g.InferInput("x", [1, width], "FP32")
    x.set_data_from_numpy(np.ones((1, width), np.float32))
    return client.infer(model, [x])


if scenario == "statistics":
    out["extensions"] = list(client.get_server_metadata().extensions)
    out["before"] = client.get_inference_statistics("a", as_json=True)
    for _ in range(5):
        infer("a", 256)
    out["bad_shape"] = error(lambda: infer("a", 255))
    out["after"] = client.get_inference_statistics("a", as_json=True)
    out["all"] = client.get_inference_statistics(as_json=True)
    out["unknown"] = error(lambda: client.get_inference_statistics("nope"))
    out["other_version"] = error(lambda: client.get_inference_statistics("a", "2"))
elif scenario == "config":
    out["config"] = client.get_model_config("a", as_json=True)
    out["unknown"] = error(lambda: client.get_model_config("nope"))
elif scenario == "repository":
    out["before"] = client.get_model_repository_index(as_json=True)
    client.load_model("b")
    out["loaded"] = client.get_model_repository_index(as_json=True)
    out["b_ready"] = client.is_model_ready("b")
    out["b_output"] = infer("b", 192).as_numpy("y").shape
    out["b_stats"] = client.get_inference_statistics("b", as_json=True)
    client.load_model("b")  # already loaded: nothing to do
    client.unload_model("b")
    out["unloaded"] = client.get_model_repository_index(as_json=True)
    out["with_config"] = error(lambda: client.load_model("b", config='{"max_batch_size": 8}'))
    out["unload_unknown"] = error(lambda: client.unload_model("nope"))
    out["after_refusals"] = client.get_model_repository_index(as_json=True)
print(json.dumps(out, default=list))
"""


def child(scenario: str, url: str = "", stdin: str = "") -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, scenario, url],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    fc_model(models / "a.onnx", seed=1)
    fc_model(models / "b.onnx", width=192, seed=2)
    (models / "notes.txt").write_text("not a model")
    d = DaemonProcess(
        tmp_path_factory.mktemp("daemon"),
        ["--models-dir", str(models), "--models", "a.onnx", "--threads", "1"],
        cache=tmp_path_factory.getbasetemp() / "observability-cache",  # shared with test_metrics
    )
    d.start()
    yield d
    d.stop()
    d.close()


def repeated(field) -> bool:  # protobuf 6 drops `label` for `is_repeated`
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


def _messages(file) -> list:
    pending, found = list(file.message_types_by_name.values()), []
    while pending:
        message = pending.pop()
        if not message.GetOptions().map_entry:
            found.append(message)
        pending.extend(message.nested_types)
    return found


def test_our_messages_are_tritonclients_on_the_wire():
    """Every field we declare has tritonclient's number, type, cardinality and message type."""
    ours = {
        m.full_name: {
            f.name: [f.number, f.type, repeated(f), f.message_type.full_name if f.message_type else ""]
            for f in m.fields
        }
        for m in _messages(inference_pb2.DESCRIPTOR)
    }
    theirs = child("descriptors", stdin=json.dumps(sorted(ours)))
    for name, fields in ours.items():
        assert {k: theirs[name][k] for k in fields} == fields, name
    ours_enum = {v.name: v.number for v in inference_pb2.DESCRIPTOR.enum_types_by_name["DataType"].values}
    assert ours_enum == theirs["DataType"]
    assert len(ours) > 30  # the walk found the OIP and the extension messages


def _count(stats: dict, *path: str) -> int:
    for key in path:
        stats = stats.get(key, {})
    return int(stats or 0)  # JSON from protobuf gives uint64 as text and leaves zeros out


def test_statistics_count_the_requests_served(daemon):
    got = child("statistics", f"unix://{daemon.socket}")
    assert {"statistics", "model_configuration", "model_repository"} <= set(got["extensions"])
    (before,) = got["before"]["model_stats"]
    (after,) = got["after"]["model_stats"]
    assert (after["name"], after["version"]) == ("a", "1")
    for path in (
        ("inference_count",),
        ("execution_count",),
        ("inference_stats", "success", "count"),
        ("inference_stats", "queue", "count"),
        ("inference_stats", "compute_input", "count"),
        ("inference_stats", "compute_infer", "count"),
        ("inference_stats", "compute_output", "count"),
    ):
        assert _count(after, *path) - _count(before, *path) == 5, path
    assert (
        _count(after, "inference_stats", "fail", "count") - _count(before, "inference_stats", "fail", "count")
        == 1
    )
    assert _count(after, "inference_stats", "compute_infer", "ns") > _count(
        before, "inference_stats", "compute_infer", "ns"
    )
    assert _count(after, "inference_stats", "success", "ns") >= _count(
        after, "inference_stats", "compute_infer", "ns"
    )
    assert int(after["last_inference"]) > 0
    with daemon.client() as c:
        (model,) = c.status().models
    assert [(m["type"], int(m["byte_size"])) for m in after["memory_usage"]] == [
        ("CPU", model.plan_budget_bytes)
    ]
    assert got["bad_shape"] == "StatusCode.INVALID_ARGUMENT"
    assert [m["name"] for m in got["all"]["model_stats"]] == ["a"]
    assert got["unknown"] == got["other_version"] == "StatusCode.NOT_FOUND"


def test_model_config_gives_platform_and_tensors(daemon):
    got = child("config", f"unix://{daemon.socket}")
    config = got["config"]["config"]
    assert (config["name"], config["platform"], config["backend"]) == ("a", "flexnn", "flexnn")
    assert config.get("max_batch_size", 0) == 0  # no batching: dims are the whole shapes
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["1", "256"]}]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": ["1", "256"]}]
    assert got["unknown"] == "StatusCode.NOT_FOUND"


def _index(response: dict) -> dict[str, tuple[str, str]]:
    return {m["name"]: (m["state"], m.get("reason", "")) for m in response.get("models", [])}


def test_repository_index_load_and_unload(daemon):
    got = child("repository", f"unix://{daemon.socket}")
    assert _index(got["before"]) == {"a": ("READY", ""), "b": ("UNAVAILABLE", "unloaded")}
    assert _index(got["loaded"]) == {"a": ("READY", ""), "b": ("READY", "")}
    assert got["b_ready"] and got["b_output"] == [1, 192]
    assert _count(got["b_stats"]["model_stats"][0], "inference_count") == 1
    assert _index(got["unloaded"]) == {"a": ("READY", ""), "b": ("UNAVAILABLE", "unloaded")}
    assert got["with_config"] == "StatusCode.INVALID_ARGUMENT"  # refused, not loaded without the config
    assert got["unload_unknown"] == "StatusCode.NOT_FOUND"
    assert _index(got["after_refusals"]) == _index(got["unloaded"])
    with daemon.client() as c:
        assert [m.name for m in c.status().models] == ["a"]
    with grpc.insecure_channel(
        f"unix://{daemon.socket}"
    ) as channel:  # tritonclient cannot ask for ready only
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        ready = stub.RepositoryIndex(inference_pb2.RepositoryIndexRequest(ready=True), timeout=30)
        assert [(m.name, m.state) for m in ready.models] == [("a", "READY")]
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryIndex(inference_pb2.RepositoryIndexRequest(repository_name="other"), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
