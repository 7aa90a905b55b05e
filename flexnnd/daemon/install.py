"""`flexnnd install` / `flexnnd uninstall`: the daemon in a venv of its own, started by systemd.

Debian 12 and Raspberry Pi OS refuse `pip install` into the system Python (PEP 668), so install
makes a venv (default /opt/flexnn), installs flexnn into it (from this source tree, a wheel or a pip
requirement), and around it: the system user and group flexnn, /etc/flexnn/flexnnd.toml (the
default, never written over an existing one), /etc/systemd/system/flexnnd.service with ExecStart
naming the venv, then `systemctl daemon-reload` (and with --enable, `systemctl enable [--now]`).
The state, cache and runtime directories are systemd's (StateDirectory= and friends in the unit).

Every path install makes is recorded in <prefix>/flexnn-install.json; uninstall removes only
those, and with --purge the unit's state and cache directories. Running either again is safe.
`--root DIR` stages everything under DIR for an image: useradd, daemon-reload and warm are printed,
not run (`systemctl --root=DIR enable` is run: it only makes a symlink). `--dry-run` prints each step.

Standard library only: uninstall may run from inside the venv it removes.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import io
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from flexnnd.errors import ConfigError, InstallError

DEFAULT_PREFIX = Path("/opt/flexnn")
CONFIG_FILE = Path("/etc/flexnn/flexnnd.toml")
UNIT_NAME = "flexnnd.service"
UNIT_FILE = Path("/etc/systemd/system") / UNIT_NAME
USER = GROUP = "flexnn"
MANIFEST = "flexnn-install.json"
MANIFEST_FORMAT = 1
# The packaged unit runs the default prefix's daemon; rendering swaps in another venv's.
TEMPLATE_EXEC = "ExecStart=/opt/flexnn/bin/flexnnd "
# The unit's ProtectHome=yes makes these inaccessible to the service, its executable included.
HIDDEN_BY_PROTECT_HOME = (Path("/home"), Path("/root"), Path("/run/user"))
# ExecStart is not quoted: a path with spaces, % specifiers or $ variables would be read otherwise.
SAFE_PATH = re.compile(r"/[A-Za-z0-9._+/-]*")
# StateDirectory= and CacheDirectory=flexnn; under DynamicUser= systemd keeps them in private/.
SERVICE_DIRS = tuple(
    Path(p)
    for p in ("/var/lib/flexnn", "/var/lib/private/flexnn", "/var/cache/flexnn", "/var/cache/private/flexnn")
)
NOT_BOOTED = "systemd is not running: no /run/systemd/system"
# On PATH for operators: `flexnnctl status` without naming the venv.
COMMAND_LINKS = ("flexnnctl", "flexnnd")
LINK_DIR = Path("/usr/local/bin")
# The unit's NUMBA_CACHE_DIR=%C/flexnn/numba and CacheDirectory=, for `flexnnd warm` run at install.
SERVICE_ENV = {
    "STATE_DIRECTORY": "/var/lib/flexnn",
    "CACHE_DIRECTORY": "/var/cache/flexnn",
    "NUMBA_CACHE_DIR": "/var/cache/flexnn/numba",
}
# Build leftovers and caches not copied with a source tree (the wheel is built from the copy).
TREE_IGNORE = shutil.ignore_patterns(
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".venv",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
)


# --- the unit ---


def unit_template() -> str:
    """The unit shipped in the package (systemd/flexnnd.service in the repository links to it)."""
    return resources.files("flexnnd.daemon").joinpath("data").joinpath(UNIT_NAME).read_text(encoding="utf-8")


def render_unit(executable: Path | str) -> str:
    """The unit with ExecStart running `executable`."""
    text = unit_template()
    if text.count(TEMPLATE_EXEC) != 1:
        raise InstallError(f"the packaged {UNIT_NAME} has no single line starting {TEMPLATE_EXEC.strip()!r}")
    return text.replace(TEMPLATE_EXEC, f"ExecStart={executable} ")


def default_executable() -> Path:
    """flexnnd as pip installed it for this interpreter (a venv's bin/, or /usr/local/bin)."""
    return Path(sysconfig.get_path("scripts")) / "flexnnd"


def protect_home_conflict(path: Path) -> Path | None:
    """The folder hidden by ProtectHome=yes that holds `path`, if any."""
    return next((h for h in HIDDEN_BY_PROTECT_HOME if path == h or h in path.parents), None)


def check_prefix(prefix: Path | str) -> Path:
    """An absolute, plain path outside the folders the unit hides; raises ConfigError otherwise."""
    text = str(prefix)
    if not SAFE_PATH.fullmatch(text):
        raise ConfigError(
            f"--prefix {text!r}: must be an absolute path of letters, digits and ._+-/ "
            "(the unit's ExecStart names it unquoted)"
        )
    path = Path(os.path.normpath(text))
    hidden = protect_home_conflict(path)
    if hidden is not None:
        raise ConfigError(
            f"--prefix {path}: the unit sets ProtectHome=yes, which hides {hidden} from the service, so "
            f"its ExecStart could not run; choose a prefix outside /home, /root and /run/user "
            f"(the default is {DEFAULT_PREFIX})"
        )
    return path


# --- where the actions land ---


class Host:
    """The real system or a staging root: prints each action, and does it unless dry_run."""

    def __init__(self, root: Path | None, dry_run: bool):
        self.root, self.dry_run = root, dry_run
        self.systemd_running = root is None and Path("/run/systemd/system").is_dir()  # sd_booted(3)

    def at(self, path: Path) -> Path:
        """Where `path` of the installed system is now (under the staging root, if any)."""
        return path if self.root is None else self.root / path.relative_to("/")

    def say(self, text: str) -> None:
        print(("would " if self.dry_run else "") + text, flush=True)

    def skip(self, cmd: Sequence[str], why: str) -> None:
        print(f"not run ({why}): {shlex.join(cmd)}", flush=True)

    def run(
        self, cmd: Sequence[str], *, env: dict[str, str] | None = None, hint: str = "", cwd: str | None = None
    ) -> None:
        """Runs `cmd` with its output on this terminal (pip's progress); raises InstallError if it fails."""
        self.say(f"run: {shlex.join(cmd)}")
        if self.dry_run:
            return
        try:
            done = subprocess.run(
                list(cmd), env=None if env is None else {**os.environ, **env}, check=False, cwd=cwd
            )
        except FileNotFoundError as e:
            raise InstallError(f"{shlex.join(cmd)}: {cmd[0]} is not installed ({e.strerror})") from e
        if done.returncode != 0:
            raise InstallError(
                f"{shlex.join(cmd)} failed with exit status {done.returncode} (its output is above)"
                + (f"; {hint}" if hint else "")
            )

    def output(self, cmd: Sequence[str]) -> str:
        """`cmd`'s standard output; raises InstallError with its standard error if it fails."""
        # From /: a cwd holding a flexnn source tree would be imported in place of the venv's flexnnd.
        done = subprocess.run(list(cmd), capture_output=True, text=True, check=False, cwd="/")
        if done.returncode != 0:
            raise InstallError(
                f"{shlex.join(cmd)} failed with exit status {done.returncode}: {done.stderr.strip()}"
            )
        return done.stdout

    def write(self, path: Path, text: str, mode: int) -> None:
        staged = self.at(path)
        old = staged.read_text(encoding="utf-8") if staged.is_file() else None
        if old == text:
            print(f"unchanged: {path}", flush=True)
            return
        self.say(f"{'write' if old is None else 'update'}: {path}")
        if self.dry_run:
            return
        staged.parent.mkdir(parents=True, exist_ok=True)
        tmp = staged.with_name(f".{staged.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(mode)
        tmp.replace(staged)

    def remove(self, path: Path) -> None:
        staged = self.at(path)
        if not (staged.exists() or staged.is_symlink()):
            return
        self.say(f"remove: {path}")
        if self.dry_run:
            return
        if staged.is_dir() and not staged.is_symlink():
            shutil.rmtree(staged)
        else:
            staged.unlink()


class Manifest:
    """What install made at prefix, so uninstall removes that and nothing else."""

    def __init__(self, created: Sequence[str] = (), user_created: bool = False):
        self.created, self.user_created = list(dict.fromkeys(created)), user_created

    @classmethod
    def read(cls, host: Host, prefix: Path) -> Manifest | None:
        path = host.at(prefix / MANIFEST)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InstallError(
                f"{path}: not a flexnn install manifest ({e}); remove what it listed by hand"
            ) from e
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise InstallError(
                f"{path}: manifest format {data.get('format') if isinstance(data, dict) else None!r}, "
                f"this flexnnd reads {MANIFEST_FORMAT}"
            )
        return cls(data["created"], data["user_created"])

    def add(self, path: Path) -> None:
        if str(path) not in self.created:
            self.created.append(str(path))

    def made(self, path: Path) -> bool:
        return str(path) in self.created

    def write(self, host: Host, prefix: Path) -> None:
        if host.dry_run:
            return
        data = {"format": MANIFEST_FORMAT, "created": self.created, "user_created": self.user_created}
        host.at(prefix / MANIFEST).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


# --- install ---


def source_of_this_code() -> Path | None:
    """The source tree or wheel this flexnnd was imported from, if it is either."""
    holder = Path(__file__).resolve().parents[2]  # flexnnd/daemon/install.py inside the tree or the wheel
    if holder.suffix == ".whl" and holder.is_file():
        return holder
    if (holder / "pyproject.toml").is_file() and (holder / "flexnnd").is_dir():
        return holder
    return None


def resolve_source(spec: str | None) -> tuple[str, str]:
    """("tree", dir), ("wheel", file) or ("requirement", pip spec) for --from."""
    if spec is None:
        here = source_of_this_code()
        if here is None:
            raise ConfigError(
                f"this flexnnd runs from {Path(__file__).resolve().parents[2]}, neither a source tree nor a "
                "wheel: say what to install with --from (a source tree, a .whl file or a pip requirement)"
            )
        spec = str(here)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "pyproject.toml").is_file():
            raise ConfigError(f"--from {spec}: a folder without pyproject.toml is no flexnn source tree")
        return "tree", str(path.resolve())
    if path.is_file():
        if path.suffix != ".whl":
            raise ConfigError(f"--from {spec}: a file that is not a wheel (.whl)")
        return "wheel", str(path.resolve())
    if "/" in spec or spec.endswith(".whl"):
        raise ConfigError(f"--from {spec}: no such file or folder")
    return "requirement", spec


def make_venv(host: Host, prefix: Path, manifest: Manifest, system_site_packages: bool) -> None:
    staged = host.at(prefix)
    if (staged / "bin" / "python").exists():
        print(f"venv exists: {prefix}", flush=True)
        return
    if not staged.exists():
        manifest.add(prefix)
    cmd = [
        sys.executable,
        "-m",
        "venv",
        *(["--system-site-packages"] if system_site_packages else []),
        str(staged),
    ]
    host.run(cmd, hint="on Debian and Raspberry Pi OS: apt-get install python3-venv")
    manifest.write(host, prefix)  # from here on, uninstall can remove the venv even if a later step fails


def pip_install(host: Host, prefix: Path, source: tuple[str, str], wheels: Path | None) -> None:
    python = str(host.at(prefix) / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    offline = ["--no-index", "--find-links", str(wheels)] if wheels is not None else []
    kind, where = source
    if kind == "requirement":
        host.run([*pip, "install", *offline, "--upgrade", where])
        return
    with tempfile.TemporaryDirectory(prefix="flexnn-install-") as tmp:
        wheel = where
        if kind == "tree":
            # Built from a copy: no root-owned build/ left in the operator's checkout.
            copy = Path(tmp) / "src"
            host.say(f"copy the source tree {where} to {copy}")
            if not host.dry_run:
                shutil.copytree(where, copy, ignore=TREE_IGNORE)
            host.run([*pip, "wheel", *offline, "--no-deps", "--wheel-dir", tmp, str(copy)])
            built = sorted(Path(tmp).glob("flexnn-*.whl"))
            wheel = str(built[-1]) if built else str(Path(tmp) / "flexnn-*.whl")
        host.run([*pip, "install", *offline, wheel])  # flexnn's dependencies, and flexnn if absent
        # pip leaves an installed flexnn of the same version alone; this one must be the one installed.
        host.run([*pip, "install", *offline, "--force-reinstall", "--no-deps", wheel])


def relocate(host: Host, prefix: Path) -> None:
    """pip writes the staged venv's path into its scripts' #! lines; the image runs them at prefix."""
    staged = host.at(prefix)
    if staged == prefix or host.dry_run:
        return
    old, new = str(staged).encode(), str(prefix).encode()
    for path in [*(staged / "bin").iterdir(), staged / "pyvenv.cfg"]:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if old in data:
                path.write_bytes(data.replace(old, new))
    print(f"scripts in {staged}/bin now name {prefix}", flush=True)


def ensure_user(host: Host, manifest: Manifest) -> None:
    """The system user flexnn, whose group may call the daemon's socket."""
    group_exists = host.root is None and _exists(grp.getgrnam, GROUP)
    cmd = [
        "useradd",
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
    ]
    cmd += ["--gid", GROUP] if group_exists else ["--user-group"]
    cmd += ["--comment", "flexnn inference daemon", USER]
    if host.root is not None:
        host.skip(cmd, "staging root: create the user in the image")
    elif _exists(pwd.getpwnam, USER):
        print(f"user exists: {USER}", flush=True)
    else:
        host.run(cmd)
        manifest.user_created = True


def _exists(lookup, name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def venv_says(host: Host, prefix: Path, *args: str) -> str:
    """What the installed flexnnd prints (its own unit and default TOML, as its version ships them).

    A dry run before the venv exists asks this flexnnd instead."""
    python = host.at(prefix) / "bin" / "python"
    if host.dry_run and not python.exists():
        from flexnnd.main import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(list(args))
        return out.getvalue()
    return host.output([str(python), "-m", "flexnnd.main", *args])


def link_commands(host: Host, prefix: Path, manifest: Manifest) -> None:
    """/usr/local/bin/flexnnctl and flexnnd, links to the venv's, unless something else is there."""
    for name in COMMAND_LINKS:
        link, target = LINK_DIR / name, prefix / "bin" / name
        staged = host.at(link)
        if staged.is_symlink() and os.readlink(staged) == str(target):
            print(f"unchanged: {link} -> {target}", flush=True)
        elif staged.exists() or staged.is_symlink():
            print(f"kept: {link} (not a link to {target}; flexnnd install did not make it)", flush=True)
        else:
            host.say(f"link: {link} -> {target}")
            if not host.dry_run:
                staged.parent.mkdir(parents=True, exist_ok=True)
                staged.symlink_to(target)
            manifest.add(link)


def write_config(host: Host, prefix: Path, manifest: Manifest) -> None:
    if not host.at(CONFIG_FILE.parent).is_dir():
        manifest.add(CONFIG_FILE.parent)
    if host.at(CONFIG_FILE).exists():
        print(f"kept: {CONFIG_FILE} (an existing configuration is never replaced)", flush=True)
        return
    text = venv_says(host, prefix, "--print-config")
    host.write(CONFIG_FILE, text, 0o644)
    manifest.add(CONFIG_FILE)


def write_unit(host: Host, prefix: Path, manifest: Manifest, force: bool) -> None:
    staged = host.at(UNIT_FILE)
    if staged.exists() and not manifest.made(UNIT_FILE) and not force:
        raise InstallError(
            f"{UNIT_FILE} exists and flexnnd install did not write it; move it away or give --force "
            "(local changes belong in a drop-in: systemctl edit flexnnd)"
        )
    text = venv_says(host, prefix, "--print-unit", "--prefix", str(prefix))
    host.write(UNIT_FILE, text, 0o644)
    manifest.add(UNIT_FILE)


def activate(host: Host, enable: bool, now: bool) -> None:
    """daemon-reload, then enable [--now]; without a running systemd, enable only makes its symlink."""
    if host.root is not None:
        host.skip(["systemctl", "daemon-reload"], "staging root")
        if enable:
            host.run(["systemctl", f"--root={host.root}", "enable", UNIT_NAME])
        return
    if not host.systemd_running:
        host.skip(["systemctl", "daemon-reload"], NOT_BOOTED)
        if enable:
            host.run(["systemctl", "enable", UNIT_NAME])  # works offline: it only links the unit
        if now:
            host.skip(["systemctl", "start", UNIT_NAME], NOT_BOOTED)
        return
    host.run(["systemctl", "daemon-reload"])
    if enable:
        host.run(["systemctl", "enable", *(["--now"] if now else []), UNIT_NAME])
    elif subprocess.run(["systemctl", "is-active", "--quiet", UNIT_NAME], check=False).returncode == 0:
        print(f"{UNIT_NAME} is running the previous install: systemctl restart flexnnd", flush=True)


def warm(host: Host, prefix: Path) -> None:
    """Compiles the kernels into the cache the service will use, owned by the service's user."""
    cmd = [
        str(host.at(prefix) / "bin" / "python"),
        "-m",
        "flexnnd.main",
        "warm",
        "--config",
        str(CONFIG_FILE),
    ]
    if host.root is not None:
        host.skip([f"{prefix}/bin/flexnnd", *cmd[3:]], "staging root: run it on the device")
        return
    # As root: once the service has run, its directories sit under /var/{lib,cache}/private (0700 root).
    host.run(cmd, env=SERVICE_ENV, cwd="/")
    for kind in ("STATE_DIRECTORY", "CACHE_DIRECTORY"):
        if (
            host.dry_run or Path(SERVICE_ENV[kind]).exists()
        ):  # the trailing / follows DynamicUser='s symlink to private/
            host.run(["chown", "-R", f"{USER}:{GROUP}", SERVICE_ENV[kind] + "/"])


def install(args: argparse.Namespace) -> int:
    host = Host(args.root, args.dry_run)
    prefix = check_prefix(args.prefix)
    if args.root is None and os.geteuid() != 0 and not args.dry_run:
        raise ConfigError(
            "flexnnd install writes /etc and the prefix: run it as root, or stage it with --root DIR"
        )
    if args.now and not args.enable:
        raise ConfigError("--now starts the service as it enables it: give --enable too")
    if args.now and args.root is not None:
        raise ConfigError("--now needs the device's systemd, not a staging root (--root)")
    source = resolve_source(args.source)
    manifest = Manifest.read(host, prefix)
    staged = host.at(prefix)
    if manifest is None and staged.is_dir() and any(staged.iterdir()):
        raise InstallError(
            f"{prefix} holds files flexnnd install did not make (no {MANIFEST} there): "
            "give an empty or new --prefix, or move them away"
        )
    manifest = manifest or Manifest()
    print(f"install flexnn from {source[1]} into {prefix}" + (f" under {host.root}" if host.root else ""))
    make_venv(host, prefix, manifest, args.system_site_packages)
    pip_install(host, prefix, source, args.wheels)
    relocate(host, prefix)
    link_commands(host, prefix, manifest)
    ensure_user(host, manifest)
    write_config(host, prefix, manifest)
    write_unit(host, prefix, manifest, args.force)
    manifest.write(host, prefix)
    activate(host, args.enable, args.now)
    if args.warm:
        warm(host, prefix)
    if not args.dry_run:
        version = venv_says(host, prefix, "--version").strip()
        print(f"installed {version} in {prefix}; unit {UNIT_FILE}, configuration {CONFIG_FILE}")
        if not args.enable and host.root is None:
            print("start it: systemctl enable --now flexnnd; let a user call it: usermod -aG flexnn NAME")
    return 0


# --- uninstall ---


def uninstall(args: argparse.Namespace) -> int:
    host = Host(args.root, args.dry_run)
    prefix = check_prefix(args.prefix)
    if args.root is None and os.geteuid() != 0 and not args.dry_run:
        raise ConfigError("flexnnd uninstall removes files in /etc and the prefix: run it as root")
    manifest = Manifest.read(host, prefix)
    if manifest is None:
        raise InstallError(
            f"no {prefix / MANIFEST}: flexnnd install made nothing at {prefix} (give --prefix)"
        )
    if manifest.made(UNIT_FILE) and host.at(UNIT_FILE).exists():
        if host.root is not None:
            host.run(["systemctl", f"--root={host.root}", "disable", UNIT_NAME])
        elif host.systemd_running:
            host.run(["systemctl", "disable", "--now", UNIT_NAME])
        else:
            host.run(["systemctl", "disable", UNIT_NAME])  # works offline: it only removes the links
        host.remove(UNIT_FILE)
        if host.systemd_running:
            host.run(["systemctl", "daemon-reload"])
    for name in COMMAND_LINKS:
        link = LINK_DIR / name
        if manifest.made(link) and host.at(link).is_symlink():
            host.remove(link)
    # The venv goes; the manifest stays while the configuration does, for a later --purge.
    staged = host.at(prefix)
    for child in sorted(staged.iterdir()) if staged.is_dir() else []:
        if child.name != MANIFEST:
            host.remove(prefix / child.name)
    kept = []
    if args.purge:
        for path in (CONFIG_FILE, CONFIG_FILE.parent):
            staged = host.at(path)
            if not staged.exists():
                continue
            others = (
                [c.name for c in staged.iterdir() if not manifest.made(path / c.name)]
                if staged.is_dir()
                else []
            )
            if not manifest.made(path):
                kept.append(f"{path} (not made by flexnnd install)")
            elif others:
                kept.append(f"{path} (holds {', '.join(sorted(others))}, not written by flexnnd install)")
            else:
                host.remove(path)
        for path in SERVICE_DIRS:
            host.remove(path)
        host.remove(prefix / MANIFEST)
        if manifest.made(prefix):
            host.remove(prefix)
    else:
        kept += [f"{CONFIG_FILE}, the state and cache directories (flexnnd uninstall --purge removes them)"]
        gone = [path for path in manifest.created if not host.at(Path(path)).exists()]
        manifest.created = [path for path in manifest.created if path not in gone or path == str(prefix)]
        manifest.write(host, prefix)
    if manifest.user_created:
        kept.append(f"user and group {USER} (userdel {USER} removes them)")
    for what in kept:
        print(f"kept: {what}", flush=True)
    return 0


# --- command line ---


def build_parser(command: str) -> argparse.ArgumentParser:
    if command == "install":
        parser = argparse.ArgumentParser(
            prog="flexnnd install",
            description="Install flexnnd as a systemd service: a venv at --prefix, the system user flexnn, "
            f"{CONFIG_FILE} (kept if present) and {UNIT_FILE}, then systemctl daemon-reload. Run as root. "
            "Running it again upgrades the venv and the unit.",
        )
        parser.add_argument(
            "--from", dest="source", metavar="SOURCE",
            help="a flexnn source tree, a .whl file or a pip requirement [default: the tree or wheel this "
            "flexnnd runs from]",
        )  # fmt: skip
        parser.add_argument(
            "--wheels", type=Path, metavar="DIR",
            help="install offline from the wheels in DIR (pip --no-index --find-links DIR): flexnn's and "
            "every dependency's, built for this machine",
        )  # fmt: skip
        parser.add_argument(
            "--system-site-packages", action="store_true",
            help="let the venv see the system's packages (e.g. Debian's python3-numpy) instead of "
            "installing its own",
        )  # fmt: skip
        parser.add_argument("--enable", action="store_true", help="systemctl enable flexnnd")
        parser.add_argument("--now", action="store_true", help="with --enable: start it too")
        parser.add_argument(
            "--warm", action="store_true",
            help="run `flexnnd warm` from the venv: compile the kernels now, not at the first start",
        )  # fmt: skip
        parser.add_argument(
            "--force", action="store_true", help=f"replace a {UNIT_FILE} that flexnnd install did not write"
        )
    else:
        parser = argparse.ArgumentParser(
            prog="flexnnd uninstall",
            description="Stop and disable flexnnd, remove its unit and venv; with --purge also the "
            "configuration, state and cache. Removes only what flexnnd install made.",
        )
        parser.add_argument(
            "--purge", action="store_true", help=f"also {CONFIG_FILE} and /var/lib/flexnn, /var/cache/flexnn"
        )
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, metavar="DIR",
        help=f"the venv; not under /home, /root or /run/user, which the unit's ProtectHome=yes hides "
        f"[default: {DEFAULT_PREFIX}]",
    )  # fmt: skip
    parser.add_argument(
        "--root", type=Path, metavar="DIR",
        help="stage every path under DIR (an image being built); useradd, daemon-reload and warm are "
        "printed, not run",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print each step, do none")
    return parser


def main(argv: Sequence[str]) -> int:
    """`argv` starts with "install" or "uninstall"."""
    command, rest = argv[0], list(argv[1:])
    args = build_parser(command).parse_args(rest)
    if args.root is not None:
        args.root = args.root.resolve()
    try:
        return install(args) if command == "install" else uninstall(args)
    except (ConfigError, InstallError) as e:
        print(f"flexnnd {command}: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
