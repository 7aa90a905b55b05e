"""flexnnctl: the operator's command line.

Light by design: the commands that talk to the daemon import grpc and the generated messages only;
the engine (numba, onnx) is imported by the local commands (`import`, `plans DIR`), numpy by `infer`."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from flexnn_api.sizes import format_size as _size

from flexnn_client import (
    EXIT_BUDGET_TOO_SMALL,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_USAGE,
)


def _shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name, tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=D1,D2,..., got {text!r}") from None


def _print_json(value) -> None:
    print(json.dumps(value, indent=1), flush=True)


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds else "-"


def _setting(text: str) -> str:
    """An operator or configured budget as the wire carries it (bytes as text, or auto), as a size."""
    return _size(int(text)) if text.isdigit() else text or "auto"


def cmd_import(args: argparse.Namespace) -> int:
    import flexnnd

    try:
        path = flexnnd.import_model(
            args.model, args.dir, input_shapes=dict(args.input_shape or ()) or None, ladder=not args.no_ladder
        )
    except (flexnnd.FlexnnError, OSError) as e:
        print(f"flexnnctl import: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        _print_json({"model": str(args.model), "package": str(path), "ladder": not args.no_ladder})
    else:
        print(f"imported {args.model} into {path}" + ("" if args.no_ladder else ", with its ladder of plans"))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from flexnnd.errors import FlexnnError
    from flexnnd.graph.check import check_model

    try:
        report = check_model(args.model)
    except (FlexnnError, OSError) as e:
        print(f"flexnnctl check: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        _print_json(report)
        return EXIT_OK if not report["refused"] else EXIT_FAILED

    def tensor(t) -> str:
        shape = "?" if t["shape"] is None else "[" + ", ".join(str(d) for d in t["shape"]) + "]"
        return f"  {t['name']}: {t['dtype']} {shape}"

    print(
        f"{report['model']}: graph {report['graph']!r}, opset {report['opset']}, {report['nodes']} nodes, "
        f"{report['initializers']} initializers ({_size(report['initializer_bytes'])})"
    )
    print("inputs:", *map(tensor, report["inputs"]), sep="\n")
    print("outputs:", *map(tensor, report["outputs"]), sep="\n")
    print("ops:")
    for op in report["ops"]:
        why = f" ({op['reason']})" if op["reason"] else ""
        print(f"  {op['count']:>5} {op['op']:<28} {op['status']}{why}")
    refused = report["refused"]
    if refused:
        print(f"{len(refused)} nodes cannot run:")
        for r in refused:
            print(f"  {r['node']} ({r['op']}): {r['reason']}")
        return EXIT_FAILED
    print("no node refused for its op; attribute values, shapes and element types are checked at import")
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


@_remote
def cmd_set_budget(args: argparse.Namespace, client) -> int:
    reply = client.set_budget("auto" if args.clear else args.budget)
    if args.json:
        from flexnn_client.as_json import message_dict

        _print_json(message_dict(reply))
        return EXIT_OK
    budget = _size(reply.effective_budget_bytes) if reply.effective_budget_bytes else "unlimited"
    operator = "auto (cleared)" if reply.operator_budget == "auto" else _setting(reply.operator_budget)
    print(f"operator budget {operator}; in force {budget} ({reply.budget_source})")
    if reply.reason:
        print(f"  {reply.reason}")
    return EXIT_OK


@_remote
def cmd_status(args: argparse.Namespace, client) -> int:
    status = client.status()
    if args.json:
        from flexnn_client.as_json import message_dict

        _print_json(message_dict(status))
        return EXIT_OK
    budget = _size(status.effective_budget_bytes) if status.effective_budget_bytes else "unlimited"
    print(
        f"budget       {budget} (source: {status.budget_source}; operator: {_setting(status.operator_budget)}; "
        f"configured: {_setting(status.configured_budget)})"
    )
    if status.budget_reason:
        print(f"             {status.budget_reason}")
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
    models = client.models()
    if args.json:
        from flexnn_client.as_json import message_dict

        _print_json({"models": [message_dict(m) for m in models]})
        return EXIT_OK
    _print_models(models)
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
    if args.out:
        np.save(args.out, next(iter(outputs.values())))
    tops = {}
    for name, y in outputs.items():
        flat = y.reshape(-1)
        tops[name] = [(int(i), float(flat[i])) for i in np.argsort(flat)[::-1][: args.top]]
    if args.json:
        listed = [
            {
                "name": name,
                "shape": list(y.shape),
                "dtype": str(y.dtype),
                "top": [{"index": i, "value": v} for i, v in tops[name]],
            }
            for name, y in outputs.items()
        ]
        _print_json({"model": args.model, "outputs": listed, "saved": args.out})
        return EXIT_OK
    for name, y in outputs.items():
        print(f"{name} {tuple(y.shape)}: " + ", ".join(f"{i} ({v:.4f})" for i, v in tops[name]))
    return EXIT_OK


@_remote
def cmd_watch(args: argparse.Namespace, client) -> int:
    import time

    from flexnn_client.as_json import message_dict

    for event in client.watch():
        if args.json:
            print(json.dumps(message_dict(event)), flush=True)  # one object per line, for `jq` and pipes
            continue
        kind = type(event).Kind.Name(event.kind).removeprefix("KIND_").lower()
        stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
        model = f" [{event.model}]" if event.model else ""
        took = f" ({event.duration_s * 1e3:.0f} ms)" if event.duration_s else ""
        print(f"{stamp} {kind}{model}: {event.message}{took}", flush=True)
    return EXIT_OK


@_remote
def cmd_load(args: argparse.Namespace, client) -> int:
    reply = client.load_model(args.name, args.path or "")
    if args.json:
        from flexnn_client.as_json import message_dict

        _print_json(message_dict(reply.model))
        return EXIT_OK
    print(f"loaded {reply.model.name}: {reply.model.state}")
    return EXIT_OK


@_remote
def cmd_unload(args: argparse.Namespace, client) -> int:
    client.unload_model(args.name)
    if args.json:
        _print_json({"unloaded": args.name})
        return EXIT_OK
    print(f"unloaded {args.name}")
    return EXIT_OK


def distinct_plans(rungs: list[dict]) -> list[dict]:
    """One entry per distinct plan of a ladder, in budget order, with the budgets it serves.

    Neighbouring rungs of a ladder often hold the same plan (the fastest one that fits serves the
    next budgets too). A rung's `budget_bytes` is what the model needs to run its plan (arena plus
    output copies); a plan serves every budget from its own up to the next costlier plan's, and the
    costliest serves all above (`budget_to_bytes` None)."""
    same = ("budget_bytes", "arena_bytes", "resident_bytes", "streamed_bytes", "sliced_layers")
    plans: dict[tuple, dict] = {}
    for rung in rungs:
        key = tuple(tuple(rung[k]) if isinstance(rung[k], list) else rung[k] for k in same)
        plan = plans.get(key)
        if plan is None:
            plans[key] = dict(rung, rungs=1)
            continue
        plan["rungs"] += 1
        for field in ("active", "measured_latency_s"):  # the daemon's listing only
            if field in rung:
                plan[field] = plan[field] or rung[field]
    ordered = sorted(plans.values(), key=lambda p: p["budget_bytes"])
    costs = sorted({p["budget_bytes"] for p in ordered})
    result = []
    for plan in ordered:
        above = [c for c in costs if c > plan["budget_bytes"]]
        budget = plan.pop("budget_bytes")
        result.append({"budget_from_bytes": budget, "budget_to_bytes": above[0] if above else None, **plan})
    return result


def _print_plans(plans: list[dict], measured: bool) -> None:
    header = f"{'budgets':>17} {'arena':>9} {'resident':>9} {'streamed':>9} {'sliced':>6} {'predicted':>10}"
    print(header + (f" {'measured':>10}" if measured else ""))
    for p in plans:
        low = _size(p["budget_from_bytes"])
        budgets = f"{low}-{_size(p['budget_to_bytes'])}" if p["budget_to_bytes"] is not None else f"{low}+"
        row = (
            f"{budgets:>17} {_size(p['arena_bytes']):>9} {_size(p['resident_bytes']):>9} "
            f"{_size(p['streamed_bytes']):>9} {len(p['sliced_layers']):>6} {_ms(p['predicted_latency_s']):>10}"
        )
        if measured:
            row += f" {_ms(p['measured_latency_s']):>10}" + ("  <- active" if p["active"] else "")
        print(row)


def cmd_plans(args: argparse.Namespace) -> int:
    if not os.path.exists(args.model):
        return _remote_plans(args)
    import flexnnd
    from flexnnd.graph.package import read_package
    from flexnnd.planner.ladder import stored_ladder
    from flexnnd.planner.plan_file import summary
    from flexnnd.runtime.ladders import build_and_store
    from flexnnd.runtime.session import default_cache_dir, package_for

    try:
        package = read_package(package_for(args.model))
        ladder = None if args.rebuild else stored_ladder(package)
        if ladder is None:
            ladder = build_and_store(package, default_cache_dir().parent)
    except (flexnnd.FlexnnError, OSError) as e:
        print(f"flexnnctl plans: {e}", file=sys.stderr)
        return EXIT_FAILED
    output_bytes = sum(t.nbytes for t in package.graph.outputs)  # a Session's budget holds them too
    rungs = []
    for plan in ladder:
        resident, streamed, sliced = summary(plan)
        rungs.append(
            {
                "budget_bytes": plan.arena_bytes + output_bytes,
                "arena_bytes": plan.arena_bytes,
                "resident_bytes": resident,
                "streamed_bytes": streamed,
                "sliced_layers": list(sliced),
                "predicted_latency_s": plan.predicted_seconds,
            }
        )
    plans = distinct_plans(rungs)
    if args.json:
        _print_json({"model": str(args.model), "package": str(package.path), "plans": plans})
    else:
        _print_plans(plans, measured=False)
    return EXIT_OK


@_remote
def _remote_plans(args: argparse.Namespace, client) -> int:
    from flexnn_client.as_json import message_dict

    plans = distinct_plans([message_dict(p) for p in client.plans(args.model)])
    if args.json:
        _print_json({"model": args.model, "plans": plans})
    else:
        _print_plans(plans, measured=True)
    return EXIT_OK


def _version() -> str:
    from importlib import metadata

    for distribution in ("flexnn", "flexnn-client"):  # the whole package, or the client alone
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "unknown (flexnn is not installed: run from a source tree)"


class _VersionAction(argparse.Action):
    """--version, reading the installed package's metadata only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"flexnnctl {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexnnctl", description="Control flexnnd and its models.")
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument(
        "--address",
        default=None,
        help="the daemon's socket path or host:port (default: $FLEXNN_ADDRESS, else the daemon's default socket)",
    )
    parser.add_argument("--token-file", default=None, help="a file holding the bearer token for TCP")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output (numbers as numbers)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func)
        return p

    p = command(
        "set-budget", cmd_set_budget, "set the memory budget of all models: a size like 128M, or auto"
    )
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "budget",
        nargs="?",
        help="bytes, or 128M / 1.5G / 512Mi / 300MB, or auto: clear the operator budget "
        "(the configured one applies, else the machine decides)",
    )
    budget.add_argument("--clear", action="store_true", help="clear the operator budget: the same as auto")
    command("status", cmd_status, "budget, its source, runtime overhead and each model's plan")
    command("models", cmd_models, "the loaded models and their state")
    p = command("infer", cmd_infer, "run a model on an input stored as .npy")
    p.add_argument("model")
    p.add_argument("file", help="a .npy array for the model's (only) input; uint8 is sent as UINT8")
    p.add_argument("--top", type=int, default=5, help="print the K largest values of each output")
    p.add_argument("--out", default=None, help="save the first output as .npy")
    command(
        "watch",
        cmd_watch,
        "print budget changes, swaps, pressure and errors as they happen (--json: one per line)",
    )
    p = command("load", cmd_load, "load a model from the daemon's models directory")
    p.add_argument("name")
    p.add_argument("path", nargs="?", help="file or package inside the models directory (default: NAME)")
    p = command("unload", cmd_unload, "unload a model")
    p.add_argument("name")
    p = command("import", cmd_import, "import an ONNX model into a model package folder")
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
    p = command(
        "check",
        cmd_check,
        "an ONNX file's inputs, outputs and ops, and which ops flexnn refuses, without reading its weights",
    )
    p.add_argument("model", help="the .onnx file")
    p = command(
        "plans",
        cmd_plans,
        "a model's distinct plans: the budgets each serves (from its own up to the next plan's), "
        "memory and predicted latency",
    )
    p.add_argument("model", help="a model loaded in the daemon, or a package folder or .onnx file")
    p.add_argument("--rebuild", action="store_true", help="plan again even if a ladder is stored")
    return parser


_DASH_VALUE = re.compile(r"^-[0-9.]")  # "-5M": a value, since no flexnnctl option starts with a digit


def _dash_values_as_positionals(argv: list[str]) -> list[str]:
    """argparse reads `set-budget -5M` as an unknown option; put such values behind `--` so the
    command receives them and says what is wrong with them."""
    if "set-budget" not in argv or "--" in argv:
        return argv
    at = argv.index("set-budget") + 1
    values = [a for a in argv[at:] if _DASH_VALUE.match(a)]
    if not values:
        return argv
    return argv[:at] + [a for a in argv[at:] if not _DASH_VALUE.match(a)] + ["--", *values]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(_dash_values_as_positionals(argv))
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    try:
        return args.func(args)
    except ModuleNotFoundError as e:
        if e.name != "flexnnd" and not (e.name or "").startswith("flexnnd."):
            raise
        # the client-only distribution (clients/pyproject.toml) has no engine for the local commands
        print(
            f"flexnnctl {args.command}: this needs the engine, which this installation lacks: it is the "
            "client alone (flexnn-client); install flexnn (pip install flexnn) for import and local plans",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:  # Ctrl-C, e.g. to end `watch`: the shell's status for SIGINT, no traceback
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
