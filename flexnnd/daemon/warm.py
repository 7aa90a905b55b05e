"""`flexnnd warm`: do ahead of the first start what a cold start would do before and after READY.

For each model (the configured ones, else the default zoo model): build it if it is a zoo name,
import it into the daemon's cache with its ladder (which calibrates this machine once), and run
each distinct plan of its ladder once on zeros, so that numba compiles every kernel the model can
need into its cache. The daemon then starts in about a second and has nothing to calibrate after
READY (a first start serves meanwhile on a ladder planned with estimated rates). Run it as the
daemon's user with the daemon's environment (NUMBA_CACHE_DIR, CACHE_DIRECTORY), e.g. at install.

Kernels compile one at a time: numba holds one global lock for the whole of a compilation (typing,
lowering and LLVM), so threads do not overlap it; measured on these 2 shared cores, compiling
mobilenet_v2's and the calibration's kernels in 2 threads took 18.6 s (4 runs' mean) against 18.9 s
one after the other.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("flexnnd.warm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexnnd warm",
        description="Compile the kernels the models need into numba's cache, calibrate this machine and "
        "plan the models' ladders, so that the daemon's first start is quick.",
    )
    parser.add_argument(
        "models",
        nargs="*",
        help="zoo names, or files/packages in the models directory (default: the configured models, else "
        "the built-in default model)",
    )
    parser.add_argument("--config", type=Path, help="the daemon's TOML file, for its directories and models")
    parser.add_argument(
        "--cache-dir", type=Path, help="the daemon's cache directory (default: as the daemon)"
    )
    parser.add_argument(
        "--models-dir", type=Path, help="the daemon's models directory (default: as the daemon)"
    )
    parser.add_argument(
        "--numba-cache",
        type=Path,
        help="numba's cache directory, as the daemon's NUMBA_CACHE_DIR (the unit sets CACHE/numba; default: "
        "$NUMBA_CACHE_DIR, else numba's own, beside the flexnnd sources)",
    )
    return parser


def resolve(spec: str, models_dir: Path, zoo_dir: Path) -> Path:
    """A model spec as the daemon resolves it: a file or package in the models directory, else a zoo name."""
    from flexnnd import zoo
    from flexnnd.errors import InvalidRequest

    for candidate in (models_dir / spec, models_dir / f"{spec}.onnx"):
        if candidate.exists():
            return candidate
    if spec in zoo.ALL_MODELS:
        return zoo.cached(spec, zoo_dir)
    raise InvalidRequest(
        f"no model {spec!r} in {models_dir} (an .onnx file or a package folder), and it is not a built-in "
        f"model ({', '.join(zoo.ALL_MODELS)})"
    )


def warm_model(source: Path, cache_dir: Path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> int:
    """Import (with the ladder and the config's input_shapes), then run every distinct plan once;
    the number of kernels compiled."""
    import numpy as np

    from flexnnd import progress
    from flexnnd.daemon.prepare import package_with_ladder
    from flexnnd.graph.package import read_package
    from flexnnd.ops import jit
    from flexnnd.planner.ladder import LADDER_FILE, stored_rungs
    from flexnnd.planner.plan_file import read_plan
    from flexnnd.runtime.session import Session

    package = read_package(package_with_ladder(str(source), str(cache_dir), input_shapes=input_shapes))
    entries = stored_rungs(package)
    distinct = list({e.arena_bytes: e for e in entries}.values())  # one run per plan, not per rung
    with (
        jit.compiling() as compiled,
        progress.task(f"running {package.graph.name}'s plans", total=len(distinct)) as task,
    ):
        for entry in distinct:
            plan = read_plan(package.path / LADDER_FILE, entry, package.graph)
            session = Session(package, threads=1, ladder=entries, plan=plan)
            try:
                session.run({t.name: np.zeros(t.shape, dtype=t.dtype) for t in session.inputs})
            finally:
                session.close()
            task.advance()
    return compiled.task.done if compiled.task is not None else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["warm"]:
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if args.numba_cache is not None:  # numba reads it once, when it is imported: before any flexnnd kernel
        os.environ["NUMBA_CACHE_DIR"] = str(args.numba_cache.absolute())
    terminal = sys.stderr.isatty()
    # A terminal gets progress bars: only this command's own lines beside them, not the engine's.
    logging.basicConfig(
        level=logging.WARNING if terminal else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log.setLevel(logging.INFO)
    from flexnnd import zoo
    from flexnnd.daemon.catalog import served_name
    from flexnnd.daemon.config import load_config, resolve_dirs
    from flexnnd.errors import FlexnnError

    try:
        config = load_config(args.config)
    except FlexnnError as e:
        print(f"flexnnd warm: {e}", file=sys.stderr)
        return 2
    dirs = resolve_dirs(config, os.environ)
    cache = (args.cache_dir or dirs.cache).absolute()
    models_dir = (args.models_dir or dirs.models).absolute()
    specs = args.models or list(config.models) or [zoo.DEFAULT_MODEL]
    numba_cache = os.environ.get("NUMBA_CACHE_DIR") or "numba's default (beside the flexnnd sources)"
    log.info("warming %s: cache %s, numba cache %s", ", ".join(specs), cache, numba_cache)
    from flexnnd import progress

    if not terminal:  # a terminal gets the bars; a log a line a second per task
        progress.set_sinks([progress.LogSink()])
    start = time.perf_counter()
    try:
        for spec in specs:
            source = resolve(spec, models_dir, cache / "zoo")
            compiled = warm_model(source, cache, config.shapes_for(served_name(spec)))
            log.info("%s: warm (%d kernels compiled)", spec, compiled)
    except FlexnnError as e:
        print(f"flexnnd warm: {e}", file=sys.stderr)
        return 1
    log.info("done in %.1f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
