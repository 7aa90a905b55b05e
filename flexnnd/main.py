"""`flexnnd`: the daemon's entry point. With no configuration it serves the built-in default model."""

from __future__ import annotations

import sys

EXIT_STARTUP = 3  # same as flexnnd.daemon.server.EXIT_STARTUP; repeated so --help stays import-light


# Subcommands beside serving; each module has its own `main(argv) -> int` and imports only what it needs.
COMMANDS = {
    "install": "flexnnd.daemon.install",  # venv, unit, user, directories, default TOML; daemon-reload
    "uninstall": "flexnnd.daemon.install",
    "warm": "flexnnd.daemon.warm",  # compile the kernels and calibrate ahead of the first start
}


# Flags that print and exit, answered before the daemon's parser (and its imports) is built.
INFO_FLAGS = ("--version", "--print-unit", "--print-config")
INFO_HELP = (
    "other commands: flexnnd install|uninstall|warm [--help]; flexnnd --version; "
    "flexnnd --print-unit [--prefix DIR] (the systemd unit running DIR/bin/flexnnd, by default this "
    "environment's); flexnnd --print-config (the commented default TOML)"
)


def version() -> str:
    """The installed distribution's version; a source tree run without installing says so."""
    from importlib import metadata

    try:
        return metadata.version("flexnn")
    except metadata.PackageNotFoundError:
        import flexnnd

        return f"{flexnnd.__version__} (not installed: {flexnnd.__path__[0]})"


def print_info(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="flexnnd", description=INFO_HELP)
    what = parser.add_mutually_exclusive_group(required=True)
    for flag in INFO_FLAGS:
        what.add_argument(flag, action="store_true")
    parser.add_argument("--prefix", metavar="DIR", help="with --print-unit: the venv whose flexnnd it runs")
    args = parser.parse_args(argv)
    if args.prefix is not None and not args.print_unit:
        parser.error("--prefix goes with --print-unit")
    if args.version:
        print(f"flexnnd {version()}")
    elif args.print_config:
        from flexnnd.daemon.config import render_default_toml

        sys.stdout.write(render_default_toml())
    else:
        from pathlib import Path

        from flexnnd.daemon import install

        executable = (
            install.default_executable() if args.prefix is None else Path(args.prefix) / "bin" / "flexnnd"
        )
        hidden = install.protect_home_conflict(executable)
        if hidden is not None:
            print(
                f"flexnnd: warning: {executable} is under {hidden}, which the unit's ProtectHome=yes hides "
                "from the service: it will not start (flexnnd install puts the venv in /opt/flexnn)",
                file=sys.stderr,
            )
        sys.stdout.write(install.render_unit(executable))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        import importlib

        return importlib.import_module(COMMANDS[argv[0]]).main(argv)
    if any(arg in INFO_FLAGS for arg in argv):
        return print_info(argv)
    from flexnnd.daemon.config import build_parser, config_from_args
    from flexnnd.errors import ConfigError

    parser = build_parser()
    parser.epilog = " ".join(filter(None, [parser.epilog, INFO_HELP]))
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as e:
        print(f"flexnnd: {e}", file=sys.stderr)
        return EXIT_STARTUP
    from flexnnd.daemon.logformat import setup_logging

    setup_logging(config.log_level, config.log_format)
    from flexnnd.daemon.server import Daemon

    return Daemon(config, config_path=args.config, reload=lambda: config_from_args(args)).serve()


if __name__ == "__main__":
    sys.exit(main())
