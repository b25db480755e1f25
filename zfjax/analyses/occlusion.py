"""Occlusion sensitivity (Zeiler & Fergus 2014, section 4.2, Fig. 7).

A square (gray by default: the mean image, i.e. 0 after mean subtraction) is
slid over the image. For every position of the square the network is run on
the occluded copy and four things are recorded, as maps over positions:

* (b) the total activation of the feature map (layer 5 by default) that is
  strongest on the unoccluded image, and the activation of its strongest unit;
* (d) the probability of the correct class;
* (e) the most probable class (and its probability).

Column (c) of the figure projects the top activation of that feature map to
pixels, for the unoccluded image and for the occluded copies that hurt the map
and the correct class most.

The occluded copies are built on the device, inside one jitted call that runs
the positions in batches (``lax.map`` with a batch size), not a Python loop.
By default each position recomputes only the windows of each layer that the
square can change (same results as whole forwards, a third of the work at
224 px with a 32 px square; see "incremental forward" below).
The figure is ``zfjax.figures.occlusion``, the command ``zfjax.commands.occlusion``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfjax.nets import deconv, model, network, strongest


class Readouts(NamedTuple):
    """What occlusion reads off the network, per occluder position or for the clean image:
    map_total (the followed map's sum), unit (its strongest unit), p_true (probability of
    the correct class), top_class int32 and top_prob (the most probable class)."""

    map_total: jax.Array
    unit: jax.Array
    p_true: jax.Array
    top_class: jax.Array
    top_prob: jax.Array


class OcclusionMaps(NamedTuple):
    """``occlusion_maps`` of one image: the five ``Readouts`` fields, each (P, P) over
    occluder positions (row: top, column: left; see ``positions``); clean: the Readouts
    of the unoccluded image (scalars); channel, y, x: the followed map and its strongest
    unit; label: the correct class (int32 scalars)."""

    map_total: jax.Array
    unit: jax.Array
    p_true: jax.Array
    top_class: jax.Array
    top_prob: jax.Array
    clean: Readouts
    channel: jax.Array
    y: jax.Array
    x: jax.Array
    label: jax.Array


class Projections(NamedTuple):
    """``map_projections``: projections (K, H, W, 3) in the network's input channel order,
    and the projected unit's y, x and value, each (K,)."""

    projections: jax.Array
    y: jax.Array
    x: jax.Array
    value: jax.Array


def positions(image_size: int, size: int, stride: int) -> np.ndarray:
    """Top (or left) pixel of every occluder position along one axis: int32 (P,).

    At 224 px with a 32 px square and stride 8: 25 positions (625 in 2-D).
    """
    if not 1 <= size <= image_size or stride < 1:
        raise ValueError(f"occluder size must be 1..{image_size} and stride >= 1; got size "
                         f"{size}, stride {stride}")
    return np.arange(0, image_size - size + 1, stride, dtype=np.int32)


def occlude(image: jax.Array, fill: jax.Array, top, left, size: int) -> jax.Array:
    """image (H, W, 3) with the size x size square at (top, left) replaced by ``fill``.

    fill: scalar or (H, W, 3) network-input values (0 = the mean image).
    """
    rows = jnp.arange(image.shape[0])
    cols = jnp.arange(image.shape[1])
    inside = (((rows >= top) & (rows < top + size))[:, None]
              & ((cols >= left) & (cols < left + size))[None, :])
    return jnp.where(inside[:, :, None], fill, image)


def _scores(logits, acts, y, x, label):
    """The readouts of one image from its logits (classes,) and followed map (h, w)."""
    probs = jax.nn.softmax(logits)
    return Readouts(acts.sum(), acts[y, x], probs[label], jnp.argmax(probs).astype(jnp.int32),
                    probs.max())


# ---- incremental forward: recompute only what the square can change ------------------
#
# An occluder changes a size x size square of the input. Each stage (conv or pool)
# then changes at most a window of its output whose side only depends on the
# square's size; everything else equals the unoccluded pass. So per position only
# those windows are recomputed (from the unoccluded maps with the changed window of
# the stage below laid over them), up to pool5; fc6..fc8 run on the whole pool5 map.
# At 224 px with a 32 px square the windows are 19/110 (conv1), 8/26 (conv2), 7, 9
# and 11/13 (conv3..conv5) wide: 0.31 of the whole forward's multiply-adds.


