"""Receptive fields: which input pixels can influence a unit.

A unit's deconvnet projection is zero outside its receptive field, so the box
is used to crop image patches next to projections (paper Fig. 2) and to limit
the reverse pass to a window (``deconv.project_units``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from zfjax.network import Network, grow, ops_below


def receptive_field_size(config: Network, layer: str) -> int:
    """Side in input pixels of one unit's receptive field (conv5 at 224 px: 139)."""
    size = 1
    for op in ops_below(config, layer):
        size, _ = grow(op, size, 0)
    return size


def receptive_field(config: Network, layer: str, y, x, *, clip: bool = True):
    """Box (top, left, bottom, right), half-open, in input pixels, of unit(s) (y, x).

    y, x: ints or integer arrays of the same shape (numpy or jax); the result
    has their shape. With ``clip`` the box is cut to the image; without it, it
    may extend past the edges into the forward pass's zero padding.
    """
    size, top, left = 1, y, x
    for op in ops_below(config, layer):
        _, top = grow(op, size, top)
        size, left = grow(op, size, left)
    bottom, right = top + size, left + size
    if clip:
        xp = jnp if isinstance(y, jax.Array) or isinstance(x, jax.Array) else np
        n = config.image_size
        top, left = xp.maximum(top, 0), xp.maximum(left, 0)
        bottom, right = xp.minimum(bottom, n), xp.minimum(right, n)
    return top, left, bottom, right


def crop_boxes(x: np.ndarray, top: np.ndarray, left: np.ndarray, size: int) -> np.ndarray:
    """Windows x[k, top:top+size, left:left+size] of (K, H, W, C) arrays, zero outside x.

    top, left: int (K,), may be negative or run past the far edge. Returns (K, size, size, C).
    """
    padded = np.pad(x, ((0, 0), (size, size), (size, size), (0, 0)))
    return np.stack([padded[k, t + size:t + 2 * size, l + size:l + 2 * size]
                     for k, (t, l) in enumerate(zip(top, left))])


def crop_to_receptive_field(config: Network, layer: str, images: np.ndarray, y, x) -> np.ndarray:
    """Each image's window under its unit's receptive field: (K, R, R, C) from (K, H, W, C)
    and unit positions y, x (K,); R = ``receptive_field_size``. Boxes running past the
    image edge are zero-padded to the full R, so every crop of a layer has one shape."""
    top, left, _, _ = receptive_field(config, layer, np.asarray(y), np.asarray(x), clip=False)
    return crop_boxes(np.asarray(images), top, left, receptive_field_size(config, layer))
