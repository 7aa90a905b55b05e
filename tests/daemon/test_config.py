"""Config: one dataclass is the source of the TOML file, the flags and the committed default file."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from flexnnd.daemon import config as cfg
from flexnnd.daemon.config import Config, build_parser, config_from_args, load_config, resolve_dirs
from flexnnd.errors import ConfigError, FlexnnError

REPO = Path(__file__).resolve().parents[2]


def parse(argv: list[str]) -> Config:
    return config_from_args(build_parser().parse_args(argv))


def test_defaults_are_valid_and_every_field_is_documented():
    config = Config()
    assert config.budget_bytes is None and config.startup_models == ("mobilenet_v2",)
    for f in dataclasses.fields(Config):
        assert f.default is not dataclasses.MISSING, f.name
        assert f.metadata["help"].strip(), f.name
        assert "\n" not in f.metadata["help"], f.name


def test_committed_default_file_is_the_generated_one():
    committed = (REPO / "systemd" / "flexnnd.toml").read_text(encoding="utf-8")
    assert committed == cfg.render_default_toml(), (
        "systemd/flexnnd.toml is stale: write flexnnd.daemon.config.render_default_toml() into it"
    )


def test_default_file_uncommented_gives_the_defaults(tmp_path):
    text = cfg.render_default_toml()
    settings = re.findall(r"^#(\w+ = .*)$", text, flags=re.M)
    assert {line.split(" = ")[0] for line in settings} == set(cfg.FIELDS)
    path = tmp_path / "all.toml"
    path.write_text("\n".join(settings) + "\n")
    assert load_config(path) == Config()


def test_every_field_has_a_flag():
    options = {o for action in build_parser()._actions for o in action.option_strings}
    for name in cfg.FIELDS:
        assert "--" + name.replace("_", "-") in options


def test_precedence_defaults_file_flags(tmp_path):
    path = tmp_path / "flexnnd.toml"
    path.write_text('threads = 3\nbudget = "96M"\nheadroom = 1048576\nmodels = ["resnet18", "vgg16"]\n')
    config = parse(["--config", str(path), "--threads", "2", "--no-watch-pressure"])
    assert config.threads == 2  # flag over file
    assert config.budget == "96M" and config.budget_bytes == 96 << 20  # file over default
    assert config.headroom == 1 << 20
    assert config.models == ("resnet18", "vgg16")
    assert config.watch_pressure is False
    assert config.queue_depth == Config().queue_depth  # default


def test_flag_types(tmp_path):
    config = parse(
        [
            "--headroom", "16M",
            "--max-message-bytes", "1G",
            "--grace-period-s", "2.5",
            "--models", "a.onnx", "resnet18",
            "--socket", str(tmp_path / "s.sock"),
            "--allow-insecure-loopback",
            "--tcp-address", "127.0.0.1:0",
        ]
    )  # fmt: skip
    assert config.headroom == 16 << 20 and config.max_message_bytes == 1 << 30
    assert config.grace_period_s == 2.5
    assert config.models == ("a.onnx", "resnet18")
    assert config.socket == tmp_path / "s.sock"
    assert config.tcp_host_port == ("127.0.0.1", 0)
    assert parse(["--socket", ""]).socket is None  # an empty path means the default
    with pytest.raises(SystemExit):
        parse(["--headroom", "lots"])


def test_reading_again_reloads_the_file(tmp_path):
    path = tmp_path / "flexnnd.toml"
    path.write_text("queue_depth = 4\n")
    args = build_parser().parse_args(["--config", str(path), "--threads", "2"])
    assert config_from_args(args).queue_depth == 4
    path.write_text("queue_depth = 16\n")
    again = config_from_args(args)
    assert again.queue_depth == 16 and again.threads == 2


def test_unknown_key_names_key_file_and_line(tmp_path):
    path = tmp_path / "flexnnd.toml"
    path.write_text('budget = "64M"\n\n# a comment\nthraeds = 2\n')
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(path))} line 4: unknown setting 'thraeds'.*'threads'"
    ):
        load_config(path)


def test_wrong_type_in_file_names_the_line(tmp_path):
    path = tmp_path / "flexnnd.toml"
    path.write_text('queue_depth = 2\nthreads = "two"\n')
    with pytest.raises(ConfigError, match=r"line 2: threads expected an integer"):
        load_config(path)
    path.write_text("watch_pressure = 1\n")
    with pytest.raises(ConfigError, match=r"line 1: watch_pressure expected a bool"):
        load_config(path)
    path.write_text('headroom = "8 parsecs"\n')
    with pytest.raises(ConfigError, match=r"line 1: headroom not a size"):
        load_config(path)


def test_bad_toml_and_missing_file(tmp_path):
    path = tmp_path / "flexnnd.toml"
    path.write_text("threads = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(tmp_path / "missing.toml")


def test_range_errors_name_the_origin(tmp_path):
    path = tmp_path / "flexnnd.toml"
    path.write_text("\nqueue_depth = -1\n")
    with pytest.raises(ConfigError) as info:
        parse(["--config", str(path), "--threads", "-2"])
    message = str(info.value)
    assert f"queue_depth ({path} line 2) is -1" in message
    assert "threads (flag --threads) is -2" in message  # every problem at once


def test_relative_paths_in_the_file_are_relative_to_it(tmp_path):
    path = tmp_path / "etc" / "flexnnd.toml"
    path.parent.mkdir()
    path.write_text('models_dir = "models"\nstate_dir = ""\n')
    config = load_config(path)
    assert config.models_dir == tmp_path / "etc" / "models" and config.state_dir is None


@pytest.mark.parametrize(
    ("changes", "field", "why"),
    [
        ({"threads": -2}, "threads", "one per core"),
        ({"budget": "lots"}, "budget", "not a size"),
        ({"budget": "0"}, "budget", "above 0"),
        ({"log_level": "verbose"}, "log_level", "one of"),
        ({"max_message_bytes": 3 << 30}, "max_message_bytes", "below 2G"),
        ({"grace_period_s": -1.0}, "grace_period_s", "negative"),
        ({"pressure_trigger": "some 150000"}, "pressure_trigger", "not 'some|full"),
        ({"pressure_trigger": "full 150000 20000000"}, "pressure_trigger", "0.5 s .. 10 s"),
        ({"pressure_trigger": "some 3000000 2000000"}, "pressure_trigger", "within the window"),
        ({"tls_cert": Path("c.pem")}, "tls_key", "go together"),
        ({"tcp_address": "8001"}, "tcp_address", "not host:port"),
        ({"tcp_address": "0.0.0.0:8001"}, "tcp_address", "needs tls_cert"),
        ({"tcp_address": "0.0.0.0:8001", "allow_insecure_loopback": True}, "tcp_address", "only 127.0.0.1"),
        ({"tcp_address": "127.0.0.1:8001"}, "tcp_address", "needs tls_cert"),
        # TLS is never served without a token, not even on loopback (the daemon used to find out at bind)
        (
            {
                "tcp_address": "127.0.0.1:8001",
                "allow_insecure_loopback": True,
                "tls_cert": Path("c.pem"),
                "tls_key": Path("k.pem"),
            },
            "tcp_address",
            "token_file",
        ),
        ({"tcp_address": "localhost:8001", "allow_insecure_loopback": True}, "tcp_address", "only 127.0.0.1"),
        ({"models": ("",)}, "models", "empty name"),
        ({"threads": "2"}, "threads", "has type str"),
        ({"socket": "/run/x.sock"}, "socket", "has type str"),
    ],
)
def test_invalid_settings_are_refused(changes, field, why):
    with pytest.raises(ConfigError, match=rf"{field}\b.*{re.escape(why)}") as info:
        Config(**changes)
    assert isinstance(info.value, FlexnnError)


@pytest.mark.parametrize(
    "changes",
    [
        {"tcp_address": "[::1]:8001", "allow_insecure_loopback": True},
        {"tcp_address": "127.0.0.1:8001", "allow_insecure_loopback": True},
        {
            "tcp_address": "0.0.0.0:8001",
            "tls_cert": Path("c.pem"),
            "tls_key": Path("k.pem"),
            "token_file": Path("t"),
        },
        {"budget": "128M"},
        {"grace_period_s": 3},  # an int where seconds are a float
    ],
)
def test_valid_settings_are_accepted(changes):
    assert dataclasses.replace(Config(), **changes)


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().threads = 2  # type: ignore[misc]


def test_dirs_from_systemd(tmp_path):
    env = {
        "RUNTIME_DIRECTORY": "/run/flexnn:/run/other",
        "STATE_DIRECTORY": "/var/lib/flexnn",
        "CACHE_DIRECTORY": "/var/cache/flexnn",
        "XDG_RUNTIME_DIR": "/run/user/1000",
        "HOME": str(tmp_path),
    }
    dirs = resolve_dirs(Config(), env, uid=1000)
    assert dirs.runtime == Path("/run/flexnn")  # the first of several
    assert dirs.state == Path("/var/lib/flexnn") and dirs.cache == Path("/var/cache/flexnn")
    assert dirs.models == Path("/var/lib/flexnn/models")
    assert dirs.socket == Path("/run/flexnn/flexnnd.sock")
    assert dirs.lock == Path("/run/flexnn/flexnnd.sock.lock")
    assert dirs.numba_cache == Path("/var/cache/flexnn/numba")


def test_dirs_from_xdg_and_home(tmp_path):
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "XDG_CACHE_HOME": "/c", "HOME": "/home/u"}
    dirs = resolve_dirs(Config(), env, uid=1000)
    assert dirs.runtime == Path("/run/user/1000/flexnn")
    assert dirs.state == Path("/home/u/.local/state/flexnn")
    assert dirs.cache == Path("/c/flexnn")
    # Relative XDG paths are invalid by the spec and ignored.
    assert resolve_dirs(Config(), {"XDG_CACHE_HOME": "rel", "HOME": "/h"}, uid=0).cache == Path(
        "/h/.cache/flexnn"
    )


def test_dirs_without_a_session():
    assert resolve_dirs(Config(), {"HOME": "/root"}, uid=0).runtime == Path("/run/flexnn")
    assert resolve_dirs(Config(), {"HOME": "/h", "TMPDIR": "/t"}, uid=1000).runtime == Path("/t/flexnn-1000")


def test_explicit_dirs_win(tmp_path):
    config = Config(
        runtime_dir=tmp_path / "run", state_dir=tmp_path / "state", cache_dir=tmp_path / "cache",
        models_dir=tmp_path / "m", socket=tmp_path / "x" / "api.sock",
    )  # fmt: skip
    env = {"RUNTIME_DIRECTORY": "/run/flexnn", "STATE_DIRECTORY": "/s", "CACHE_DIRECTORY": "/c"}
    dirs = resolve_dirs(config, env)
    assert (dirs.runtime, dirs.state, dirs.cache, dirs.models) == (
        tmp_path / "run", tmp_path / "state", tmp_path / "cache", tmp_path / "m",
    )  # fmt: skip
    assert dirs.socket == tmp_path / "x" / "api.sock" and dirs.lock == tmp_path / "x" / "api.sock.lock"


def test_create_dirs_makes_the_runtime_dir_0750(tmp_path):
    config = Config(runtime_dir=tmp_path / "run", state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    dirs = resolve_dirs(config, {})
    cfg.create_dirs(dirs)
    for path in (dirs.runtime, dirs.state, dirs.cache, dirs.models):
        assert path.is_dir() and path.stat().st_mode & 0o777 == 0o750, path


def test_a_folder_that_cannot_be_made_is_a_config_error_naming_it(tmp_path):
    (tmp_path / "file").write_text("")  # a state_dir below a file: mkdir fails as it would without permission
    dirs = resolve_dirs(Config(runtime_dir=tmp_path / "run", state_dir=tmp_path / "file" / "state"), {})
    with pytest.raises(ConfigError, match=r"cannot create .*file/state: Not a directory \(uid \d+\)"):
        cfg.create_dirs(dirs)


def test_size_text_round_trips():
    from flexnn_api.sizes import parse_size

    for n in (0, 1, 1000, 4096, 8 << 20, (1 << 30) + 1, 3 << 40):
        assert parse_size(cfg.size_text(n)) == n
    assert cfg.size_text(64 << 20) == "64M"


@pytest.mark.skipif(os.getuid() != 0, reason="handing a folder to another user needs root")
def test_create_dirs_refuses_a_runtime_dir_of_another_user(tmp_path):
    runtime = tmp_path / "flexnn-1000"
    runtime.mkdir()
    os.chown(runtime, 12345, 12345)  # as if planted in a shared temp dir by someone else
    dirs = resolve_dirs(Config(runtime_dir=runtime, state_dir=tmp_path / "s", cache_dir=tmp_path / "c"), {})
    with pytest.raises(ConfigError, match="belongs to uid 12345"):
        cfg.create_dirs(dirs)
