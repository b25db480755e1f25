"""zfjax: Zeiler & Fergus (2014) ZFNet and its deconvnet, in JAX/Flax."""

from zfjax.model import ZFNet, ZFNetConfig, forward, forward_jit, init_params, layer_sizes

__all__ = ["ZFNet", "ZFNetConfig", "forward", "forward_jit", "init_params", "layer_sizes"]
