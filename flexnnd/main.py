"""`flexnnd`: the daemon's entry point. With no configuration it serves the built-in default model."""

from __future__ import annotations

import logging
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
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from flexnnd.daemon.server import Daemon

    return Daemon(config, config_path=args.config, reload=lambda: config_from_args(args)).serve()


if __name__ == "__main__":
    sys.exit(main())
