"""Reconstructions as common deconvnet reimplementations show them.

For one image and each chosen layer (by default after each pooling stage: pool1,
pool2, pool5 of ZFNet; pool1 ... pool5 of VGG16, as the PyTorch VGG16 deconvnet
reimplementations show them) two deconvnet projections to pixels (Zeiler & Fergus
2014, section 2.1):

* (A) the whole layer: every activation of every feature map sent down at once;
* (B) only the layer's single strongest activation (the paper's mode, Fig. 2).

The figure is ``zfjax.figures.reconstructions``, the command
``zfjax.commands.reconstructions``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from zfjax.nets import deconv, model, network, strongest


class Reconstruction(NamedTuple):
    """``reconstruct`` of one image, layers in the order given: whole and strongest (L, H,
    W, 3) projections in the network's input channel order; unit int32 (L, 3) (channel, y,
    x) of each layer's strongest activation; value (L,) that activation."""

    whole: jax.Array
    strongest: jax.Array
    unit: jax.Array
    value: jax.Array


@partial(jax.jit, static_argnames=("layers", "config"))
def reconstruct(config: network.Network, params, image, *,
                layers: tuple[str, ...]) -> Reconstruction:
    """Project one image's layers down to pixels, whole and by their strongest unit.

    image: (H, W, 3) network input. Returns a ``Reconstruction``.
    """
    _, aux = model.forward(config, params, image[None])
    whole, strongest_units, units, values = [], [], [], []
    for layer in layers:
        acts = aux["activations"][layer]  # (1, h, w, C)
        value, channel, y, x = strongest.strongest_map(acts[0])
        unit = deconv.Units(*(jnp.zeros((1,), jnp.int32) + v for v in (0, channel, y, x)))
        whole.append(deconv.project(config, params, aux, layer, acts)[0])
        strongest_units.append(deconv.project_units(config, params, aux, layer, unit)[0])
        units.append(jnp.stack([channel, y, x]).astype(jnp.int32))
        values.append(value)
    return Reconstruction(jnp.stack(whole), jnp.stack(strongest_units), jnp.stack(units),
                          jnp.stack(values))
