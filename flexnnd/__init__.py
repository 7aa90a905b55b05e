"""flexnn: neural network inference inside a memory budget.

import flexnnd
flexnnd.import_model("model.onnx", "pkgdir")
sess = flexnnd.Session("model.onnx")        # or the package folder
outs = sess.run({"input": x})
"""

from flexnnd.errors import (
    ArenaError,
    BudgetTooSmall,
    FeedError,
    FlexnnError,
    LoadError,
    ModelFormatError,
    ModelImportError,
    PackageError,
    PlanError,
    ShapeError,
    UnsupportedOp,
)
from flexnnd.graph.onnx_import import import_model
from flexnnd.runtime.session import Session, TensorSpec

__version__ = "0.1.0"

__all__ = [
    "ArenaError",
    "BudgetTooSmall",
    "FeedError",
    "FlexnnError",
    "LoadError",
    "ModelFormatError",
    "ModelImportError",
    "PackageError",
    "PlanError",
    "Session",
    "ShapeError",
    "TensorSpec",
    "UnsupportedOp",
    "__version__",
    "import_model",
]
