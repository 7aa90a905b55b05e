"""flexnnctl: the operator's command line."""

from __future__ import annotations

import argparse
import sys

from flexnn_client import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def _shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name, tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=D1,D2,..., got {text!r}") from None


def cmd_import(args: argparse.Namespace) -> int:
    import flexnnd

    try:
        path = flexnnd.import_model(args.model, args.dir, input_shapes=dict(args.input_shape or ()) or None)
    except (flexnnd.FlexnnError, OSError) as e:
        print(f"flexnnctl import: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(f"imported {args.model} into {path}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexnnctl", description="Control flexnnd and its models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("import", help="import an ONNX model into a model package folder")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("dir", help="the package folder to write")
    p.add_argument(
        "--input-shape",
        action="append",
        type=_shape_arg,
        metavar="NAME=D1,D2,...",
        help="static shape for an input with symbolic dimensions (repeatable)",
    )
    p.set_defaults(func=cmd_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
