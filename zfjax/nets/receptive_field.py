"""Receptive fields: which input pixels can influence a unit.

A unit's deconvnet projection is zero outside its receptive field, so the box
is used to crop image patches next to projections (paper Fig. 2) and to limit
the reverse pass to a window (``deconv.project_units``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from zfjax.nets.network import Network, grow, ops_below


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
    Only the part of each window inside x is copied (no padded copy of x is made).
    """
    x = np.asarray(x)
    k, h, w, c = x.shape
    out = np.zeros((k, size, size, c), x.dtype)
    for i, (t, l) in enumerate(zip(np.asarray(top).tolist(), np.asarray(left).tolist())):
        y0, y1, x0, x1 = max(t, 0), min(t + size, h), max(l, 0), min(l + size, w)
        if y0 < y1 and x0 < x1:
            out[i, y0 - t:y1 - t, x0 - l:x1 - l] = x[i, y0:y1, x0:x1]
    return out


def crop_to_receptive_field(config: Network, layer: str, images: np.ndarray, y, x) -> np.ndarray:
    """Each image's window under its unit's receptive field: (K, R, R, C) from (K, H, W, C)
    and unit positions y, x (K,); R = ``receptive_field_size``. Boxes running past the
    image edge are zero-padded to the full R, so every crop of a layer has one shape."""
    top, left, _, _ = receptive_field(config, layer, np.asarray(y), np.asarray(x), clip=False)
    return crop_boxes(np.asarray(images), top, left, receptive_field_size(config, layer))
