"""zfjax: Zeiler & Fergus (2014) convnets and their deconvnet, in JAX/Flax.

A network is data (``zfjax.nets.network``: ZFNet, AlexNet, VGG16); the forward pass
(``zfjax.nets.model``), the deconvnet (``zfjax.nets.deconv``) and receptive fields are
derived from it. Every function takes the network config first, then params,
then data.
"""

from zfjax._lazy import submodule_getattr

# The public names and the module each comes from (imported on first use).
_EXPORTS = {
    "Units": "zfjax.nets.deconv", "project": "zfjax.nets.deconv",
    "project_units": "zfjax.nets.deconv", "strongest_units": "zfjax.nets.deconv",
    "to_display": "zfjax.render",
    "Model": "zfjax.loading", "load": "zfjax.loading",
    "abstract_params": "zfjax.nets.model", "forward": "zfjax.nets.model",
    "forward_jit": "zfjax.nets.model", "init_params": "zfjax.nets.model",
    "Network": "zfjax.nets.network", "conv_layers": "zfjax.nets.network",
    "fc_layers": "zfjax.nets.network", "layer_sizes": "zfjax.nets.network",
    "num_channels": "zfjax.nets.network", "projectable_layers": "zfjax.nets.network",
    "receptive_field": "zfjax.nets.receptive_field",
    "receptive_field_size": "zfjax.nets.receptive_field",
}
__all__ = sorted(_EXPORTS)
__getattr__ = submodule_getattr(__name__, _EXPORTS)
