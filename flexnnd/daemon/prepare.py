"""One-off model preparation (building a zoo model, importing ONNX, planning the ladder) in a child process.

An import holds the whole ONNX model and its weights in memory at once; done inside the daemon it
would leave hundreds of MiB of heap behind that the budget then has to pay for as "runtime". A
spawned child does the work and exits, so the daemon keeps only the package it then reads.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from flexnnd import errors, progress


def zoo_model(name: str, zoo_dir: str) -> str:
    from flexnnd import zoo

    with progress.task(f"building the zoo model {name}", total=1) as task:
        path = zoo.cached(name, zoo_dir)
        task.advance()
    return str(path)


def package_with_ladder(source: str, cache_dir: str) -> str:
    """The package of `source` with its ladder stored, importing and planning as needed."""
    from flexnnd.graph.package import read_package
    from flexnnd.planner.ladder import build_and_store, stored_rungs
    from flexnnd.runtime.session import package_for

    # An import stores the ladder itself; only a package without a current one is planned here.
    package = read_package(package_for(source, Path(cache_dir) / "packages", calibration_dir=cache_dir))
    if stored_rungs(package) is None:
        build_and_store(package, cache_dir)
    return str(package.path)


def _call(fn, args):
    try:
        return "ok", fn(*args)
    except errors.FlexnnError as e:  # sent back by class name: custom __init__s do not unpickle
        return "error", (type(e).__name__, str(e))
    except OSError as e:
        return "error", ("PackageError", f"{type(e).__name__}: {e}")


def _report_to(queue) -> None:
    """The child's progress goes to its parent, whose sinks show it (only the daemon may notify systemd)."""
    progress.set_sinks([progress.QueueSink(queue)])


def _relay(queue, source: int) -> None:
    while (message := queue.get()) is not None:
        progress.replay(message, source)
    progress.end_replay(source)


def in_child(fn, *args):
    """fn(*args) in a fresh spawned process, its progress reported here; its FlexnnError comes back
    as the same class."""
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
    name, message = value
    cls = getattr(errors, name, errors.FlexnnError)
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    raise error
