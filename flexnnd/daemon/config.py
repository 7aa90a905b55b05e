"""flexnnd's settings: one frozen dataclass; the TOML file, the flags and the default file come from it.

Precedence: field defaults < the TOML file given with `--config` < command-line flags. Directories
are resolved at start from an environment mapping (systemd's *_DIRECTORY, else XDG), never at import.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import ipaddress
import json
import os
import re
import sys
import textwrap
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from flexnn_api.paths import SOCKET_NAME, runtime_dir
from flexnn_api.paths import first_absolute as _first
from flexnn_api.sizes import parse_size

from flexnnd.errors import ConfigError
from flexnnd.zoo import DEFAULT_MODEL

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def doc(help: str, *, size: bool = False, unset: str = "", metavar: str = "") -> dict[str, Any]:
    """A Config field's metadata: `help` says its effect and its cost; `unset` says what None means."""
    return {"help": help, "size": size, "unset": unset, "metavar": metavar}


@dataclass(frozen=True)
class Config:
    """Every setting of flexnnd, checked once when built; see render_default_toml() for the file."""

    models_dir: Path | None = field(
        default=None,
        metadata=doc(
            "Folder of models (.onnx files or package folders) that `models` and LoadModel name.",
            unset="<state_dir>/models",
        ),
    )
    models: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Models loaded at start: names in models_dir, file paths or zoo names; empty = the built-in "
            "mobilenet_v2. Each adds its import and ladder to startup and shares the budget."
        ),
    )
    input_shapes: tuple[tuple[str, str, tuple[int, ...]], ...] = field(
        default=(),
        metadata=doc(
            "Static shapes for model inputs whose ONNX dimensions are symbolic or -1, by served model name "
            "then input name: [input_shapes.yolo] images = [1, 3, 640, 640] (flag: --input-shapes "
            "yolo:images=1,3,640,640). Applies to .onnx models at import (configured or LoadModel); each "
            "shape is a separate cached import. Unset dimensions other than a leading batch of 1 are refused.",
            metavar="MODEL:INPUT=D,D,...",
        ),
    )
    socket: Path | None = field(
        default=None,
        metadata=doc(
            "Unix socket the gRPC server listens on (mode 0660: the daemon's group may call it).",
            unset="<runtime_dir>/flexnnd.sock",
        ),
    )
    tcp_address: str = field(
        default="",
        metadata=doc(
            "host:port to serve on over TCP as well; empty = Unix socket only. Needs tls_cert, tls_key "
            "and token_file, unless allow_insecure_loopback and a loopback address."
        ),
    )
    tls_cert: Path | None = field(default=None, metadata=doc("PEM certificate chain for TCP."))
    tls_key: Path | None = field(
        default=None, metadata=doc("PEM private key of tls_cert; keep it readable by the daemon only.")
    )
    token_file: Path | None = field(
        default=None,
        metadata=doc("File holding the bearer token TCP clients must send (authorization: Bearer <token>)."),
    )
    allow_insecure_loopback: bool = field(
        default=False,
        metadata=doc(
            "Allow TCP without TLS and token on 127.0.0.1 or ::1; any local user can then call the daemon."
        ),
    )
    metrics_address: str = field(
        default="",
        metadata=doc(
            "Prometheus text endpoint (GET /metrics) as host:port, or a port alone for 127.0.0.1; empty = "
            "off. Plain HTTP without authentication; the shipped unit admits only localhost (IPAddressAllow).",
            metavar="[HOST:]PORT",
        ),
    )
    budget: str = field(
        default="auto",
        metadata=doc(
            "Configured model budget: a size (128M) or auto. Precedence: the operator's budget (set with "
            "flexnnctl, kept in state_dir) > this > automatic; each is capped by the cgroup limit, pressure "
            "and available memory. A lower budget means slower plans.",
            metavar="SIZE|auto",
        ),
    )
    headroom: int = field(
        default=8 << 20,
        metadata=doc(
            "Kept free below a cgroup limit besides the measured runtime overhead; more is safer from "
            "reclaim and the OOM killer but leaves a smaller budget.",
            size=True,
        ),
    )
    threads: int = field(
        default=0,
        metadata=doc(
            "Compute threads per inference; 0 = one per core. Fewer leave cores to others, at some latency."
        ),
    )
    queue_depth: int = field(
        default=8,
        metadata=doc(
            "Requests per model that may wait while one runs (each model runs one inference at a time on its arena); more get RESOURCE_EXHAUSTED. A waiting request "
            "holds its input tensors in memory."
        ),
    )
    max_message_bytes: int = field(
        default=16 << 20,
        metadata=doc(
            "Largest gRPC message received or sent: a 1080p RGB frame as UINT8 is 6.2 MB; every RPC in "
            "flight may hold a few copies of one, outside the budget.",
            size=True,
        ),
    )
    grace_period_s: float = field(
        default=10.0,
        metadata=doc(
            "On SIGTERM, how long in-flight and queued requests may finish before they are cancelled; "
            "longer delays stopping. Keep it below systemd's TimeoutStopSec."
        ),
    )
    quiet_period_s: float = field(
        default=30.0,
        metadata=doc(
            "The budget goes up only after this long without pressure; shorter recovers speed sooner "
            "but may swap plans back and forth."
        ),
    )
    min_dwell_s: float = field(
        default=5.0,
        metadata=doc(
            "Least time between two swaps caused by the machine (an operator's lower budget applies at "
            "once); each swap rebuilds an arena."
        ),
    )
    pressure_trigger: str = field(
        default="some 150000 2000000",
        metadata=doc(
            "PSI trigger 'some|full STALL_US WINDOW_US' whose hit lowers the budget; lower STALL reacts "
            "sooner and more often. Without CAP_SYS_RESOURCE the window must be a multiple of 2 s."
        ),
    )
    watch_pressure: bool = field(
        default=True,
        metadata=doc(
            "React to memory pressure and cgroup memory events; off = only limits and the operator move "
            "the budget, and one poll thread less."
        ),
    )
    fs_root: Path = field(
        default=Path("/"),
        metadata=doc(
            "Root under which the cgroup mount points named in mountinfo are found; tests point it at a fake tree."
        ),
    )
    proc_root: Path = field(
        default=Path("/proc"),
        metadata=doc(
            "Where procfs is mounted (self/cgroup, pressure/memory, meminfo); tests point it at a fake tree."
        ),
    )
    state_dir: Path | None = field(
        default=None,
        metadata=doc(
            "Persisted operator budget and the default models_dir.",
            unset="$STATE_DIRECTORY, else $XDG_STATE_HOME/flexnn or ~/.local/state/flexnn",
        ),
    )
    cache_dir: Path | None = field(
        default=None,
        metadata=doc(
            "Imported model packages, plan ladders and the numba cache; deleting it costs a re-import "
            "and a recompile at the next start.",
            unset="$CACHE_DIRECTORY, else $XDG_CACHE_HOME/flexnn or ~/.cache/flexnn",
        ),
    )
    runtime_dir: Path | None = field(
        default=None,
        metadata=doc(
            "The socket's folder (created 0750) and the instance lock file.",
            unset="$RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/flexnn",
        ),
    )
    log_level: str = field(
        default="info",
        metadata=doc("debug, info, warning or error; debug logs every request.", metavar="LEVEL"),
    )
    log_format: str = field(
        default="text",
        metadata=doc(
            "text, or json: one object per line (time, level, logger, message, model...) for log "
            "collectors; applies at start.",
            metavar="FORMAT",
        ),
    )

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError(_message(problems))

    @property
    def budget_bytes(self) -> int | None:
        """The configured budget in bytes, None for auto."""
        return None if self.budget == "auto" else parse_size(self.budget)

    @property
    def startup_models(self) -> tuple[str, ...]:
        """`models`, or the built-in default model when none is configured."""
        return self.models or (DEFAULT_MODEL,)

    def shapes_for(self, model: str) -> dict[str, tuple[int, ...]] | None:
        """input_shapes of one served model as import_model takes them; None when none is set."""
        shapes = {name: dims for owner, name, dims in self.input_shapes if owner == model}
        return shapes or None

    @property
    def psi_trigger(self) -> tuple[str, int, int]:
        """pressure_trigger as (kind, stall_us, window_us)."""
        kind, stall, window = self.pressure_trigger.split()
        return kind, int(stall), int(window)

    @property
    def tcp_host_port(self) -> tuple[str, int] | None:
        return parse_address(self.tcp_address) if self.tcp_address else None

    @property
    def tcp_tls(self) -> bool:
        """TCP serves with TLS and a token; else (loopback, allowed insecure) without: checked when built."""
        return self.tls_cert is not None

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        """metrics_address as (host, port), a port alone on 127.0.0.1; None when off."""
        if not self.metrics_address:
            return None
        if self.metrics_address.strip().isdigit():
            return parse_address(f"127.0.0.1:{self.metrics_address.strip()}")
        return parse_address(self.metrics_address)


