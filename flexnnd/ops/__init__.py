"""The op registry: importing this package imports every module in it, and each op module registers
its ops (base.register), so adding an op is adding a file."""

import importlib
import pkgutil

from flexnnd.ops.base import Op, op_class, register, registered_ops

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Op", "op_class", "register", "registered_ops"]
