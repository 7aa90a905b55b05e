"""The exception hierarchy of flexnn: every error names what is wrong, with the numbers."""

from __future__ import annotations

import os


class FlexnnError(Exception):
    """Base of every error flexnn raises on purpose.

    Pickled whole, attributes and all: an error raised in a child process (see daemon/prepare.py)
    comes back as the same class with the same numbers, though its __init__ takes other arguments
    than the message it stores.
    """

    def __reduce__(self):
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[FlexnnError], args: tuple, attributes: dict) -> FlexnnError:
    """An error as it was pickled: its args and attributes set without running its __init__ again."""
    error = BaseException.__new__(cls)  # MemoryError.__new__ refuses subclasses such as ArenaError
    error.args = args
    error.__dict__.update(attributes)
    return error


class ModelImportError(FlexnnError):
    """A model could not be imported (bad file, unsupported construct)."""


class ModelFormatError(ModelImportError):
    """The file is not a readable ONNX model (truncated, not protobuf, wrong IR)."""


class UnsupportedOp(ModelImportError):
    """An op (or an attribute value of it) that flexnn cannot run."""

    def __init__(self, op_type: str, node: str, opset: int | None = None, why: str = ""):
        if isinstance(op_type, bytes):  # protobuf hands over a name that is not UTF-8 as bytes
            op_type = op_type.decode("utf-8", errors="replace")
        self.op_type, self.node, self.opset, self.why = op_type, node, opset, why
        where = f"node {node!r}" + (f", opset {opset}" if opset is not None else "")
        super().__init__(f"unsupported op {op_type} ({where})" + (f": {why}" if why else ""))


class DtypeRefused(ModelImportError):
    """Element types an op's kernels do not take (from Op.output_dtypes); the importer turns it into
    an UnsupportedOp naming the node."""

    def __init__(self, why: str):
        self.why = why
        super().__init__(why)


class UnsupportedOps(UnsupportedOp):
    """Every node of a model that flexnn cannot run, found in one import (`refusals`, in graph
    order); `op_type`, `node` and `opset` are the first one's."""

    def __init__(self, refusals: list[UnsupportedOp]):
        self.refusals = list(refusals)
        first = self.refusals[0]
        self.op_type, self.node, self.opset, self.why = first.op_type, first.node, first.opset, first.why
        counts: dict[str, int] = {}
        for r in self.refusals:
            counts[r.op_type] = counts.get(r.op_type, 0) + 1
        summary = ", ".join(f"{op} ×{n}" if n > 1 else op for op, n in counts.items())
        lines = "\n".join(f"  {r}" for r in self.refusals)
        ModelImportError.__init__(self, f"{len(self.refusals)} nodes cannot run ({summary}):\n{lines}")


class ShapeError(ModelImportError):
    """Shapes that do not agree, or cannot be made static."""


class PackageError(FlexnnError):
    """A model package on disk is missing, stale or corrupt."""


class FeedError(FlexnnError, ValueError):
    """Inputs given to Session.run do not match the model (names, shapes, dtypes)."""


class InputValueError(FeedError):
    """An inference whose inputs' values the model cannot take, found while it runs: an index out
    of range in a Gather, say. The request fails; nothing is read or written outside a tensor."""

    def __init__(self, node: str, op_type: str, why: str):
        self.node, self.op_type, self.why = node, op_type, why  # a kernel raises it with node ""
        super().__init__(f"node {node!r} ({op_type}): {why}")


class PlanError(FlexnnError):
    """A plan is invalid (fails verification) or cannot be built."""


class BudgetTooSmall(PlanError):
    """The budget is below the smallest feasible plan."""

    def __init__(self, requested: int, minimum: int, model: str = "", exact: bool = True):
        self.requested, self.minimum, self.model = requested, minimum, model
        of = f" of {model}" if model else ""
        bound = "" if exact else "at least "
        super().__init__(
            f"budget {requested:,} bytes is below the smallest feasible plan{of}: {bound}{minimum:,} bytes"
        )


class StalePlanFile(PlanError):
    """A stored plan file of another format version: plan again rather than read it."""


class LoadError(FlexnnError):
    """Reading weights from storage failed during an inference or a plan adoption."""


class ArenaError(FlexnnError, MemoryError):
    """The system refused the memory of a plan's arena."""

    def __init__(self, requested: int, available: int | None, why: str):
        self.requested, self.available = requested, available
        free = f"{available:,} bytes available" if available is not None else "available memory unknown"
        super().__init__(f"cannot map a {requested:,}-byte arena ({free}): {why}")


class ServingError(FlexnnError):
    """A request the daemon cannot serve now (unknown model, model not ready, over capacity)."""


class ModelNotFound(ServingError, KeyError):
    """No model of that name is loaded."""

    def __init__(self, name: str, loaded: list[str]):
        self.name = name
        super().__init__(f"model {name!r} is not loaded; loaded: {', '.join(loaded) or 'none'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class ModelAlreadyLoaded(ServingError):
    """A model of that name is loaded already (and not failed): unload it first."""

    def __init__(self, name: str, source: str | os.PathLike[str]):
        self.name, self.source = name, source
        super().__init__(f"a model named {name!r} is already loaded (from {source})")


class ModelNotReady(ServingError):
    """The model is loaded but has no usable plan (budget too small, failed load)."""


class Overloaded(ServingError):
    """More requests than the model's queue holds; the plan only accounts for that many."""


class ConfigError(FlexnnError):
    """A setting that is unknown or invalid; names the setting and where it came from."""


class AlreadyRunning(FlexnnError):
    """Another flexnnd holds the instance lock of this socket."""

    def __init__(self, lock_path: str | os.PathLike[str], pid: int | None):
        self.lock_path, self.pid = lock_path, pid
        holder = f"pid {pid}" if pid is not None else "a process whose pid is not yet written"
        super().__init__(f"another flexnnd is already running ({holder} holds the lock {lock_path})")


class InvalidRequest(FlexnnError, ValueError):
    """An inference request that does not fit the model: names, datatypes, shapes, byte counts or values."""

    def __init__(self, message: str, expected: object = None, got: object = None, tensor: str = ""):
        self.expected, self.got, self.tensor = expected, got, tensor
        super().__init__(message)


class StorageError(FlexnnError):
    """Writing a package, plan cache or state file failed (disk full, read-only, permissions).

    Every such write goes to a temporary file first, so the previous file is still whole.
    """


class MalformedGraph(ModelImportError):
    """A graph that is not a valid dataflow graph: cycles, missing producers, duplicate producers."""


class TensorTooLarge(ModelImportError):
    """A tensor whose declared size is above the import limit, refused before anything is allocated."""

    def __init__(self, what: str, shape: tuple[int, ...], nbytes: int, limit: int, message: str = ""):
        self.shape, self.nbytes, self.limit = shape, nbytes, limit
        dims = ", ".join(str(d) for d in shape[:8]) + (
            f", ... {len(shape) - 8} more" if len(shape) > 8 else ""
        )
        super().__init__(
            message or f"{what}: shape [{dims}] declares {nbytes:,} bytes, above the limit of {limit:,} bytes"
        )


class ExternalDataError(ModelFormatError):
    """External tensor data that is missing, outside the model's folder, or does not fit its file."""


class InstallError(FlexnnError):
    """`flexnnd install`/`uninstall` cannot go on: a path it did not make is in the way, or a step failed."""