# --- field kinds: one converter per kind for TOML values, flag strings and the rendered default ---

_HINTS: dict[str, Any] = typing.get_type_hints(Config)


def _kind(f: dataclasses.Field) -> str:
    hint = _HINTS[f.name]
    if f.metadata["size"]:
        return "size"
    kinds = [
        (str, "str"),
        (int, "int"),
        (float, "float"),
        (bool, "bool"),
        (Path, "path"),
        (Path | None, "path?"),
        (tuple[str, ...], "list"),
        (tuple[tuple[str, str, tuple[int, ...]], ...], "shapes"),
    ]
    for known, kind in kinds:
        if hint == known:
            return kind
    raise TypeError(f"Config.{f.name}: no converter for {hint}")


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
KINDS: dict[str, str] = {name: _kind(f) for name, f in FIELDS.items()}


def _check_type(kind: str, value: Any) -> bool:
    if kind in ("path", "path?"):
        return isinstance(value, Path) or (kind == "path?" and value is None)
    if kind == "list":
        return isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    if kind == "shapes":
        return isinstance(value, tuple) and all(_is_shape_entry(v) for v in value)
    want = {"str": str, "int": int, "size": int, "float": (int, float), "bool": bool}[kind]
    return isinstance(value, want) and (kind == "bool" or not isinstance(value, bool))


