"""flexnnctl: the operator's command line."""

from __future__ import annotations

import argparse
import os
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


def cmd_plans(args: argparse.Namespace) -> int:
    import flexnnd
    from flexnnd.graph.package import read_package
    from flexnnd.planner.ladder import build_and_store, stored_ladder
    from flexnnd.runtime.session import default_cache_dir, package_for
    from flexnnd.sizes import format_size

    try:
        package = read_package(package_for(args.model))
        ladder = None if args.rebuild else stored_ladder(package)
        if ladder is None:
            ladder = build_and_store(package, default_cache_dir().parent)
    except (flexnnd.FlexnnError, OSError) as e:
        print(f"flexnnctl plans: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{'budget':>9} {'resident':>9} {'streamed':>9} {'sliced layers':>13} {'predicted':>10}")
    for plan in ladder:
        resident = sum(plan.region[p].nbytes for p in plan.resident)
        streamed = sum(plan.region[ld.piece].nbytes for ld in plan.loads)
        sliced = len({s.node for s in plan.steps if s.part is not None})
        predicted = f"{plan.predicted_seconds * 1e3:.1f} ms" if plan.predicted_seconds else "-"
        print(
            f"{format_size(plan.arena_bytes):>9} {format_size(resident):>9} {format_size(streamed):>9} "
            f"{sliced:>13} {predicted:>10}"
        )
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
    p = sub.add_parser("plans", help="the ladder of plans of a model: budget, memory, predicted latency")
    p.add_argument("model", help="a package folder or an .onnx file")
    p.add_argument("--rebuild", action="store_true", help="plan again even if a ladder is stored")
    p.set_defaults(func=cmd_plans)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
