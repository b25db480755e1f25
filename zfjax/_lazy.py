"""PEP 562 module ``__getattr__`` that imports a package's submodules and re-exported
names on first use, so ``import zfjax`` then ``zfjax.train.checkpoints.load_run`` works
without importing every module up front, and a process that needs only
``zfjax.inputs.store`` (prepare.py's decoding workers) does not import JAX."""

import importlib
import importlib.util


def submodule_getattr(package: str, exports: dict[str, str] | None = None):
    """Returns ``__getattr__(name)`` for ``package``: the attribute ``name`` of the module
    ``exports[name]`` names (a public name the package re-exports, imported on first use
    so that importing a light submodule does not import JAX), else the submodule
    ``package.name``, else AttributeError (so hasattr() keeps working)."""
    exports = exports or {}

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        if name.startswith("_") or importlib.util.find_spec(f"{package}.{name}") is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return importlib.import_module(f"{package}.{name}")

    return __getattr__