def _is_shape_entry(entry: Any) -> bool:
    return (
        isinstance(entry, tuple)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and isinstance(entry[1], str)
        and isinstance(entry[2], tuple)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in entry[2])
    )


def _shapes_from_toml(value: Any) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """`{model: {input: [dims]}}` as (model, input, dims) entries; every wrong type named at once."""
    if not isinstance(value, dict):
        raise TypeError(
            f"expected a table of models, each a table of input = [dims], got {value!r:.80}; write "
            "[input_shapes.MODEL] then INPUT = [1, 3, 224, 224]"
        )
    entries, wrong = [], []
    for model, inputs in value.items():
        if not isinstance(inputs, dict):
            wrong.append(
                f"{model}: expected a table of input = [dims] for model {model!r}, got {inputs!r:.80}"
            )
            continue
        for name, dims in inputs.items():
            if not isinstance(dims, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) for d in dims
            ):
                wrong.append(f"{model}.{name}: expected a list of integers, got {dims!r:.80}")
                continue
            entries.append((model, name, tuple(dims)))
    if wrong:
        raise TypeError("; ".join(wrong))
    return tuple(entries)


def _shape_flag(text: str) -> tuple[str, str, tuple[int, ...]]:
    """One --input-shapes entry, MODEL:INPUT=D,D,...; the ranges are checked with the other settings."""
    model, colon, rest = text.partition(":")
    name, equals, dims = rest.partition("=")
    try:
        if not (colon and equals):
            raise ValueError
        return model, name, tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MODEL:INPUT=D,D,..., got {text!r}") from None


def _shape_problems(entries: tuple[tuple[str, str, tuple[int, ...]], ...]) -> list[str]:
    """Every input_shapes entry that cannot be a shape: empty names, no or non-positive dimensions,
    an input given twice."""
    problems, seen = [], set()
    for model, name, dims in entries:
        where = f"{model}.{name}"
        if not model.strip() or not name.strip():
            problems.append(f"{where!r} needs a model and an input name")
        if not dims:
            problems.append(f"{where} has no dimensions")
        elif any(d <= 0 for d in dims):
            problems.append(f"{where} = {list(dims)}: every dimension must be above 0")
        if (model, name) in seen:
            problems.append(f"{where} is given twice")
        seen.add((model, name))
    return problems


