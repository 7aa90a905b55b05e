"""A package's ladder planned with this machine's rates: where calibration (runtime.calibrate)
and the planner (planner.ladder), which knows nothing of measuring, meet; and `import_model`,
importing a model (graph.onnx_import) and then planning its ladder."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from flexnnd.errors import StorageError
from flexnnd.graph.import_limits import DEFAULT_LIMITS, ImportLimits
from flexnnd.graph.ir import Shape
from flexnnd.planner.ladder import LADDER_FILE, PROVISIONAL, build_ladder, stored_rungs
from flexnnd.planner.plan import Plan
from flexnnd.planner.plan_file import IndexEntry, write_plans
from flexnnd.runtime import calibrate

log = logging.getLogger("flexnnd.ladder")


def build_and_store(package, cache_dir, estimate: bool = False, path: str | None = None) -> list[Plan]:
    """Build the ladder with this machine's calibration and store it beside the weights (in `path`,
    a file name in the package, instead of plans.json when given). With `estimate`, a machine not
    calibrated yet is not calibrated now: the ladder is planned with calibrate.ESTIMATE and marked
    provisional, to be planned again once it is (see daemon.prepare.calibrate_later)."""
    machine = calibrate.cached_machine(cache_dir, package.weights_path) if estimate else None
    provisional = estimate and machine is None
    marker = package.path / PROVISIONAL
    if provisional:  # marked before the ladder is stored: a crash between leaves it to plan again
        marker.write_text("planned with estimated rates; planned again once this machine is calibrated\n")
        machine = calibrate.ESTIMATE
    ladder = build_ladder(package.graph, machine or calibrate.machine(cache_dir, package.weights_path))
    write_plans(package.path / (path or LADDER_FILE), ladder, package.graph, package.weights_sha256)
    if not provisional and path is None:
        marker.unlink(missing_ok=True)
    return ladder


def current_rungs(package, cache_dir) -> list[IndexEntry] | list[Plan] | None:
    """The package's ladder index; a ladder stored in another format version is planned again with
    this machine's calibration (rates cached in `cache_dir`) and stored in its place, or, when the
    package folder is read-only, returned as plans. None when the package was imported without a
    ladder: its budgets are then planned one by one."""
    rungs = stored_rungs(package)
    if rungs is not None or not (package.path / LADDER_FILE).exists():
        return rungs
    ladder = _build(package, cache_dir)
    try:
        write_plans(package.path / LADDER_FILE, ladder, package.graph, package.weights_sha256)
    except StorageError as e:  # planned, but not stored: this process keeps the plans
        log.warning("%s: the ladder planned again is kept in memory", e)
        return ladder
    return stored_rungs(package)


def _build(package, cache_dir) -> list[Plan]:
    return build_ladder(package.graph, calibrate.machine(cache_dir, package.weights_path))


def import_model(
    onnx_path: str | os.PathLike,
    package_dir: str | os.PathLike,
    input_shapes: Mapping[str, Shape] | None = None,
    limits: ImportLimits = DEFAULT_LIMITS,
    *,
    ladder: bool = True,
    calibration_dir: str | os.PathLike | None = None,
    state: Mapping[str, str] | None = None,
) -> Path:
    """Import an ONNX file into a model package folder; returns the folder.

    With `ladder` (the default) the plans of every budget are built too and stored with the
    package, with this machine's rates (measured once, cached in `calibration_dir`, by default
    ~/.cache/flexnn), so a session or the daemon only reads them. `state` maps graph outputs to the
    inputs they feed on the next run (a decoder's cache, see `runtime.generate.cache_state`): every
    plan keeps those inputs in its arena, and a session neither takes nor returns them.
    """
    from flexnnd.graph.onnx_import import import_to_package  # onnx only where an .onnx is imported

    package = import_to_package(onnx_path, package_dir, input_shapes, limits, state)
    if ladder:
        start = time.perf_counter()
        plans = build_and_store(package, calibration_dir or calibrate.default_cache_dir())
        logging.getLogger("flexnnd.import").info(
            "planned the ladder of %s: %d plans in %.2f s",
            package.graph.name,
            len(plans),
            time.perf_counter() - start,
        )
    return Path(package_dir)
