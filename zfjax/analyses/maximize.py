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
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from zfjax.nets import model, network


class Ascent(NamedTuple):
    """``maximize`` of K units: images float32 (K, H, W, 3) network inputs; objective
    float32 (K, steps) the regularised objective before each step; value float32 (K,
    steps) the unit's response before each step; final_value float32 (K,) the response
    of the returned image."""

    images: jax.Array
    objective: jax.Array
    value: jax.Array
    final_value: jax.Array


def layers(config: network.Network) -> tuple[str, ...]:
    """Layers whose units can be maximised: conv/pool maps, hidden dense layers, the logits."""
    return network.projectable_layers(config) + network.dense_layers(config)


def num_units(config: network.Network, layer: str) -> int:
    """Channels (conv/pool), units (fc6/fc7) or classes (fc8) of a layer."""
    if layer not in layers(config):
        raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(layers(config))}")
    return network.num_channels(config, layer)


def check_units(config: network.Network, layer: str, units) -> None:
    """Raise ValueError for an unknown layer or a unit index out of its range."""
    n = num_units(config, layer)
    for u in np.atleast_1d(units):
        if not 0 <= int(u) < n:
            raise ValueError(f"unit {int(u)} is out of range for {layer}: expected 0..{n - 1}")


def step_flops(config: network.Network) -> float:
    """Rough FLOPs of one ascent step of one unit: forward and backward through the
    network, 3 x the forward's multiply-adds at 2 FLOPs each (e.g. VGG16 at 224: 93 G)."""
    sizes, shapes = network.layer_sizes(config), network.param_shapes(config)
    macs = sum((sizes[layer] ** 2 if len(shape["kernel"]) == 4 else 1) * int(np.prod(shape["kernel"]))
               for layer, shape in shapes.items() if "kernel" in shape)  # batch norms: ~0
    return 6.0 * macs


def work_within(config: network.Network, seconds: float, flops_per_second: float, *,
                units: int | None = None, max_units: int = 8, max_steps: int = 200,
                min_steps: int = 10) -> tuple[int, int]:
    """(units, steps) of an ascent that takes about ``seconds`` at ``flops_per_second``
    (step_flops), at most max_units x max_steps; ``units`` fixes the count of units.
    Units are added only while each keeps 4 x min_steps steps: a few pictures that
    converged beat many noisy ones."""
    budget = max(1, int(seconds * flops_per_second / step_flops(config)))  # unit-steps
    if units is None:
        units = min(max_units, max(1, budget // (4 * min_steps)))
    return units, max(min_steps, min(max_steps, budget // units))


def unit_value(config: network.Network, params, image: jax.Array, unit, *, layer: str):
    """One unit's response to one image (H, W, 3): a scalar (see module docstring)."""
    logits, aux = model.forward(config, params, image[None])
    if layer == network.dense_layers(config)[-1]:
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


def maximize(config: network.Network, params, units, key: jax.Array, *, layer: str,
             steps: int = 200, learning_rate: float = 0.01,
             lp_weight: float = 1.0, p: float = 2.0, tv_weight: float = 300.0,
             init_std: float = 0.1, lower=None, upper=None, chunk: int | None = None,
             on_steps: Callable[[int], None] | None = None) -> Ascent:
    """Gradient ascent on the input for K units of one layer at once.

    units: int (K,); lower/upper: bounds broadcastable to (H, W, 3), or None.
    The start is Gaussian noise of std ``init_std`` (0.1: about the contrast of
    photos), one draw per unit from ``key``. A unit that is 0 (after its ReLU)
    for that start has no gradient and stays there.
    chunk: steps per compiled call (default: all in one); on_steps(done) is called
    after each call with the steps done so far (progress). The result does not depend
    on chunk (Adam's state is carried over); a last shorter chunk compiles once more.
    Returns an ``Ascent``.
    """
    units = jnp.asarray(units, jnp.int32)
    x, state = _start(config, units, key, init_std=init_std)
    chunk = steps if chunk is None else max(1, min(chunk, steps))
    objectives, values, done = [], [], 0
    while done < steps:
        n = min(chunk, steps - done)
        x, state, obj, value, final = _ascend(
            config, params, units, x, state, layer=layer, steps=n, learning_rate=learning_rate,
            lp_weight=lp_weight, p=p, tv_weight=tv_weight, lower=lower, upper=upper)
        objectives.append(obj)
        values.append(value)
        done += n
        if on_steps is not None:
            on_steps(done)
    return Ascent(x, jnp.concatenate(objectives, axis=1), jnp.concatenate(values, axis=1), final)


@partial(jax.jit, static_argnames=("config",))
def _start(config: network.Network, units: jax.Array, key: jax.Array, *, init_std: float):
    """The K starting images (K, H, W, 3), one noise draw per unit, and Adam's state."""
    size = config.image_size
    keys = jax.random.split(key, len(units))
    x = jax.vmap(lambda k: init_std * jax.random.normal(k, (size, size, 3), jnp.float32))(keys)
    return x, jax.vmap(optax.adam(0.01).init)(x)  # Adam's state does not depend on its rate


@partial(jax.jit, static_argnames=("layer", "config", "steps"))
def _ascend(config: network.Network, params, units: jax.Array, x: jax.Array, state, *, layer: str,
            steps: int, learning_rate, lp_weight, p, tv_weight, lower, upper):
    """``steps`` ascent steps of each unit from images x (K, H, W, 3) and Adam states.

    Returns (images, states, objective (K, steps), value (K, steps), final value (K,))."""
    optimizer = optax.adam(learning_rate)
    value_fn = partial(unit_value, config, params, layer=layer)

    def objective(x, unit):
        value = value_fn(x, unit)
        return value - lp_weight * lp_penalty(x, p) - tv_weight * total_variation(x), value

    def one(unit, x, state):
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

        (x, state), (obj, value) = lax.scan(step, (x, state), None, length=steps)
        return x, state, obj, value, value_fn(x, unit)

    return jax.vmap(one)(units, x, state)
