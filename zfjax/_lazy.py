"""PEP 562 module ``__getattr__`` that imports a package's submodules on first use, so
``import zfjax`` then ``zfjax.train.checkpoints.load_run`` works without importing every
module up front."""

import importlib
import importlib.util


def submodule_getattr(package: str):
    """Returns ``__getattr__(name)`` for ``package``: the submodule ``package.name``,
    AttributeError for a name that is no submodule (so hasattr() keeps working)."""

    def __getattr__(name: str):
        if name.startswith("_") or importlib.util.find_spec(f"{package}.{name}") is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return importlib.import_module(f"{package}.{name}")

    return __getattr__
