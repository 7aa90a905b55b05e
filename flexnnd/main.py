"""`flexnnd`: the daemon's entry point. With no configuration it serves the built-in default model."""

from __future__ import annotations

import sys

EXIT_STARTUP = 3  # same as flexnnd.daemon.server.EXIT_STARTUP; repeated so --help stays import-light


def main(argv: list[str] | None = None) -> int:
    from flexnnd.daemon.config import build_parser, config_from_args
    from flexnnd.errors import ConfigError

    parser = build_parser()
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
