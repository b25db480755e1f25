"""Activation maximisation: the input image that most excites a unit.

Not in Zeiler & Fergus (2014), who visualise with the deconvnet instead; this
is the complementary, gradient-based view (Erhan et al. 2009, Simonyan et al.
2014, with the regularisers of Mahendran & Vedaldi 2015). Starting from small
noise, gradient ascent (``optax.adam``) on the input maximises

    objective(x) = unit(x) - lp_weight * mean(|x|^p) - tv_weight * TV(x)

where unit(x) is a conv feature map's mean activation (over positions), an
fc6/fc7 unit, or a class logit (``fc8``, before the softmax), and TV(x) is the
squared total variation mean (x[i+1, j] - x[i, j])^2 + mean (x[i, j+1] - x[i, j])^2
(Mahendran & Vedaldi's V^beta with beta = 2: it favours smooth images, where
beta = 1 gives piecewise-flat blobs). The weights are in units of the response:
the defaults suit class logits of a trained net; a conv map's mean activation
is often 10-100x smaller and wants weights that much smaller.
After each step the image is clipped to ``[lower, upper]`` (by default the
range of valid pixels: (0 - mean) / 255 .. (255 - mean) / 255), so it can be
shown as a photo. All units of one layer are optimised at once (vmap), each
from its own noise; the steps run in one ``lax.scan``.
The figure is ``zfjax.figures.maximize``, the command ``zfjax.commands.maximize``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from zfjax import model


class Ascent(NamedTuple):
    """``maximize`` of K units: images float32 (K, H, W, 3) network inputs; objective
    float32 (K, steps) the regularised objective before each step; value float32 (K,
    steps) the unit's response before each step; final_value float32 (K,) the response
    of the returned image."""

    images: jax.Array
    objective: jax.Array
    value: jax.Array
    final_value: jax.Array


def layers(config: model.Network) -> tuple[str, ...]:
    """Layers whose units can be maximised: conv/pool maps, hidden dense layers, the logits."""
    return model.projectable_layers(config) + model.dense_layers(config)


def num_units(config: model.Network, layer: str) -> int:
    """Channels (conv/pool), units (fc6/fc7) or classes (fc8) of a layer."""
    if layer not in layers(config):
        raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(layers(config))}")
    return model.num_channels(config, layer)


def check_units(config: model.Network, layer: str, units) -> None:
    """Raise ValueError for an unknown layer or a unit index out of its range."""
    n = num_units(config, layer)
    for u in np.atleast_1d(units):
        if not 0 <= int(u) < n:
            raise ValueError(f"unit {int(u)} is out of range for {layer}: expected 0..{n - 1}")


def unit_value(config: model.Network, params, image: jax.Array, unit, *, layer: str):
    """One unit's response to one image (H, W, 3): a scalar (see module docstring)."""
    logits, aux = model.forward(config, params, image[None])
    if layer == model.dense_layers(config)[-1]:
        return logits[0, unit]
    acts = aux["activations"][layer][0].astype(jnp.float32)
    if acts.ndim == 1:  # a dense layer
        return acts[unit]
    return jnp.mean(acts[..., unit])


def total_variation(x: jax.Array) -> jax.Array:
    """Squared TV of images (..., H, W, C): mean squared vertical + horizontal differences."""
    return (jnp.mean(jnp.square(jnp.diff(x, axis=-3)), axis=(-3, -2, -1))
            + jnp.mean(jnp.square(jnp.diff(x, axis=-2)), axis=(-3, -2, -1)))


def lp_penalty(x: jax.Array, p: float) -> jax.Array:
    """mean(|x|^p) over each image (..., H, W, C)."""
    return jnp.mean(jnp.abs(x) ** p, axis=(-3, -2, -1))


@partial(jax.jit, static_argnames=("layer", "config", "steps"))
def maximize(config: model.Network, params, units: jax.Array, key: jax.Array, *, layer: str,
             steps: int = 200, learning_rate: float = 0.01,
             lp_weight: float = 1.0, p: float = 2.0, tv_weight: float = 300.0,
             init_std: float = 0.1, lower=None, upper=None) -> Ascent:
    """Gradient ascent on the input for K units of one layer at once.

    units: int (K,); lower/upper: bounds broadcastable to (H, W, 3), or None.
    The start is Gaussian noise of std ``init_std`` (0.1: about the contrast of
    photos), one draw per unit from ``key``. A unit that is 0 (after its ReLU)
    for that start has no gradient and stays there. Returns an ``Ascent``.
    """
    size = config.image_size
    optimizer = optax.adam(learning_rate)
    value_fn = partial(unit_value, config, params, layer=layer)

    def objective(x, unit):
        value = value_fn(x, unit)
        return value - lp_weight * lp_penalty(x, p) - tv_weight * total_variation(x), value

    def one(unit, key):
        x = init_std * jax.random.normal(key, (size, size, 3), jnp.float32)
        grad_fn = jax.value_and_grad(lambda x: objective(x, unit), has_aux=True)

        def step(carry, _):
            x, state = carry
            (obj, value), grad = grad_fn(x)
            update, state = optimizer.update(-grad, state, x)  # ascent: minimise -objective
            x = optax.apply_updates(x, update)
            if lower is not None:
                x = jnp.maximum(x, lower)
            if upper is not None:
                x = jnp.minimum(x, upper)
            return (x, state), (obj, value)

        (x, _), (obj, value) = lax.scan(step, (x, optimizer.init(x)), None, length=steps)
        return x, obj, value, value_fn(x, unit)

    units = jnp.asarray(units, jnp.int32)
    keys = jax.random.split(key, len(units))
    images, obj, value, final = jax.vmap(one)(units, keys)
    return Ascent(images, obj, value, final)
