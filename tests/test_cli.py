"""flexnnctl's local commands and what it imports (its daemon commands: tests/daemon/test_ctl_e2e.py)."""

from __future__ import annotations

import pytest

from flexnn_client import EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE
from flexnn_client.ctl import main as flexnnctl
from flexnnd.graph.package import read_package
from tests.conftest import save
from tests.graph.test_import import conv_bn_relu_model


def test_import_writes_a_package(tmp_path, capsys):
    model = save(conv_bn_relu_model(), tmp_path / "m.onnx")
    assert flexnnctl(["import", str(model), str(tmp_path / "pkg"), "--input-shape", "x=1,3,9,11"]) == EXIT_OK
    assert "imported" in capsys.readouterr().out
    assert read_package(tmp_path / "pkg").graph.inputs[0].shape == (1, 3, 9, 11)


def test_import_of_a_bad_file_fails_with_the_reason(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    assert flexnnctl(["import", str(bad), str(tmp_path / "pkg")]) == EXIT_FAILED
    assert "not a readable ONNX model" in capsys.readouterr().err
    assert not (tmp_path / "pkg").exists()


def test_bad_arguments_are_a_usage_error(tmp_path, capsys):
    assert flexnnctl(["import", "m.onnx", str(tmp_path), "--input-shape", "x:1"]) == EXIT_USAGE
    assert "expected NAME=D1,D2" in capsys.readouterr().err
    assert flexnnctl(["frobnicate"]) == EXIT_USAGE


# ----- a light client -------------------------------------------------------------------------------

ENGINE = ("numba", "llvmlite", "onnx", "numpy", "flexnnd")


def engine_modules_after(code: str, env_extra: dict[str, str] | None = None) -> tuple[list[str], str]:
    """The engine modules a fresh interpreter holds after running `code`, and what it printed."""
    import json
    import os
    import subprocess
    import sys

    from tests.daemon.harness import ROOT

    env = {k: v for k, v in os.environ.items() if k != "FLEXNN_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "clients"), str(ROOT)])
    env.update(env_extra or {})
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)), file=sys.stderr)"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    loaded = json.loads(out.stderr.strip().splitlines()[-1])
    return [m for m in loaded if m.split(".")[0] in ENGINE], out.stdout


def test_the_client_imports_neither_the_engine_nor_numpy():
    held, _ = engine_modules_after("import flexnn_client.client, flexnn_client.ctl, flexnn_client.as_json")
    assert held == []


def test_flexnnctl_help_and_version_import_no_engine():
    from importlib.metadata import version

    held, printed = engine_modules_after("from flexnn_client.ctl import main\nmain(['--help'])")
    assert held == [] and "set-budget" in printed
    held, printed = engine_modules_after("from flexnn_client.ctl import main\nmain(['--version'])")
    assert held == [] and printed.strip() == f"flexnnctl {version('flexnn')}"


def test_flexnnctl_finds_no_daemon_without_importing_the_engine(tmp_path):
    """The default socket comes from flexnn_api.paths: no flexnnd.daemon.config (so no zoo, no onnx)."""
    code = "from flexnn_client.ctl import main\nprint('exit', main(['status']))"
    held, printed = engine_modules_after(code, {"RUNTIME_DIRECTORY": str(tmp_path)})
    assert printed.strip() == f"exit {EXIT_NOT_RUNNING}"
    assert held == []