def _from_toml(kind: str, value: Any, base: Path) -> Any:
    """A TOML value as the field's type; relative paths are relative to the file's folder."""
    if kind == "shapes":
        return _shapes_from_toml(value)
    if kind == "size":
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            return parse_size(value)
        raise TypeError(f'expected a size (bytes or a string like "64M"), got {value!r}')
    if kind == "list":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise TypeError(f"expected a list of strings, got {value!r}")
    if kind in ("path", "path?"):
        if not isinstance(value, str):
            raise TypeError(f"expected a path string, got {value!r}")
        if value == "" and kind == "path?":
            return None
        return base / Path(value).expanduser()
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not _check_type(kind, value):
        raise TypeError(f"expected {'a ' + kind if kind != 'int' else 'an integer'}, got {value!r}")
    return value


def _flag_type(kind: str) -> Callable[[str], Any]:
    if kind == "shapes":
        return _shape_flag
    if kind == "size":
        return parse_size
    if kind == "path":
        return lambda text: Path(text).expanduser()
    if kind == "path?":
        return lambda text: Path(text).expanduser() if text else None
    return {"str": str, "int": int, "float": float}[kind]


def _toml_value(kind: str, value: Any) -> str:
    if kind == "bool":
        return "true" if value else "false"
    if kind in ("int", "float"):
        return repr(value)
    if kind == "size":
        return json.dumps(size_text(value))
    if kind == "list":
        return json.dumps(list(value), ensure_ascii=False)
    if kind == "shapes":
        models: dict[str, list[str]] = {}
        for model, name, dims in value:
            models.setdefault(model, []).append(f"{json.dumps(name)} = {json.dumps(list(dims))}")
        tables = [f"{json.dumps(m)} = {{ {', '.join(inputs)} }}" for m, inputs in models.items()]
        return "{ " + ", ".join(tables) + " }" if tables else "{}"
    return json.dumps("" if value is None else str(value), ensure_ascii=False)


def size_text(n: int) -> str:
    """Exactly n bytes in the shortest unit parse_size reads back: 8388608 -> "8M"."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


# --- checks: every problem at once, each naming its setting ---


def parse_address(text: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; ValueError saying what is wrong."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not host:port (write [::1]:8001 for IPv6)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"port {port} in {text!r} is above 65535")
    return host, port


def is_loopback(host: str) -> bool:
    """A loopback IP address (127.0.0.0/8, ::1); a name such as localhost is not one: it may resolve elsewhere."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _problems(c: Config) -> list[tuple[str, str]]:
    wrong = [
        (name, f"has type {type(getattr(c, name)).__name__}")
        for name, kind in KINDS.items()
        if not _check_type(kind, getattr(c, name))
    ]
    if wrong:
        return wrong  # range checks below assume the types
    problems: list[tuple[str, str]] = []

    def need(ok: bool, name: str, why: str) -> None:
        if not ok:
            problems.append((name, why))

    if c.budget != "auto":
        try:
            need(parse_size(c.budget) > 0, "budget", "must be above 0 bytes, or auto")
        except ValueError as e:
            problems.append(("budget", f"{e}; or write auto"))
    need(all(m.strip() for m in c.models), "models", "has an empty name")
    shape_problems = _shape_problems(c.input_shapes)
    need(not shape_problems, "input_shapes", "; ".join(shape_problems))
    need(c.threads >= 0, "threads", f"is {c.threads}; use 0 for one per core")
    need(c.queue_depth >= 0, "queue_depth", f"is {c.queue_depth}; cannot be negative")
    # gRPC keeps message limits in a signed 32-bit int.
    need(
        4096 <= c.max_message_bytes < 1 << 31,
        "max_message_bytes",
        f"is {c.max_message_bytes:,} bytes; must be at least 4K and below 2G",
    )
    for name in ("grace_period_s", "quiet_period_s", "min_dwell_s"):
        need(getattr(c, name) >= 0, name, f"is {getattr(c, name)}; cannot be negative")
    need(c.log_level in LOG_LEVELS, "log_level", f"is {c.log_level!r}; one of {', '.join(LOG_LEVELS)}")
    need(c.log_format in LOG_FORMATS, "log_format", f"is {c.log_format!r}; one of {', '.join(LOG_FORMATS)}")
    try:
        c.metrics_host_port  # noqa: B018 - parsed for its error
    except ValueError as e:
        problems.append(("metrics_address", str(e)))
    parts = c.pressure_trigger.split()
    if len(parts) != 3 or parts[0] not in ("some", "full") or not all(p.isdigit() for p in parts[1:]):
        problems.append(("pressure_trigger", f"{c.pressure_trigger!r} is not 'some|full STALL_US WINDOW_US'"))
    else:
        stall, window = int(parts[1]), int(parts[2])
        # The kernel accepts windows of 0.5 s to 10 s and a stall no longer than its window.
        need(
            500_000 <= window <= 10_000_000,
            "pressure_trigger",
            f"window {window} us is not within 0.5 s .. 10 s",
        )
        need(
            0 < stall <= window, "pressure_trigger", f"stall {stall} us must be above 0 and within the window"
        )
    need(
        (c.tls_cert is None) == (c.tls_key is None),
        "tls_key" if c.tls_key is None else "tls_cert",
        "tls_cert and tls_key go together",
    )
    if c.tcp_address:
        try:
            host, _ = parse_address(c.tcp_address)
        except ValueError as e:
            problems.append(("tcp_address", str(e)))
        else:
            secured = c.tls_cert is not None and c.token_file is not None
            insecure_ok = c.tls_cert is None and c.allow_insecure_loopback and is_loopback(host)
            need(
                secured or insecure_ok,
                "tcp_address",
                f"{c.tcp_address} needs tls_cert, tls_key and token_file"
                + (
                    ""
                    if is_loopback(host)
                    else "; only 127.0.0.1 or ::1 may go without (allow_insecure_loopback)"
                ),
            )
    return problems


