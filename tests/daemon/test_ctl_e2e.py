"""flexnnctl against the real daemon: --json on every command, Ctrl-C in watch, set-budget -5M, and
what a status command imports. One daemon (test_daemon_e2e's module fixture) serves them all."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading

import numpy as np

from flexnn_client import EXIT_INTERRUPTED, EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE
from tests.daemon.harness import ROOT
from tests.daemon.test_daemon_e2e import cache, daemon, models_dir, x_for  # noqa: F401 - shared fixtures


def ctl_json(daemon, *args: str):  # noqa: F811
    out = daemon.ctl(*args, "--json")
    assert out.returncode == EXIT_OK, out.stderr
    return json.loads(out.stdout)


def test_status_json_gives_counts_as_numbers(daemon):  # noqa: F811
    with daemon.client() as c:
        c.infer("a", {"x": x_for()})
    status = ctl_json(daemon, "status")
    for key in (
        "effective_budget_bytes",
        "rss_bytes",
        "runtime_overhead_bytes",
        "swaps",
        "cgroup_limit_bytes",
    ):
        assert type(status[key]) is int, (key, status[key])
    (a,) = (m for m in status["models"] if m["name"] == "a")
    assert type(a["inferences"]) is int and a["inferences"] >= 1
    assert type(a["arena_bytes"]) is int and a["arena_bytes"] > 0 and a["state"] == "ready"
    assert status["effective_budget_bytes"] > 0 and type(status["uptime_s"]) is float


def test_plans_json_lists_each_plan_once_with_its_budgets(daemon):  # noqa: F811
    with daemon.client() as c:
        rungs = c.plans("a")
    listed = ctl_json(daemon, "plans", "a")
    plans = listed["plans"]
    assert listed["model"] == "a" and sum(p["rungs"] for p in plans) == len(rungs) > len(plans)
    assert [p["budget_from_bytes"] for p in plans] == sorted(p["budget_from_bytes"] for p in plans)
    tops = [p["budget_to_bytes"] for p in plans]
    froms = {p["budget_from_bytes"] for p in plans}
    assert tops[-1] is None and all(
        to in froms and to > p["budget_from_bytes"] for to, p in zip(tops[:-1], plans[:-1], strict=True)
    )
    assert sum(p["active"] for p in plans) == 1
    assert all(type(p["arena_bytes"]) is int and type(p["sliced_layers"]) is list for p in plans)
    table = daemon.ctl("plans", "a").stdout.splitlines()
    assert len(table) - 1 == len(plans) and "<- active" in "".join(table)


def test_set_budget_models_load_unload_and_infer_speak_json(daemon, tmp_path):  # noqa: F811
    with daemon.client() as c:
        smallest = min(p.budget_bytes for p in c.plans("a"))
    try:
        reply = ctl_json(daemon, "set-budget", str(smallest * 2))
        assert reply["effective_budget_bytes"] == smallest * 2 and reply["budget_source"] == "operator"
    finally:
        reply = ctl_json(daemon, "set-budget", "--clear")  # the same as auto
    assert reply["operator_budget"] == "auto" and reply["budget_source"] != "operator"
    assert type(reply["effective_budget_bytes"]) is int

    loaded = ctl_json(daemon, "load", "b", "b.onnx")
    try:
        assert loaded["name"] == "b" and loaded["ready"] is True and type(loaded["arena_bytes"]) is int
        assert {m["name"] for m in ctl_json(daemon, "models")["models"]} == {"a", "b"}
    finally:
        assert ctl_json(daemon, "unload", "b") == {"unloaded": "b"}
    assert [m["name"] for m in ctl_json(daemon, "models")["models"]] == ["a"]

    np.save(tmp_path / "x.npy", x_for(seed=3))
    result = ctl_json(daemon, "infer", "a", str(tmp_path / "x.npy"), "--top", "2")
    with daemon.client() as c:
        want = c.infer("a", {"x": x_for(seed=3)})["y"].reshape(-1)
    (y,) = result["outputs"]
    assert result["model"] == "a" and y["name"] == "y" and y["shape"] == [1, 256] and y["dtype"] == "float32"
    assert [t["index"] for t in y["top"]] == list(np.argsort(want)[::-1][:2])
    assert y["top"][0]["value"] == float(want.max())


def test_a_negative_budget_is_refused_naming_it(daemon):  # noqa: F811
    before = ctl_json(daemon, "status")["operator_budget"]
    for args in (("set-budget", "-5M"), ("set-budget", "-5M", "--json"), ("set-budget", "--", "-5M")):
        out = daemon.ctl(*args)
        assert out.returncode == EXIT_USAGE, out
        assert "negative" in out.stderr and "'-5M'" in out.stderr and "Traceback" not in out.stderr
    assert ctl_json(daemon, "status")["operator_budget"] == before


def test_watch_json_prints_one_event_per_line_and_ctrl_c_ends_it_cleanly(daemon):  # noqa: F811
    env = dict(daemon.env, FLEXNN_ADDRESS=str(daemon.socket))
    with subprocess.Popen(
        [sys.executable, "-m", "flexnn_client.ctl", "watch", "--json"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as watch:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in watch.stdout], daemon=True)
        reader.start()
        try:
            first = first_event(daemon, lines)
            watch.send_signal(signal.SIGINT)  # blocked in the stream, waiting for the next event
            code = watch.wait(30)
        finally:
            if watch.poll() is None:
                watch.kill()
        reader.join(10)
        stderr = watch.stderr.read()
    assert code == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    event = json.loads(first)
    assert event["kind"].startswith("KIND_") and type(event["time"]) is float
    assert type(event["from_bytes"]) is int and type(event["to_bytes"]) is int
    while not lines.empty():
        json.loads(lines.get())  # every line printed is a whole JSON object


def first_event(daemon, lines: queue.Queue[str]) -> str:  # noqa: F811
    """Swap the model down and back until the watch, subscribing meanwhile, prints an event."""
    with daemon.client() as c:
        smallest = min(p.budget_bytes for p in c.plans("a"))
        try:
            for budget in [smallest, "auto"] * 10:
                c.set_budget(budget)
                try:
                    return lines.get(timeout=1.0)
                except queue.Empty:
                    continue
            raise AssertionError("flexnnctl watch printed no event in 20 swaps")
        finally:
            c.set_budget("auto")


def test_status_finds_the_daemon_by_its_environment_without_the_engine(daemon):  # noqa: F811
    """The default socket rule in a fresh interpreter: RUNTIME_DIRECTORY alone, no FLEXNN_ADDRESS."""
    env = {k: v for k, v in daemon.env.items() if k != "FLEXNN_ADDRESS"}
    probe = (
        "import json, sys\n"
        "from flexnn_client.ctl import main\n"
        "code = main(['status', '--json'])\n"
        "held = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('numba', 'llvmlite', 'onnx', 'numpy', 'flexnnd'))\n"
        "print(json.dumps({'exit': code, 'held': held}), file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert env["RUNTIME_DIRECTORY"] == str(daemon.runtime) and os.path.exists(daemon.socket)
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report == {"exit": EXIT_OK, "held": []}
    assert json.loads(out.stdout)["models"][0]["name"] == "a"


def test_a_socket_this_user_may_not_use_is_said_as_such_not_as_not_running(daemon):  # noqa: F811
    drop = "-dac_override,-dac_read_search"  # root without them is refused by file modes like anyone else
    mode = daemon.socket.stat().st_mode & 0o777
    daemon.socket.chmod(0)
    try:
        out = subprocess.run(
            ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", sys.executable, "-m", "flexnn_client.ctl",
             "--address", str(daemon.socket), "status"],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=daemon.env,
        )  # fmt: skip
    finally:
        daemon.socket.chmod(mode)
    assert out.returncode not in (EXIT_OK, EXIT_NOT_RUNNING), out
    assert "permission denied" in out.stderr and "usermod -aG flexnn" in out.stderr, out.stderr