@pytest.mark.parametrize(
    "env, uid",
    [
        ({"RUNTIME_DIRECTORY": "/run/a:/run/b", "XDG_RUNTIME_DIR": "/run/user/7"}, 7),
        ({"RUNTIME_DIRECTORY": "relative:/run/x"}, 7),
        ({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000),
        ({"HOME": "/root"}, 0),
        ({"TMPDIR": "/var/tmp"}, 1000),
    ],
)
def test_the_client_and_the_daemon_agree_on_the_default_socket(env, uid):
    from flexnn_api.paths import SOCKET_NAME, runtime_dir

    from flexnnd.daemon.config import Config, resolve_dirs

    assert runtime_dir(env, uid) / SOCKET_NAME == resolve_dirs(Config(), env, uid).socket


def test_the_client_takes_flexnn_address_else_the_socket_of_its_environment(tmp_path):
    from flexnn_api.paths import default_address

    (tmp_path / "flexnnd.sock").touch()
    assert default_address({"RUNTIME_DIRECTORY": str(tmp_path)}, 1000) == str(tmp_path / "flexnnd.sock")
    env = {"FLEXNN_ADDRESS": "10.0.0.1:8001", "RUNTIME_DIRECTORY": str(tmp_path)}
    assert default_address(env, 1000) == "10.0.0.1:8001"


# ----- --json and plans ----------------------------------------------------------------------------


def test_json_numbers_stay_numbers():
    """MessageToDict writes uint64 as strings: "swaps": "3"; flexnnctl --json writes 3."""
    from flexnn_api.proto.flexnn.control.v1 import control_pb2

    from flexnn_client.as_json import message_dict

    status = control_pb2.Status(swaps=3, rss_bytes=2**40, uptime_s=1.5, budget_source="system")
    status.models.add(name="a", inferences=12, queue_depth=1, arena_bytes=4096, ready=True)
    d = message_dict(status)
    assert d["swaps"] == 3 and d["rss_bytes"] == 2**40 and d["uptime_s"] == 1.5
    assert d["last_pressure_event"] is None and d["cgroup_limit_bytes"] == 0
    assert d["models"][0]["inferences"] == 12 and d["models"][0]["reason"] == ""
    status.last_pressure_event.kind = control_pb2.Event.KIND_PRESSURE
    status.last_pressure_event.to_bytes = 5
    event = message_dict(status)["last_pressure_event"]
    assert event["kind"] == "KIND_PRESSURE" and event["to_bytes"] == 5


def rung(budget, arena, streamed=0, sliced=(), active=False, **extra):
    return dict(
        budget_bytes=budget,
        arena_bytes=arena,
        resident_bytes=1000 - streamed,
        streamed_bytes=streamed,
        sliced_layers=list(sliced),
        predicted_latency_s=1.0 / arena,
        active=active,
        measured_latency_s=0.0,
        **extra,
    )


def test_plans_are_grouped_with_the_budgets_they_serve():
    from flexnn_client.ctl import distinct_plans

    ladder = [
        rung(25, 24, 900, ["fc0"]),
        rung(25, 24, 900, ["fc0"]),
        rung(41, 40, 900, ["fc0"]),
        rung(57, 56, 900, ["fc0"]),
        rung(57, 56, 800, ["fc0"]),  # another plan at the same cost: its own row
        rung(57, 56, 900, ["fc0"]),
        rung(1001, 1000, active=True),
        rung(1001, 1000, active=True),
    ]
    plans = distinct_plans(ladder)
    assert [(p["budget_from_bytes"], p["budget_to_bytes"], p["rungs"]) for p in plans] == [
        (25, 41, 2),
        (41, 57, 1),
        (57, 1001, 2),
        (57, 1001, 1),
        (1001, None, 2),
    ]
    assert [p["active"] for p in plans] == [False, False, False, False, True]
    assert plans[3]["streamed_bytes"] == 800 and plans[0]["sliced_layers"] == ["fc0"]


def test_local_plans_list_each_plan_once_as_table_and_json(tmp_path, monkeypatch, capsys):
    import json

    import flexnnd
    from flexnnd.planner.ladder import stored_ladder
    from tests.runtime.test_streaming import fc_chain

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    package = flexnnd.import_model(save(fc_chain(layers=6), tmp_path / "fc.onnx"), tmp_path / "pkg")
    assert flexnnctl(["plans", str(package), "--json"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    plans = listed["plans"]
    ladder = stored_ladder(read_package(package))
    assert sum(p["rungs"] for p in plans) == len(ladder) > len(plans)  # fc_chain's ladder repeats plans
    assert len({(p["arena_bytes"], p["streamed_bytes"]) for p in plans}) == len(plans)
    output_bytes = 256 * 4
    assert plans[0]["budget_from_bytes"] == ladder[0].arena_bytes + output_bytes
    assert plans[-1]["budget_to_bytes"] is None and plans[-1]["streamed_bytes"] == 0
    assert all(isinstance(p["arena_bytes"], int) for p in plans)
    assert flexnnctl(["plans", str(package)]) == EXIT_OK
    table = capsys.readouterr().out.splitlines()
    assert len(table) - 1 == len(plans) and table[-1].split()[0].endswith("+")


def test_import_json(tmp_path, capsys):
    import json

    model = save(conv_bn_relu_model(), tmp_path / "m.onnx")
    argv = [
        "import",
        str(model),
        str(tmp_path / "pkg"),
        "--input-shape",
        "x=1,3,9,11",
        "--no-ladder",
        "--json",
    ]
    assert flexnnctl(argv) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {
        "model": str(model),
        "package": str(tmp_path / "pkg"),
        "ladder": False,
    }


def test_a_leading_dash_value_reaches_set_budget():
    from flexnn_client.ctl import _dash_values_as_positionals, build_parser

    argv = _dash_values_as_positionals(["--address", "x.sock", "set-budget", "-5M", "--json"])
    args = build_parser().parse_args(argv)
    assert args.budget == "-5M" and args.json
    assert _dash_values_as_positionals(["set-budget", "--", "-5M"]) == ["set-budget", "--", "-5M"]
    assert _dash_values_as_positionals(["status", "--json"]) == ["status", "--json"]
