"""flexnnctl: the operator's command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

from flexnn_client import EXIT_BUDGET_TOO_SMALL, EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE


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
        path = flexnnd.import_model(
            args.model, args.dir, input_shapes=dict(args.input_shape or ()) or None, ladder=not args.no_ladder
        )
    except (flexnnd.FlexnnError, OSError) as e:
        print(f"flexnnctl import: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(f"imported {args.model} into {path}" + ("" if args.no_ladder else ", with its ladder of plans"))
    return EXIT_OK


def _client(args: argparse.Namespace):
    from pathlib import Path

    from flexnn_client.client import Client

    token = Path(args.token_file).read_text().strip() if args.token_file else None
    return Client(args.address, token=token)


def _fail(args: argparse.Namespace, error: Exception) -> int:
    """Print why and return the exit code that tells scripts which failure it was."""
    import grpc

    from flexnn_client.client import NotRunning

    print(f"flexnnctl {args.command}: {error}", file=sys.stderr)
    if isinstance(error, NotRunning):
        return EXIT_NOT_RUNNING
    code = getattr(error, "code", None)
    if code == grpc.StatusCode.FAILED_PRECONDITION and "below the smallest feasible plan" in str(error):
        return EXIT_BUDGET_TOO_SMALL
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return EXIT_USAGE
    return EXIT_FAILED


def _remote(func):
    """Run a daemon command; client errors become messages and exit codes."""
    from functools import wraps

    @wraps(func)
    def run(args: argparse.Namespace) -> int:
        from flexnn_client.client import ClientError

        try:
            with _client(args) as client:
                return func(args, client)
        except ClientError as e:
            return _fail(args, e)

    return run


def _size(n: int) -> str:
    from flexnn_api.sizes import format_size

    return format_size(n) if n else "-"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds else "-"


@_remote
def cmd_set_budget(args: argparse.Namespace, client) -> int:
    reply = client.set_budget(args.budget)
    budget = _size(reply.effective_budget_bytes) if reply.effective_budget_bytes else "unlimited"
    print(f"budget {reply.operator_budget} accepted; effective budget {budget} ({reply.budget_source})")
    return EXIT_OK


@_remote
def cmd_status(args: argparse.Namespace, client) -> int:
    from google.protobuf.json_format import MessageToDict

    status = client.status()
    if args.json:
        print(json.dumps(MessageToDict(status, always_print_fields_with_no_presence=True), indent=1))
        return EXIT_OK
    budget = _size(status.effective_budget_bytes) if status.effective_budget_bytes else "unlimited"
    print(f"budget       {budget} (source: {status.budget_source}; operator: {status.operator_budget})")
    print(f"runtime      {_size(status.runtime_overhead_bytes)} overhead, RSS {_size(status.rss_bytes)}")
    print(f"swaps        {status.swaps}, up {status.uptime_s:.0f} s")
    if status.HasField("last_pressure_event"):
        print(f"pressure     {status.last_pressure_event.message}")
    _print_models(status.models)
    return EXIT_OK


def _print_models(models) -> None:
    print(
        f"{'model':<16} {'state':<8} {'share':>9} {'arena':>9} {'resident':>9} {'streamed':>9} "
        f"{'predicted':>10} {'last':>10} {'inferences':>10}"
    )
    for m in models:
        print(
            f"{m.name:<16} {m.state:<8} {_size(m.budget_bytes):>9} {_size(m.arena_bytes):>9} "
            f"{_size(m.resident_bytes):>9} {_size(m.streamed_bytes):>9} {_ms(m.predicted_latency_s):>10} "
            f"{_ms(m.last_latency_s):>10} {m.inferences:>10}"
        )
        if m.reason:
            print(f"  {m.reason}")


@_remote
def cmd_models(args: argparse.Namespace, client) -> int:
    _print_models(client.models())
    return EXIT_OK


@_remote
def cmd_infer(args: argparse.Namespace, client) -> int:
    import numpy as np

    try:
        array = np.load(args.file, allow_pickle=False)  # never unpickle: a .npy could carry code
    except (OSError, ValueError) as e:
        print(f"flexnnctl infer: cannot read {args.file}: {e}", file=sys.stderr)
        return EXIT_USAGE
    outputs = client.infer(args.model, array)
    for name, y in outputs.items():
        flat = y.reshape(-1)
        top = np.argsort(flat)[::-1][: args.top]
        print(f"{name} {tuple(y.shape)}: " + ", ".join(f"{i} ({flat[i]:.4f})" for i in top))
    if args.out:
        np.save(args.out, next(iter(outputs.values())))
    return EXIT_OK


@_remote
def cmd_watch(args: argparse.Namespace, client) -> int:
    import time

    for event in client.watch():
        kind = type(event).Kind.Name(event.kind).removeprefix("KIND_").lower()
        stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
        model = f" [{event.model}]" if event.model else ""
        took = f" ({event.duration_s * 1e3:.0f} ms)" if event.duration_s else ""
        print(f"{stamp} {kind}{model}: {event.message}{took}", flush=True)
    return EXIT_OK


@_remote
def cmd_load(args: argparse.Namespace, client) -> int:
    reply = client.load_model(args.name, args.path or "")
    print(f"loaded {reply.model.name}: {reply.model.state}")
    return EXIT_OK


@_remote
def cmd_unload(args: argparse.Namespace, client) -> int:
    client.unload_model(args.name)
    print(f"unloaded {args.name}")
    return EXIT_OK


def cmd_plans(args: argparse.Namespace) -> int:
    if not os.path.exists(args.model):
        return _remote_plans(args)
    from flexnn_api.sizes import format_size

    import flexnnd
    from flexnnd.graph.package import read_package
    from flexnnd.planner.ladder import build_and_store, stored_ladder
    from flexnnd.runtime.session import default_cache_dir, package_for

    try:
        package = read_package(package_for(args.model))
        ladder = None if args.rebuild else stored_ladder(package)
        if ladder is None:
            ladder = build_and_store(package, default_cache_dir().parent)
    except (flexnnd.FlexnnError, OSError) as e:
        print(f"flexnnctl plans: {e}", file=sys.stderr)
        return EXIT_FAILED
    # A rung per budget; neighbouring budgets that get the same plan show the same arena.
    print(f"{'budget':>9} {'arena':>9} {'resident':>9} {'streamed':>9} {'sliced':>6} {'predicted':>10}")
    for plan in ladder:
        resident = sum(plan.region[p].nbytes for p in plan.resident)
        streamed = sum(plan.region[ld.piece].nbytes for ld in plan.loads)
        sliced = len({s.node for s in plan.steps if s.part is not None})
        predicted = f"{plan.predicted_seconds * 1e3:.1f} ms" if plan.predicted_seconds else "-"
        budget = format_size(plan.budget) if plan.budget is not None else "-"
        print(
            f"{budget:>9} {format_size(plan.arena_bytes):>9} {format_size(resident):>9} "
            f"{format_size(streamed):>9} {sliced:>6} {predicted:>10}"
        )
    return EXIT_OK


@_remote
def _remote_plans(args: argparse.Namespace, client) -> int:
    print(
        f"{'budget':>9} {'arena':>9} {'resident':>9} {'streamed':>9} {'sliced':>6} {'predicted':>10} {'measured':>10}"
    )
    for p in client.plans(args.model):
        mark = "  <- active" if p.active else ""
        print(
            f"{_size(p.budget_bytes):>9} {_size(p.arena_bytes):>9} {_size(p.resident_bytes):>9} "
            f"{_size(p.streamed_bytes):>9} {len(p.sliced_layers):>6} {_ms(p.predicted_latency_s):>10} "
            f"{_ms(p.measured_latency_s):>10}{mark}"
        )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexnnctl", description="Control flexnnd and its models.")
    parser.add_argument(
        "--address",
        default=None,
        help="the daemon's socket path or host:port (default: $FLEXNN_ADDRESS, else the daemon's default socket)",
    )
    parser.add_argument("--token-file", default=None, help="a file holding the bearer token for TCP")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("set-budget", help="set the memory budget of all models: a size like 128M, or auto")
    p.add_argument("budget", help="bytes, or 128M / 1.5G / 512Mi / 300MB, or auto (the machine decides)")
    p.set_defaults(func=cmd_set_budget)
    p = sub.add_parser("status", help="budget, its source, runtime overhead and each model's plan")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("models", help="the loaded models and their state")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("infer", help="run a model on an input stored as .npy")
    p.add_argument("model")
    p.add_argument("file", help="a .npy array for the model's (only) input; uint8 is sent as UINT8")
    p.add_argument("--top", type=int, default=5, help="print the K largest values of each output")
    p.add_argument("--out", default=None, help="save the first output as .npy")
    p.set_defaults(func=cmd_infer)
    p = sub.add_parser("watch", help="print budget changes, swaps, pressure and errors as they happen")
    p.set_defaults(func=cmd_watch)
    p = sub.add_parser("load", help="load a model from the daemon's models directory")
    p.add_argument("name")
    p.add_argument("path", nargs="?", help="file or package inside the models directory (default: NAME)")
    p.set_defaults(func=cmd_load)
    p = sub.add_parser("unload", help="unload a model")
    p.add_argument("name")
    p.set_defaults(func=cmd_unload)
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
    p.add_argument(
        "--no-ladder",
        action="store_true",
        help="skip planning the budgets now (faster import; they are planned on first use)",
    )
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("plans", help="the ladder of plans of a model: budget, memory, predicted latency")
    p.add_argument("model", help="a model loaded in the daemon, or a package folder or .onnx file")
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
