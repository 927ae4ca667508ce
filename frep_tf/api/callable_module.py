"""Modules that can be called: `frep_tf.fuse(model)` and `frep_tf.export(model, directory)`.

frep_tf/fuse.py and frep_tf/export.py are modules the rest of the package imports (`from frep_tf import
export as export_lib`), so the package attribute `frep_tf.fuse` *is* the module whatever is imported first.
Giving the module a class with `__call__` makes `frep_tf.fuse(model)` call its main function while
`frep_tf.fuse.copy_fused_weights` and every existing import keep working.
"""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, function_name: str) -> None:
    """Calling the module `module_name` calls its function `function_name`."""
    module = sys.modules[module_name]

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function_name)(*args, **kwargs)

    CallableModule.__qualname__ = CallableModule.__name__ = f"CallableModule[{module_name}.{function_name}]"
    module.__class__ = CallableModule
