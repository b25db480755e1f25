"""The one search for strongest activations: per image, and a running top-k over images.

Every analysis that looks for a feature map's strongest activation uses these:
``deconv.strongest`` (per image), ``mine`` (top 9 over a split, paper Fig. 2: ``topk``,
``convergence``),
``strongest_over`` (followed maps over a set: ``evolution``'s probe, Fig. 4, and
``filters``, Fig. 6), ``reconstructions`` and
``occlusion`` (the strongest map of one image, Fig. 7).

Ties go to the first position in row-major order within an image, and to the
earlier image across images (as ``jnp.argmax`` would).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zfjax.nets import model, network

TOP = 9  # activations kept per feature map by default (the paper's 3x3 grids, Fig. 2)


class TopK(NamedTuple):
    """The k strongest activations of each feature map, strongest first.

    Each field is (C, k): value float32, image int32 (index into the streamed
    set), y and x int32 (position on the layer's map). Slots not filled (fewer
    than k images seen) hold value -inf and image -1.
    """

    value: jax.Array
    image: jax.Array
    y: jax.Array
    x: jax.Array


def empty_top(channels: int, k: int) -> TopK:
    """A TopK with every slot unfilled: (C, k) fields."""
    fill = lambda v: jnp.full((channels, k), v, jnp.int32)
    return TopK(jnp.full((channels, k), -jnp.inf, jnp.float32), fill(-1), fill(0), fill(0))


def _first(mask: jax.Array, axis: int) -> jax.Array:
    """Index of the first True along ``axis`` (int32; the axis length where there is none)."""
    n = mask.shape[axis]
    index = jnp.arange(n, dtype=jnp.int32).reshape((n,) + (1,) * (mask.ndim - axis - 1))
    return jnp.min(jnp.where(mask, index, n), axis=axis)


def per_image(acts: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each image's strongest activation of each map: acts (B, h, w, C) ->
    (value float32, y int32, x int32), each (B, C); the first position on ties.

    Found with max- and min-reduces: XLA:CPU's argmax is 15x slower than max on conv1.
    """
    acts = acts.astype(jnp.float32)
    row_max = acts.max(axis=2)  # (B, h, C)
    value = row_max.max(axis=1)  # (B, C)
    y = _first(row_max == value[:, None], axis=1)
    row = jnp.take_along_axis(acts, y[:, None, None, :], axis=1)[:, 0]  # (B, w, C)
    x = _first(row == value[:, None], axis=1)
    return value, y, x


def strongest_map(acts: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One image's strongest activation over all maps: acts (h, w, C) -> (value, channel,
    y, x) scalars; the lowest channel on ties, then the first position."""
    value, y, x = (a[0] for a in per_image(acts[None]))
    channel = jnp.argmax(value).astype(jnp.int32)
    return value[channel], channel, y[channel], x[channel]


def merge(best: TopK, acts: jax.Array, first, count) -> TopK:
    """Fold a batch of one layer's activations (B, h, w, C) into the running top-k.

    Each image's map is reduced to its single maximum (one activation per image
    per map, as the paper does), then ``lax.top_k`` runs over [running k, B
    candidates] per map. ``first``: set index of acts[0]; only the first
    ``count`` images are real (the rest pad the last batch). Ties keep the
    earlier image (top_k keeps the lower index first, and running slots come first).
    """
    b, _, _, c = acts.shape
    value, y, x = per_image(acts)
    value = jnp.where(jnp.arange(b)[:, None] < count, value, -jnp.inf)
    image = jnp.broadcast_to(first + jnp.arange(b, dtype=jnp.int32)[:, None], (b, c))
    candidates = TopK(value, image, y, x)
    joined = [jnp.concatenate([old, new.T], axis=1) for old, new in zip(best, candidates)]
    top_value, pick = jax.lax.top_k(joined[0], best.value.shape[1])
    return TopK(top_value, *(jnp.take_along_axis(a, pick, axis=1) for a in joined[1:]))


@partial(jax.jit, static_argnames=("layers", "config"))
def _mine_batch(config, params, best, images, first, count, layers):
    _, aux = model.forward(config, params, images)  # logits unused: XLA drops what is above
    return {layer: merge(best[layer], aux["activations"][layer], first, count)
            for layer in layers}


def mine(config: network.Network, params, batches, layers=None, *,
         k: int = TOP) -> dict[str, TopK]:
    """Stream batches of network inputs and keep each feature map's k strongest activations.

    batches: iterable of float32 (B_i, H, W, 3) arrays, in set order; every batch
    is padded to the first one's size, so one compilation serves all. The running
    top-k never leaves the device until the end. Returns layer -> TopK (numpy).
    """
    layers = network.check_layers(config, network.conv_layers(config) if layers is None else layers)
    best = {layer: empty_top(network.num_channels(config, layer), k) for layer in layers}
    for batch, first, count in padded(batches):
        best = _mine_batch(config, params, best, batch, first, count, layers)
    return {layer: TopK(*(np.asarray(a) for a in top)) for layer, top in jax.device_get(best).items()}


def padded(batches):
    """Batches of a stream, each padded to the first one's size so one compilation serves
    all: yields (float32 (B, ...) batch, first: int32 set index of batch[0], count: int32
    real images in it). Raises ValueError when a batch but the last is smaller."""
    first, size = 0, None
    for batch in batches:
        batch = np.asarray(batch, np.float32)
        count = len(batch)
        size = size or count
        if count > size:
            raise ValueError(f"batch of {count} images after batches of {size}; only the "
                             f"last batch may be smaller")
        if count < size:
            batch = np.concatenate([batch, np.zeros((size - count,) + batch.shape[1:], batch.dtype)])
        yield batch, np.int32(first), np.int32(count)
        first += count


@partial(jax.jit, static_argnames="config")
def _update_running_max(config, params, best, images, first, count, maps):
    """Fold one batch into the running max of every followed map.

    best: layer -> (value f32, image, y, x), each (K,); images (B, H, W, 3) of which the
    first ``count`` are real (the rest pad the last batch); ``first``: set index of
    images[0]. Ties keep the earlier (image, y, x) in row-major order, as argmax does.
    """
    _, aux = model.forward(config, params, images)  # logits unused: XLA drops fc6..fc8
    out = {}
    for layer, channels in maps.items():
        running = TopK(*(a[:, None] for a in best[layer]))  # k = 1
        acts = aux["activations"][layer][..., channels]
        out[layer] = tuple(a[:, 0] for a in merge(running, acts, first, count))
    return out


def strongest_over(config: network.Network, params, inputs: np.ndarray, maps: dict, *,
                   batch_size: int = 128) -> dict[str, tuple[np.ndarray, ...]]:
    """Each given map's strongest activation over a set of network inputs (N, H, W, 3).

    maps: layer -> int (K,) channels. Streams the set through the network in batches
    (the last one padded, so one compilation serves all), keeping only a running max
    on the device. Returns layer -> (value float32, image int32, y int32, x int32), each (K,).
    """
    maps = {layer: jnp.asarray(c, jnp.int32) for layer, c in maps.items()}
    best = {layer: (jnp.full(c.shape, -jnp.inf, jnp.float32),) + (jnp.zeros(c.shape, jnp.int32),) * 3
            for layer, c in maps.items()}
    slices = (inputs[start:start + batch_size] for start in range(0, len(inputs), batch_size))
    for batch, first, count in padded(slices):
        best = _update_running_max(config, params, best, batch, first, count, maps)
    return jax.device_get(best)
