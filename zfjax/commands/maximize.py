"""``visualize.py maximize``: activation maximisation (core ``zfjax.maximize``, figure
``zfjax.figures.maximize``)."""

from __future__ import annotations

import argparse
import pathlib

import jax
import numpy as np

from zfjax import argtypes, artifacts, cli, maximize, model, render
from zfjax.figures.maximize import plot_maximize

UNITS = 8  # units shown by default


def add_cli(subparsers) -> argparse.ArgumentParser:
    """The ``maximize`` subcommand."""
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
    parser.set_defaults(run=run)
    return parser


def run(args) -> list[pathlib.Path]:
    """Write maximize_<layer>.png and maximize_<layer>.npz."""
    loaded = cli.load_model(args)
    params, config, info = loaded.params, loaded.config, loaded.info
    maximize.num_units(config, args.layer)  # raises for an unknown layer
    units = np.asarray(args.units if args.units is not None else
                       range(min(UNITS, maximize.num_units(config, args.layer))), np.int32)
    maximize.check_units(config, args.layer, units)
    lower, upper = loaded.preprocessing.pixel_bounds(config.image_size)
    result = jax.device_get(maximize.maximize(
        config, params, units, jax.random.key(args.seed), layer=args.layer, steps=args.steps,
        learning_rate=args.lr, lp_weight=args.lp_weight, p=args.p, tv_weight=args.tv_weight,
        init_std=args.init_std, lower=lower, upper=upper))
    pictures = loaded.preprocessing.to_pixels(result.images)
    classes = render.class_labels(loaded.class_names) or []
    logits = model.dense_layers(config)[-1]
    labels = [f"{args.layer} #{u}" + (f" {classes[u]}" if args.layer == logits and u < len(classes)
                                      else "") for u in units]
    values = np.concatenate([result.value, result.final_value[:, None]], axis=1)
    fig = plot_maximize(pictures, labels, values, title=(
        f"Activation maximisation, {cli.run_label(args.target, info)}: {args.steps} Adam steps "
        f"(lr {args.lr:g}), L{args.p:g} weight {args.lp_weight:g}, TV weight {args.tv_weight:g}"))
    out = cli.output_folder(args, info)
    stem = f"maximize_{args.layer}"
    npz = artifacts.save_npz(out / f"{stem}.npz", units=units, layer=np.asarray(args.layer),
                             images=result.images, pictures=pictures,
                             objective=result.objective, value=values)
    png = artifacts.save_png(fig, out / f"{stem}.png")
    return [png, npz]