def _message(problems: Iterable[tuple[str, str]], origins: Mapping[str, str] | None = None) -> str:
    lines = []
    for name, why in problems:
        where = f" ({origins[name]})" if origins and name in origins else ""
        lines.append(f"{name}{where} {why}")
    return "invalid configuration: " + "; ".join(lines)


# --- the TOML file ---


def read_toml(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Settings in a TOML file as field values, and where each came from ("FILE line N")."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the configuration file {path}: {e.strerror or e}") from e
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    base = path.parent.absolute()
    for key, value in table.items():
        where = _where(path, text, key)
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown setting {key!r}{hint}")
        try:
            values[key] = _from_toml(KINDS[key], value, base)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {key} {e}") from e
        origins[key] = where
    return values, origins


def _where(path: Path, text: str, key: str) -> str:
    # `key = ...`, or a table header `[key]` / `[key.sub]`
    pattern = re.compile(rf"""^\s*(?:(["']?){re.escape(key)}\1\s*=|\[\s*{re.escape(key)}\s*[.\]])""")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return f"{path} line {number}"
    return str(path)


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    origins: Mapping[str, str] | None = None,
) -> Config:
    """Defaults < the file at `path` < `overrides` (already typed, e.g. from flags). Call again to reload."""
    values, where = read_toml(path) if path is not None else ({}, {})
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    values.update(overrides)
    where.update(origins or {name: "flag --" + name.replace("_", "-") for name in overrides})
    problems = _problems(_unchecked(values))
    if problems:
        raise ConfigError(_message(problems, where))
    return Config(**values)


def _unchecked(values: Mapping[str, Any]) -> Config:
    """A Config built without __post_init__, only to list its problems with their origins."""
    config = object.__new__(Config)
    for name, f in FIELDS.items():
        object.__setattr__(config, name, values.get(name, f.default))
    return config


def render_default_toml() -> str:
    """The commented default configuration file, systemd/flexnnd.toml."""
    out = [
        "# flexnnd configuration (TOML). Each setting shows its default, commented out: uncomment a",
        "# line to change it. Command-line flags override this file (flexnnd --help lists them);",
        '# SIGHUP (systemctl reload flexnnd) reads it again. Sizes are bytes or strings like "128M"',
        "# (K, M, G are binary). An empty path means its default.",
        "# Written by flexnnd.daemon.config.render_default_toml() from the Config fields it documents.",
    ]
    for name, f in FIELDS.items():
        out.append("")
        help_text = f.metadata["help"]
        if f.metadata["unset"]:
            help_text += f" Default: {f.metadata['unset']}."
        out += textwrap.wrap(help_text, width=98, initial_indent="# ", subsequent_indent="# ")
        out.append(f"#{name} = {_toml_value(KINDS[name], f.default)}")
    return "\n".join(out) + "\n"


