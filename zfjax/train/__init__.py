"""Training a network (paper Sec. 3): ``run`` (RunSpec, presets, the run folder),
``training`` (the jitted step), ``trainer`` (the epoch loop, snapshots, resume),
``checkpoints`` (orbax), ``tensorboard_events`` and ``sweep``.
"""

from zfjax._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
