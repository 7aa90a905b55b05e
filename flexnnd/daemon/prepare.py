"""One-off model preparation (building a zoo model, importing ONNX, planning the ladder) in a child process.

An import holds the whole ONNX model and its weights in memory at once; done inside the daemon it
would leave hundreds of MiB of heap behind that the budget then has to pay for as "runtime". A
spawned child does the work and exits, so the daemon keeps only the package it then reads.

On a machine not calibrated yet the daemon plans with estimated rates and calibrates after READY
(calibrate_later): calibration compiles and times kernels the model may never use, 15 s of a 25 s
first start on 2 cores. The all-resident plan an unconstrained budget serves does not depend on it.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from flexnnd import errors, progress

log = logging.getLogger("flexnnd.prepare")


def zoo_model(name: str, zoo_dir: str) -> str:
    from flexnnd import zoo

    with progress.task(f"building the zoo model {name}", total=1) as task:
        path = zoo.cached(name, zoo_dir)
        task.advance()
    return str(path)


def package_with_ladder(
    source: str,
    cache_dir: str,
    estimate: bool = False,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
) -> str:
    """The package of `source` with its ladder stored, importing and planning as needed. With
    `estimate`, a machine not calibrated yet gets a ladder planned with estimated rates, marked
    provisional: the daemon calibrates after READY (calibrate_later). `input_shapes` fixes an .onnx
    file's unknown input dimensions (the config's input_shapes); each set is its own cached import."""
    from flexnnd.graph.package import MANIFEST, read_package
    from flexnnd.planner.ladder import provisional, stored_rungs
    from flexnnd.runtime.ladders import build_and_store
    from flexnnd.runtime.session import package_for_path

    path = Path(source)
    target = package_for_path(path, Path(cache_dir) / "packages", input_shapes)
    if target == path and input_shapes:
        raise errors.ShapeError(
            f"{path} is a package, imported with fixed shapes already: input_shapes apply to an .onnx file"
        )
    if target != path and not (target / MANIFEST).is_file():
        from flexnnd.runtime.ladders import import_model

        # the ladder is planned below, where `estimate` applies
        import_model(path, target, input_shapes, ladder=False)
    package = read_package(target)
    if stored_rungs(package) is None or (not estimate and provisional(package)):
        build_and_store(package, cache_dir, estimate=estimate)
        run_once(package)
    return str(package.path)


def run_once(package) -> None:
    """One inference of the all-resident plan on zeros, so that numba compiles the model's kernels
    into its cache here, in the child: compiled in the daemon, they would leave ~55 MB of the
    compiler's heap in it (measured with mobilenet_v2), which the budget then pays for."""
    import numpy as np

    from flexnnd.ops import jit
    from flexnnd.planner.ladder import stored_rungs
    from flexnnd.planner.resident import plan_resident
    from flexnnd.runtime.session import Session

    with jit.compiling():
        session = Session(package, threads=1, ladder=stored_rungs(package), plan=plan_resident(package.graph))
        try:
            session.run({t.name: np.zeros(t.shape, dtype=t.dtype) for t in session.inputs})
        finally:
            session.close()


def plan_again(package_dirs: list[str], cache_dir: str) -> None:
    """Calibrate this machine (the first package's build does) and plan each package's ladder again,
    into NEXT_LADDER beside its plans.json: the daemon swaps it in under its models' lock."""
    from flexnnd.graph.package import read_package
    from flexnnd.planner.ladder import NEXT_LADDER
    from flexnnd.runtime.ladders import build_and_store

    for package_dir in package_dirs:
        build_and_store(read_package(Path(package_dir)), cache_dir, path=NEXT_LADDER)


CALIBRATING = "calibrating this machine after READY"  # logged before READY when a ladder waits for it
CALIBRATED = "calibration after READY ended"  # logged when that is over, whatever the outcome


def calibrate_later(models) -> threading.Thread | None:
    """For after READY: a thread that calibrates in a child, plans the models' provisional ladders
    again and adopts them (None when none is provisional). Until then a model serves on its
    estimated ladder, whose all-resident top rung is the same."""
    from flexnnd.planner.ladder import provisional

    waiting = {m.name: m.package_dir for m in models.all() if provisional(m.package)}
    if not waiting:
        return None
    log.info("%s; %s planned with estimated rates until then", CALIBRATING, ", ".join(waiting))

    def run() -> None:
        pending, done = dict(waiting), set()
        while pending:
            code = in_daemonic_child(plan_again, [str(d) for d in pending.values()], str(models.cache_dir))
            if code != 0:
                log.warning(
                    "calibration ended with exit code %d: the estimated ladders serve until the next start",
                    code,
                )
                break
            for name, package_dir in pending.items():
                done.add((name, package_dir))
                try:
                    models.adopt_ladder(name, package_dir)
                except (errors.FlexnnError, OSError) as e:
                    log.warning("%s keeps its estimated ladder: %s", name, e)
                else:
                    log.info("%s: ladder planned again with this machine's calibration", name)
            # a model loaded over the API while this ran was planned with estimated rates too
            pending = {
                m.name: m.package_dir
                for m in models.all()
                if (m.name, m.package_dir) not in done and provisional(m.package)
            }
        log.info("%s", CALIBRATED)

    return threading.Thread(target=run, name="calibrate", daemon=True)


def _call(fn, args):
    try:
        return "ok", fn(*args)
    except (
        errors.FlexnnError
    ) as e:  # pickled whole: the same class, its numbers kept (FlexnnError.__reduce__)
        return "error", e
    except OSError as e:
        return "error", errors.PackageError(f"{type(e).__name__}: {e}")


def _report_to(queue) -> None:
    """The child's progress goes to its parent, whose sinks show it (only the daemon may notify systemd)."""
    progress.set_sinks([progress.QueueSink(queue)])


def _relay(queue, source: int) -> None:
    while (message := queue.get()) is not None:
        progress.replay(message, source)
    progress.end_replay(source)


def _report_and_call(queue, fn, args) -> None:
    _report_to(queue)
    try:
        fn(*args)
    except errors.FlexnnError as e:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log.error("%s", e)
        raise SystemExit(1) from None


def in_daemonic_child(fn, *args) -> int:
    """fn(*args) in a spawned daemonic process, its progress reported here: the daemon's exit ends
    it rather than waiting for it (as it would for a ProcessPoolExecutor's). Its exit code."""
    context = multiprocessing.get_context("spawn")
    queue = context.SimpleQueue()
    relay = threading.Thread(target=_relay, args=(queue, id(queue)), name="progress-relay", daemon=True)
    relay.start()
    child = context.Process(target=_report_and_call, args=(queue, fn, args), daemon=True)
    try:
        child.start()
        child.join()
    finally:
        queue.put(None)
        relay.join()
        queue.close()
    return child.exitcode


def in_child(fn, *args):
    """fn(*args) in a fresh spawned process, its progress reported here; its FlexnnError comes back
    as the same class with the same attributes."""
    context = multiprocessing.get_context("spawn")
    queue = context.SimpleQueue()
    relay = threading.Thread(target=_relay, args=(queue, id(queue)), name="progress-relay", daemon=True)
    relay.start()
    try:
        with ProcessPoolExecutor(
            max_workers=1, mp_context=context, initializer=_report_to, initargs=(queue,)
        ) as pool:
            kind, value = pool.submit(_call, fn, args).result()
    finally:
        queue.put(None)  # the child is gone: every message it sent is ahead of this one
        relay.join()
        queue.close()
    if kind == "ok":
        return value
    raise value
