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
"""

from __future__ import annotations

import argparse
import pathlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from zfjax import argtypes, artifacts, cli, model, render

UNITS = 8  # units shown by default


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
             init_std: float = 0.1, lower=None, upper=None) -> dict:
    """Gradient ascent on the input for K units of one layer at once.

    units: int (K,); lower/upper: bounds broadcastable to (H, W, 3), or None.
    The start is Gaussian noise of std ``init_std`` (0.1: about the contrast of
    photos), one draw per unit from ``key``. A unit that is 0 (after its ReLU)
    for that start has no gradient and stays there.
    Returns {'images' float32 (K, H, W, 3) network inputs,
    'objective' float32 (K, steps) regularised objective before each step,
    'value' float32 (K, steps) the unit's response before each step,
    'final_value' float32 (K,) the response of the returned image}.
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
    return {"images": images, "objective": obj, "value": value, "final_value": final}


# ---- the figure --------------------------------------------------------------------


def plot_maximize(pictures: np.ndarray, labels, values: np.ndarray, *, title: str | None = None,
                  columns: int = 4):
    """Grid of the optimised images (uint8 (K, H, W, 3)) titled with their labels and
    final responses, and the response of each unit over the steps. Returns a Figure."""
    from matplotlib.figure import Figure

    k = len(pictures)
    columns = min(columns, k)
    rows = -(-k // columns)
    fig = Figure(figsize=(2.6 * columns, 2.8 * rows + 2.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.8 * rows, 2.4])
    axes = np.atleast_1d(top.subplots(rows, columns)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < k:
            ax.imshow(pictures[i], interpolation="nearest")
            stuck = " (inactive: no gradient)" if not np.any(values[i]) else ""
            ax.set_title(f"{labels[i]}\nresponse {values[i, -1]:.3g}{stuck}", fontsize=8)
    ax = bottom.subplots()
    for i in range(k):
        ax.plot(values[i], color=f"C{i % 10}", label=labels[i], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("unit response")
    ax.set_title("response during gradient ascent", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=max(1, k // 10), loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ---- command line ------------------------------------------------------------------


def add_cli(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "maximize", help="activation maximisation: images that most excite chosen units")
    cli.add_model_arguments(parser)
    parser.add_argument("--layer", default="fc8",
                        help="layer of the units (default fc8, the class logits; any conv or "
                             "pool map, fc6, fc7)")
    parser.add_argument("--units", type=argtypes.nonnegative_int, nargs="+", default=None, metavar="INDEX",
                        help=f"channels (conv/pool), units (fc6/fc7) or classes (fc8) "
                             f"(default the first {UNITS})")
    parser.add_argument("--steps", type=argtypes.positive_int, default=200, help="ascent steps (default 200)")
    parser.add_argument("--lr", type=argtypes.positive_float, default=0.01, help="Adam learning rate (default 0.01)")
    parser.add_argument("--lp-weight", type=argtypes.nonnegative_float, default=1.0,
                        help="weight of the mean(|x|^p) penalty (default 1)")
    parser.add_argument("--p", type=argtypes.positive_float, default=2.0, help="p of the Lp penalty (default 2)")
    parser.add_argument("--tv-weight", type=argtypes.nonnegative_float, default=300.0,
                        help="weight of the squared total-variation penalty (default 300, for "
                             "class logits; try 10x-100x less for conv maps)")
    parser.add_argument("--init-std", type=argtypes.nonnegative_float, default=0.1,
                        help="std of the starting noise, in network-input units (default 0.1)")
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the starting noise")
    parser.set_defaults(run=run_cli)
    return parser


def run_cli(args) -> list[pathlib.Path]:
    loaded = cli.load_model(args)
    params, config, info = loaded.params, loaded.config, loaded.info
    num_units(config, args.layer)  # raises for an unknown layer
    units = np.asarray(args.units if args.units is not None else
                       range(min(UNITS, num_units(config, args.layer))), np.int32)
    check_units(config, args.layer, units)
    lower, upper = loaded.preprocessing.pixel_bounds(config.image_size)
    result = jax.device_get(maximize(config, params, units, jax.random.key(args.seed),
                                     layer=args.layer, steps=args.steps, learning_rate=args.lr,
                                     lp_weight=args.lp_weight, p=args.p,
                                     tv_weight=args.tv_weight, init_std=args.init_std,
                                     lower=lower, upper=upper))
    pictures = loaded.preprocessing.to_pixels(result["images"])
    classes = render.class_labels(loaded.class_names) or []
    logits = model.dense_layers(config)[-1]
    labels = [f"{args.layer} #{u}" + (f" {classes[u]}" if args.layer == logits and u < len(classes)
                                      else "") for u in units]
    values = np.concatenate([result["value"], result["final_value"][:, None]], axis=1)
    fig = plot_maximize(pictures, labels, values, title=(
        f"Activation maximisation, {cli.run_label(args.target, info)}: {args.steps} Adam steps "
        f"(lr {args.lr:g}), L{args.p:g} weight {args.lp_weight:g}, TV weight {args.tv_weight:g}"))
    out = cli.output_folder(args, info)
    stem = f"maximize_{args.layer}"
    npz = artifacts.save_npz(out / f"{stem}.npz", units=units, layer=np.asarray(args.layer),
                             images=result["images"], pictures=pictures,
                             objective=result["objective"], value=values)
    png = artifacts.save_png(fig, out / f"{stem}.png")
    return [png, npz]