# --- command-line flags ---


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` and one flag per Config field; a flag not given stays out of the namespace."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file of settings, overridden by flags (a commented default: systemd/flexnnd.toml)",
    )
    for name, f in FIELDS.items():
        kind = KINDS[name]
        flag = "--" + name.replace("_", "-")
        default = f.metadata["unset"] or _toml_value(kind, f.default)
        help_text = f"{f.metadata['help']} [default: {default}]".replace("%", "%%")
        if kind == "bool":
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif kind in ("list", "shapes"):
            parser.add_argument(
                flag,
                dest=name,
                nargs="*",
                metavar=f.metadata["metavar"] or "NAME",
                default=argparse.SUPPRESS,
                type=_flag_type(kind) if kind == "shapes" else str,
                help=help_text,
            )
        else:
            metavar = f.metadata["metavar"] or {
                "size": "SIZE",
                "path": "PATH",
                "path?": "PATH",
                "int": "N",
                "float": "SECONDS",
            }.get(kind, "TEXT")
            parser.add_argument(
                flag,
                dest=name,
                type=_flag_type(kind),
                metavar=metavar,
                default=argparse.SUPPRESS,
                help=help_text,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexnnd",
        description="Serve neural networks within a memory budget over gRPC (Open Inference Protocol v2).",
    )
    add_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The Config for parsed flags: reads args.config each time, so calling it again reloads the file."""
    overrides = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    for name, kind in KINDS.items():
        if kind in ("list", "shapes") and name in overrides:
            overrides[name] = tuple(overrides[name])
    return load_config(getattr(args, "config", None), overrides)


# --- directories, resolved at start from an environment mapping ---


@dataclass(frozen=True)
class Dirs:
    runtime: Path
    state: Path
    cache: Path
    models: Path
    socket: Path
    lock: Path  # next to the socket: one daemon per socket path

    @property
    def numba_cache(self) -> Path:
        """NUMBA_CACHE_DIR, as systemd/flexnnd.service sets it: compiled kernels survive restarts."""
        return self.cache / "numba"


def resolve_dirs(config: Config, env: Mapping[str, str], uid: int | None = None) -> Dirs:
    """Where flexnnd keeps its files: explicit settings, else systemd's directories, else XDG's."""
    home = Path(env.get("HOME") or Path.home())

    def xdg(var: str, fallback: Path) -> Path:
        return (_first(env.get(var)) or fallback) / "flexnn"

    runtime = config.runtime_dir or runtime_dir(env, uid)  # the rule flexnnctl follows too
    state = (
        config.state_dir or _first(env.get("STATE_DIRECTORY")) or xdg("XDG_STATE_HOME", home / ".local/state")
    )
    cache = config.cache_dir or _first(env.get("CACHE_DIRECTORY")) or xdg("XDG_CACHE_HOME", home / ".cache")
    socket = (config.socket or runtime / SOCKET_NAME).absolute()
    return Dirs(
        runtime=runtime.absolute(),
        state=state.absolute(),
        cache=cache.absolute(),
        models=(config.models_dir or state / "models").absolute(),
        socket=socket,
        lock=socket.with_name(socket.name + ".lock"),
    )


def create_dirs(dirs: Dirs) -> None:
    """Create the folders that are missing (0750); refuse a runtime folder that another user owns."""
    for path in (dirs.runtime, dirs.socket.parent, dirs.state, dirs.cache, dirs.models):
        if not path.exists():
            try:
                path.mkdir(mode=0o750, parents=True, exist_ok=True)
                path.chmod(0o750)  # mkdir's mode is filtered by the umask
            except OSError as e:
                raise ConfigError(
                    f"cannot create {path}: {e.strerror} (uid {os.getuid()}); set runtime_dir, state_dir and "
                    "cache_dir to folders this user may write, or run under the systemd unit"
                ) from None
    # A runtime folder that another ordinary user owns could be a trap set in a shared temp dir.
    owner, uid = dirs.runtime.stat().st_uid, os.getuid()
    if owner not in (uid, 0):
        raise ConfigError(
            f"runtime_dir {dirs.runtime} belongs to uid {owner}, not to this user ({uid}) or root"
        )
