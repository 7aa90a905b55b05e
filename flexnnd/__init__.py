"""flexnn: neural network inference inside a memory budget.

import flexnnd
flexnnd.import_model("model.onnx", "pkgdir")
sess = flexnnd.Session("model.onnx")        # or the package folder
outs = sess.run({"input": x})
# a decoder whose cache stays in the arena (see flexnnd.runtime.generate):
flexnnd.import_model("decoder.onnx", "pkg", state=flexnnd.cache_state(output_names))
flexnnd.generate(flexnnd.Session("pkg"), [464, 2068], 20).tokens
"""

from flexnnd.errors import (
    ArenaError,
    BudgetTooSmall,
    FeedError,
    FlexnnError,
    InputValueError,
    LoadError,
    ModelFormatError,
    ModelImportError,
    PackageError,
    PlanError,
    ShapeError,
    UnsupportedOp,
    UnsupportedOps,
)

__version__ = "0.1.0"

# The engine loads on first use: `import flexnnd.daemon...` or the sizes must not pull in onnx and numba.
_LAZY = {
    "import_model": "flexnnd.runtime.ladders",
    "Session": "flexnnd.runtime.session",
    "TensorSpec": "flexnnd.graph.package",
    "generate": "flexnnd.runtime.generate",
    "cache_state": "flexnnd.runtime.generate",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flexnnd' has no attribute {name!r}")


__all__ = [
    "ArenaError",
    "BudgetTooSmall",
    "FeedError",
    "FlexnnError",
    "InputValueError",
    "LoadError",
    "ModelFormatError",
    "ModelImportError",
    "PackageError",
    "PlanError",
    "Session",
    "ShapeError",
    "TensorSpec",
    "UnsupportedOp",
    "UnsupportedOps",
    "__version__",
    "cache_state",
    "generate",
    "import_model",
]
