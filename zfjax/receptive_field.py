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
