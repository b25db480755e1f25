"""Top-9 activations per feature map, projected to pixels (Zeiler & Fergus 2014, Fig. 2).

A split is streamed through the network (``strongest.mine``): for every feature
map of a layer the 9 strongest activations over the whole set are kept, one per
image at most (each image's map is first reduced to its single maximum, as in
the paper). Each winner is then projected to pixels with the deconvnet and cut
to its receptive field, beside the image patch under it (``project_top``).
The figure is ``zfjax.figures.topk``, the command ``zfjax.commands.topk``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zfjax.nets import deconv, model, network, strongest
from zfjax.nets.receptive_field import crop_to_receptive_field


class TopProjections(NamedTuple):
    """The drawn maps' winners: projections float32 and patches uint8, each
    (M, k, R, R, 3), R = receptive_field_size(layer); zero-padded past the image edge."""

    projections: np.ndarray
    patches: np.ndarray


@partial(jax.jit, static_argnames=("layer", "config"))
def _project_winners(config, params, images, channels, ys, xs, layer):
    """images (K, H, W, 3), one per unit -> each unit's projection (K, H, W, 3)."""
    _, aux = model.forward(config, params, images)
    units = deconv.Units(jnp.arange(images.shape[0], dtype=jnp.int32), channels, ys, xs)
    return deconv.project_units(config, params, aux, layer, units)


def project_top(config: network.Network, params, layer: str, top: strongest.TopK, channels,
                inputs: np.ndarray, display: np.ndarray) -> TopProjections:
    """Project the top-k units of the given maps and crop them to their receptive fields.

    top: the layer's TopK (``strongest.mine``); channels: int (M,) maps to draw; inputs
    float32 and display uint8 (N, H, W, 3), indexed by ``top.image``. Projections are in
    the network's input channel order (``Preprocessing.rgb`` shows them).
    """
    projections, patches = [], []
    for c in np.asarray(channels):
        image, ys, xs = (np.maximum(a[c], 0) for a in (top.image, top.y, top.x))
        full = _project_winners(config, params, inputs[image],
                                np.full(len(image), c, np.int32), ys, xs, layer)
        full = np.where(np.isfinite(top.value[c])[:, None, None, None], np.asarray(full), 0)
        projections.append(crop_to_receptive_field(config, layer, full.astype(np.float32), ys,
                                                   xs))
        patches.append(crop_to_receptive_field(config, layer, display[image], ys, xs))
    return TopProjections(np.stack(projections), np.stack(patches))


def check_channels(config: network.Network, layer: str, channels) -> np.ndarray:
    """channels as int32 (M,), or ValueError naming the first one the layer does not have."""
    n = network.num_channels(config, layer)
    for c in channels:
        if not 0 <= c < n:
            raise ValueError(f"channel {c} is out of range for {layer}: this run's {layer} has "
                             f"{n} feature maps, 0..{n - 1}")
    return np.asarray(channels, np.int32)


def choose_maps(top: strongest.TopK, count: int, seed: int) -> np.ndarray:
    """``count`` random maps (sorted), drawn among those that fire on some image if enough do."""
    active = np.flatnonzero(top.value[:, 0] > 0)
    pool = active if len(active) >= count else np.arange(len(top.value))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, min(count, len(pool)), replace=False)).astype(np.int32)
