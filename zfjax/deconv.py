"""The deconvnet reverse pass (Zeiler & Fergus 2014, section 2.1).

A signal placed on one layer's map is sent down to pixels, one stage at a
time, by the inverse of each forward stage:

* max-pool     -> unpool: scatter-add to the recorded switch positions;
* relu + conv  -> rectify the signal with ReLU, then filter it with the same
  filters transposed (``lax.conv_transpose(..., transpose_kernel=True)``).

Contrast normalisation is *not* inverted: the reverse pass treats it as the
identity, as the paper does. Biases are not used. Overlapping pooling windows
that share an argmax add their values (exact adjoint of max selection); ties
inside a window were resolved to the first position in row-major order by the
forward pass (see ``model.max_pool_with_switches``).

Two ways to run it, with identical results:

* ``project(params, aux, layer, signal, config)``: dense; any signal shaped
  like the layer's map (one unit, one map, the whole layer).
* ``project_units(params, aux, layer, units, config)``: many single units at
  once; each unit's reverse pass only touches the window of its receptive
  field, which is about 2.7x less work than dense for conv5 at 224 px.

Both are pure, jit-compiled and vmappable; ``aux`` is the record returned by
``model.forward``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfjax import model
from zfjax.model import Stage, ZFNetConfig, grow, stages_below

_DIMS = ("NHWC", "HWIO", "NHWC")


def reverse_stage(stage: Stage, signal: jax.Array, params: dict, switches: jax.Array | None):
    """Invert one stage on an NHWC window, onto every input position it touches.

    signal (N, w, w, C_out) -> (N, (w-1)*stride + kernel, ..., C_in); the result's
    first row/column is input position ``offset * stride - padding``.
    """
    if stage.kind == "pool":
        return model.unpool_full(signal, switches)
    kernel = params[stage.name]["kernel"].astype(signal.dtype)
    k = stage.kernel
    return lax.conv_transpose(
        jax.nn.relu(signal), kernel, (stage.stride, stage.stride),
        padding=((k - 1, k - 1), (k - 1, k - 1)), dimension_numbers=_DIMS,
        transpose_kernel=True,
    )


def check_layer_signal(aux: dict, layer: str, signal_shape) -> None:
    """Raise ValueError unless ``signal_shape`` matches the layer's recorded map."""
    if layer not in model.PROJECTABLE_LAYERS:
        raise model.unknown_layer(layer)
    want = tuple(aux["activations"][layer].shape)
    if tuple(signal_shape) != want:
        raise ValueError(f"signal for {layer} must have the shape of its map {want} (NHWC); "
                         f"got {tuple(signal_shape)}")


@partial(jax.jit, static_argnames=("layer", "config"))
def _project_dense(params, aux, signal, layer, config):
    x = signal
    for stage in stages_below(config, layer):
        x = reverse_stage(stage, x, params, aux["switches"].get(stage.name))
        start = stage.padding  # full-grown output starts at input position -padding
        n = stage.input_size
        x = x[:, start : start + n, start : start + n]
    return x


def project(params: dict, aux: dict, layer: str, signal: jax.Array, config: ZFNetConfig) -> jax.Array:
    """Project a signal on ``layer``'s map down to pixels.

    signal: (N, h, w, C), shaped like ``aux['activations'][layer]``; zero
    everywhere except the activations to visualise. Returns (N, H, W, 3) in
    the signal's dtype. Layers: conv1..conv5 (rectified maps) and
    pool1/pool2/pool5 (pooled maps).
    """
    check_layer_signal(aux, layer, signal.shape)
    return _project_dense(params, aux, signal, layer, config)


# ---- selections of the paper's modes -----------------------------------------------


def feature_map_signal(aux: dict, layer: str, channel) -> jax.Array:
    """The layer's activations with every channel but ``channel`` zeroed: (N, h, w, C)."""
    acts = _layer_activations(aux, layer)
    _check_channels(channel, acts.shape[-1], layer)
    return jnp.where(jnp.arange(acts.shape[-1]) == channel, acts, 0)


def unit_signal(aux: dict, layer: str, channel, y, x) -> jax.Array:
    """Only the activation at (channel, y, x) kept, per image: (N, h, w, C)."""
    acts = _layer_activations(aux, layer)
    _check_units(layer, acts.shape, channel, y, x)
    n, h, w, c = acts.shape
    keep = ((jnp.arange(h)[:, None, None] == y) & (jnp.arange(w)[None, :, None] == x)
            & (jnp.arange(c) == channel))
    return jnp.where(keep, acts, 0)


