"""One pure core per analysis of the paper (arrays in, a NamedTuple out; figures in
``zfjax.figures``, commands in ``zfjax.commands``), plus ``similarity`` shared by
the sanity checks and the atlas.
"""

from zfjax._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
