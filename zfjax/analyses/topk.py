"""Top-9 activations per feature map, projected to pixels (Zeiler & Fergus 2014, Fig. 2).

A split is streamed through the network (``strongest.mine``): for every feature
map of a layer the 9 strongest activations over the whole set are kept, one per
image at most (each image's map is first reduced to its single maximum, as in
the paper). Each winner is then projected to pixels with the deconvnet and cut
to its receptive field, beside the image patch under it (``deconv.project_strongest``).
The figure is ``zfjax.figures.topk``, the command ``zfjax.commands.topk``.
"""

from __future__ import annotations

import numpy as np

from zfjax.nets import network, strongest


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
