"""zfjax: Zeiler & Fergus (2014) convnets and their deconvnet, in JAX/Flax.

A network is data (``zfjax.nets.network``: ZFNet, AlexNet, VGG16); the forward pass
(``zfjax.nets.model``), the deconvnet (``zfjax.nets.deconv``) and receptive fields are
derived from it. Every function takes the network config first, then params,
then data.
"""

from zfjax._lazy import submodule_getattr
from zfjax.nets.deconv import Units, project, project_units, strongest_units
from zfjax.render import to_display
from zfjax.loading import Model, load
from zfjax.nets.model import abstract_params, forward, forward_jit, init_params
from zfjax.nets.network import (
    Network, conv_layers, fc_layers, layer_sizes, num_channels, projectable_layers,
)
from zfjax.nets.receptive_field import receptive_field, receptive_field_size

__all__ = [
    "Model", "Network", "Units", "load", "abstract_params", "conv_layers", "fc_layers", "forward",
    "forward_jit", "init_params", "layer_sizes", "num_channels", "project", "project_units",
    "projectable_layers", "receptive_field", "receptive_field_size", "strongest_units",
    "to_display",
]


__getattr__ = submodule_getattr(__name__)
