"""One-off model preparation (building a zoo model, importing ONNX, planning the ladder) in a child process.

An import holds the whole ONNX model and its weights in memory at once; done inside the daemon it
would leave hundreds of MiB of heap behind that the budget then has to pay for as "runtime". A
spawned child does the work and exits, so the daemon keeps only the package it then reads.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from flexnnd import errors


def zoo_model(name: str, zoo_dir: str) -> str:
    from flexnnd import zoo

    return str(zoo.cached(name, zoo_dir))


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


def in_child(fn, *args):
    """fn(*args) in a fresh spawned process; its FlexnnError comes back as the same class."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        kind, value = pool.submit(_call, fn, args).result()
    if kind == "ok":
        return value
    name, message = value
    cls = getattr(errors, name, errors.FlexnnError)
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    raise error
