"""zfjax: Zeiler & Fergus (2014) convnets and their deconvnet, in JAX/Flax.

A network is data (``zfjax.network``: ZFNet, AlexNet, VGG16); the forward pass
(``zfjax.model``), the deconvnet (``zfjax.deconv``) and receptive fields are
derived from it. Every function takes the network config first, then params,
then data.
"""

from zfjax.deconv import Units, project, project_units, strongest_units
from zfjax.render import to_display
from zfjax.loading import Model, load
from zfjax.model import abstract_params, forward, forward_jit, init_params
from zfjax.network import (
    Network, ZFNetConfig, conv_layers, fc_layers, layer_sizes, num_channels, projectable_layers,
)
from zfjax.receptive_field import receptive_field, receptive_field_size

__all__ = [
    "Model", "Network", "ZFNetConfig", "Units", "load", "abstract_params", "conv_layers", "fc_layers", "forward",
    "forward_jit", "init_params", "layer_sizes", "num_channels", "project", "project_units",
    "projectable_layers", "receptive_field", "receptive_field_size", "strongest_units",
    "to_display",
]


def __getattr__(name: str):
    """zfjax.<module> without importing it first, e.g. ``zfjax.checkpoints.load_run``
    after a plain ``import zfjax`` (only the names above are imported eagerly)."""
    import importlib
    import importlib.util

    if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