def _window_sides(config: network.Network, size: int) -> list[int]:
    """Side of the changed output window of every spatial op (network.spatial_ops order)."""
    sides, m = [], size
    for op in network.spatial_ops(config):
        m = min(op.output_size, (m + op.kernel - 2) // op.stride + 1)
        sides.append(m)
    return sides


def _overlay(window, start, patch, at):
    """A map's window (n, n, C) starting at ``start`` (2,), with ``patch`` (m, m, C),
    placed at map position ``at`` (2,), laid over it where they overlap."""
    n, m = window.shape[0], patch.shape[0]
    iy, ix = (start[i] + jnp.arange(n) - at[i] for i in (0, 1))
    inside = (((iy >= 0) & (iy < m))[:, None] & ((ix >= 0) & (ix < m))[None, :])
    taken = patch[jnp.clip(iy, 0, m - 1)][:, jnp.clip(ix, 0, m - 1)]
    return jnp.where(inside[..., None], taken, window)


def _after_map(config, params, op, x):
    """What follows an op's recorded (h, w, C) map before the next op reads it (its LRN,
    if any): the rest of its segment, run by the interpreter."""
    if op.map_end == op.end:
        return x
    return model.apply_stages(config, params, x[None], op.map_end, op.end, record=False)[0][0]


def _incremental_readout(config, params, image, fill, clean, top, left, *, size, layer, channel,
                         y, x, label):
    """The readouts of the image occluded at (top, left), recomputing only changed windows.

    clean: layer -> the unoccluded (h, w, C) map (model.forward's activations of image).
    Every conv and pool of the network description, with the stages of its recorded map
    (batch norm, ReLU), is recomputed on the window the square can change
    (``model.apply_stages`` on the window); the stages after the last pool run on the
    whole map.
    """
    dtype = config.compute_dtype
    ops = network.spatial_ops(config)
    at = jnp.stack([top, left])
    patch = lax.dynamic_slice(fill, (top, left, 0), (size, size, fill.shape[-1]))
    below, followed = image, None
    for op, n_out in zip(ops, _window_sides(config, size)):
        k, s, p = op.kernel, op.stride, op.padding
        # First output window position that reads the changed window, kept inside the map.
        first = -(-(at + p - k + 1) // s)
        out_at = jnp.clip(first, 0, op.output_size - n_out)
        n_in, in_at = (n_out - 1) * s + k, out_at * s - p
        pad = 0.0 if op.kind == "conv" else -jnp.inf  # conv zero padding; pool -inf padding
        padded = jnp.pad(below, ((k, k), (k, k), (0, 0)), constant_values=pad)
        window = lax.dynamic_slice(padded, (in_at[0] + k, in_at[1] + k, 0),
                                   (n_in, n_in, below.shape[-1]))
        window = _overlay(window, in_at, patch, at)[None].astype(dtype)
        out = model.apply_stages(config, params, window, op.index, op.map_end, record=False,
                                 window=True)[0][0]
        if op.name == layer:
            followed = _overlay(clean[op.name], jnp.zeros(2, jnp.int32), out, out_at)
        at = out_at
        below, patch = (_after_map(config, params, op, clean[op.name]),
                        _after_map(config, params, op, out))
    top_map = _overlay(below, jnp.zeros(2, jnp.int32), patch, at)
    logits, _, _ = model.apply_stages(config, params, top_map[None], ops[-1].end, record=False)
    return _scores(logits[0].astype(jnp.float32), followed[..., channel].astype(jnp.float32),
                   y, x, label)


@partial(jax.jit, static_argnames=("config", "layer", "size", "stride", "batch_size",
                                   "incremental"))
def occlusion_maps(config: network.Network, params, image, label, fill, *, layer: str, size: int,
                   stride: int, batch_size: int, incremental: bool = True) -> OcclusionMaps:
    """Slide a size x size square over one image (H, W, 3) with the given stride.

    label: int, the correct class (negative: use the class predicted on the
    unoccluded image). fill: (H, W, 3) network-input values under the square.
    The feature map followed is the layer's strongest on the unoccluded image
    (largest single activation), with its strongest unit at (y, x).
    incremental: recompute only the windows the square can change (same results;
    False runs the whole network on every occluded copy).

    Returns ``OcclusionMaps``.
    """
    clean_logits, aux = model.forward(config, params, image[None])
    clean = {name: a[0] for name, a in aux["activations"].items()}
    acts = clean[layer]  # (h, w, C)
    _, channel, y, x = strongest.strongest_map(acts)
    label = jnp.where(label < 0, jnp.argmax(clean_logits[0]), label).astype(jnp.int32)
    fill = jnp.broadcast_to(fill, image.shape).astype(image.dtype)

    def one(top_left):
        top, left = top_left
        if incremental:
            return _incremental_readout(config, params, image, fill, clean, top, left, size=size,
                                        layer=layer, channel=channel, y=y, x=x, label=label)
        logits, aux = model.forward(config, params, occlude(image, fill, top, left, size)[None])
        return _scores(logits[0], aux["activations"][layer][0, ..., channel].astype(jnp.float32),
                       y, x, label)

    steps = positions(config.image_size, size, stride)
    tops, lefts = (a.ravel() for a in jnp.meshgrid(steps, steps, indexing="ij"))
    out = jax.lax.map(one, (tops, lefts), batch_size=batch_size)
    p = len(steps)
    clean_readouts = _scores(clean_logits[0], acts[..., channel].astype(jnp.float32), y, x, label)
    return OcclusionMaps(*(value.reshape(p, p) for value in out), clean=clean_readouts,
                         channel=channel, y=y.astype(jnp.int32), x=x.astype(jnp.int32), label=label)


@partial(jax.jit, static_argnames=("config", "layer"))
def map_projections(config: network.Network, params, images, channel, *,
                    layer: str) -> Projections:
    """Project the strongest activation of feature map ``channel`` in each image (K, H, W, 3):
    paper Fig. 7 column (c)."""
    _, aux = model.forward(config, params, images)
    k = images.shape[0]
    channels = jnp.full((k,), channel, jnp.int32)
    value, ys, xs = deconv.strongest(aux, layer, channel[None])  # (K, 1) each
    units = deconv.Units(jnp.arange(k, dtype=jnp.int32), channels, ys[:, 0], xs[:, 0])
    return Projections(deconv.project_units(config, params, aux, layer, units), ys[:, 0],
                       xs[:, 0], value[:, 0])


def fill_values(fill: str, preprocess, size: int) -> np.ndarray:
    """Network-input values under the occluder for --fill.

    preprocess: the model's ``preprocessing.Preprocessing``; size: the input side.
    'gray': the mean (0 after mean subtraction, the paper's gray square);
    'black', 'white' or a number 0..255: that pixel value, preprocessed. Returns
    float32 (H, W, 3), the same shape for every fill (one compilation serves all).
    """
    named = {"black": 0.0, "white": 255.0}
    if fill == "gray":
        return np.zeros((size, size, 3), np.float32)
    try:
        value = named[fill] if fill in named else float(fill)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= 255:
        raise ValueError(f"--fill must be gray, black, white or a pixel value 0..255; got {fill!r}")
    return preprocess(np.full((1, size, size, 3), value, np.float32), size)[0]


def chosen_occluders(result: Readouts | OcclusionMaps,
                     steps: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The occluder positions whose projections column (c) shows: names, int (4, 2) (top, left).

    Unoccluded (-1, -1); where the map's total activation, p(correct class) and the
    strongest unit drop the most.
    """
    names, picks = ["unoccluded"], [(-1, -1)]
    for key, name in (("map_total", "map total lowest"), ("p_true", "p(class) lowest"),
                      ("unit", "unit lowest")):
        readout = getattr(result, key)
        i, j = np.unravel_index(np.argmin(readout), readout.shape)
        names.append(name)
        picks.append((steps[i], steps[j]))
    return names, np.array(picks, np.int32)


def projections_for(config, params, image, fill, channel, picks, size: int, layer: str):
    """Column (c): the map's top projection for the unoccluded image and occluded copies.

    picks int (K, 2) occluder (top, left), (-1, -1) meaning none. Returns float32 (K, H, W, 3)
    in the network's input channel order.
    """
    copies = np.repeat(np.asarray(image, np.float32)[None], len(picks), axis=0)
    fill = np.broadcast_to(fill, image.shape)
    for copy, (t, l) in zip(copies, picks):
        if t >= 0:
            copy[t:t + size, l:l + size] = fill[t:t + size, l:l + size]
    projected = map_projections(config, params, copies, jnp.int32(channel), layer=layer)
    return np.asarray(projected.projections, np.float32)