def strongest(aux: dict, layer: str, channels) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Where each image's given feature maps are strongest.

    channels: int (K,). Returns (value, y, x), each (N, K). Ties go to the
    first position in row-major order.
    """
    acts = _layer_activations(aux, layer)
    _check_channels(channels, acts.shape[-1], layer)
    n, h, w, c = acts.shape
    maps = acts[..., jnp.asarray(channels)].reshape(n, h * w, -1)
    idx = jnp.argmax(maps, axis=1)
    value = jnp.take_along_axis(maps, idx[:, None], axis=1)[:, 0]
    return value, idx // w, idx % w


class Units(NamedTuple):
    """A batch of single activations: image index, channel, y, x; each int (K,)."""

    image: jax.Array
    channel: jax.Array
    y: jax.Array
    x: jax.Array


def strongest_units(aux: dict, layer: str, channels, image: int = 0) -> Units:
    """The strongest activation of each given feature map of one image (paper's mode)."""
    channels = jnp.atleast_1d(jnp.asarray(channels, jnp.int32))
    one_image = {"activations": {layer: _layer_activations(aux, layer)[image : image + 1]}}
    _, ys, xs = strongest(one_image, layer, channels)
    return Units(jnp.full(channels.shape, image, jnp.int32), channels, ys[0], xs[0])


def project_units(params: dict, aux: dict, layer: str, units: Units, config: ZFNetConfig) -> jax.Array:
    """Project K single activations, each alone, down to pixels: (K, H, W, 3).

    Each unit keeps its recorded activation value; everything else on its layer
    is zero. Equal to ``project`` of ``unit_signal`` for that unit, but each
    reverse pass only computes inside the unit's receptive field window.
    """
    acts = _layer_activations(aux, layer)
    units = Units(*(jnp.atleast_1d(jnp.asarray(u, jnp.int32)) for u in units))
    _check_units(layer, acts.shape, units.channel, units.y, units.x, units.image)
    return _project_units(params, aux, units, layer, config)


@partial(jax.jit, static_argnames=("layer", "config"))
def _project_units(params, aux, units, layer, config):
    below = stages_below(config, layer)
    # Static window side at each stage's output, top first. A window that would
    # outgrow the map below becomes the whole map (offset 0) from there on.
    sizes, size = [], 1
    for stage in below:
        sizes.append(size)
        size, _ = grow(stage, size, 0)
        size = size if size < stage.input_size else stage.input_size
    # Pad each switch map by its window so every dynamic slice stays in bounds.
    padded = {
        stage.name: jnp.pad(aux["switches"][stage.name], ((0, 0), (w, w), (w, w), (0, 0)))
        for stage, w in zip(below, sizes) if stage.kind == "pool"
    }
    acts = aux["activations"][layer]

    def one(unit):
        c = acts.shape[-1]
        value = acts[unit.image, unit.y, unit.x, unit.channel]
        x = jnp.where(jnp.arange(c) == unit.channel, value, 0).reshape(c)[None, None, None]
        offset = jnp.stack([unit.y, unit.x])
        for stage, w in zip(below, sizes):
            switches = None
            if stage.kind == "pool":
                full = padded[stage.name]
                switches = lax.dynamic_slice(
                    full, (unit.image, offset[0] + w, offset[1] + w, 0), (1, w, w, full.shape[-1]))
            x = reverse_stage(stage, x, params, switches)
            grown, offset = grow(stage, w, offset)
            if grown < stage.input_size and stage is not below[-1]:
                # Zero what falls outside the map (forward padding positions).
                pos = offset[:, None] + jnp.arange(grown)
                inside = (pos >= 0) & (pos < stage.input_size)
                x = x * (inside[0][:, None] & inside[1][None, :])[None, :, :, None]
            else:  # onto the whole map (last stage: the image); the rest is cut off
                x = _paste(x[0], offset, stage.input_size)[None]
                offset = jnp.zeros_like(offset)
        return x[0]

    return jax.vmap(one)(units)


def _paste(window: jax.Array, offset: jax.Array, size: int) -> jax.Array:
    """Place a (w, w, C) window at a (possibly negative) offset on a zero (size, size, C) canvas."""
    w = window.shape[0]
    canvas = jnp.zeros((size + 2 * w, size + 2 * w, window.shape[-1]), window.dtype)
    canvas = lax.dynamic_update_slice(canvas, window, (offset[0] + w, offset[1] + w, 0))
    return canvas[w : w + size, w : w + size]


# ---- argument checks (skipped for traced values) -----------------------------------


def _layer_activations(aux: dict, layer: str) -> jax.Array:
    if layer not in model.PROJECTABLE_LAYERS:
        raise model.unknown_layer(layer)
    return aux["activations"][layer]


def _concrete(v):
    """v as a numpy array, or None when it is traced (checks then happen nowhere)."""
    if isinstance(v, jax.core.Tracer):
        return None
    return np.asarray(v)


def _check_range(what: str, v, limit: int, layer: str) -> None:
    arr = _concrete(v)
    if arr is not None and arr.size and (arr.min() < 0 or arr.max() >= limit):
        bad = arr[(arr < 0) | (arr >= limit)].ravel()[0]
        raise ValueError(f"{what} {int(bad)} is out of range for {layer}: expected 0..{limit - 1}")


def _check_channels(channel, num: int, layer: str) -> None:
    _check_range("channel", channel, num, layer)


def _check_units(layer, shape, channel, y, x, image=None) -> None:
    n, h, w, c = shape
    _check_channels(channel, c, layer)
    _check_range("y", y, h, layer)
    _check_range("x", x, w, layer)
    if image is not None:
        _check_range("image index", image, n, layer)

