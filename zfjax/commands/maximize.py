"""``visualize.py maximize``: activation maximisation (core ``zfjax.analyses.maximize``, figure
``zfjax.figures.maximize``)."""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np

from zfjax import argtypes, artifacts, cli, render
from zfjax.analyses import maximize
from zfjax.nets import network
from zfjax.figures.maximize import plot_maximize
from zfjax.progress import bar as progress_bar

UNITS, STEPS = 8, 200  # the defaults on a GPU/TPU
# On CPU the defaults shrink to about CPU_SECONDS of work at CPU_FLOPS (maximize.step_flops):
# VGG16 with the GPU defaults ran over 10 minutes on a 2-core CPU (FACTS.md).
# CPU_FLOPS: VGG16's ascent ran at 6 GFLOP/s with the 2 cores 5x oversubscribed (load 10).
CPU_SECONDS, CPU_FLOPS = 60.0, 25e9


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
                             f"(default on a GPU/TPU: the first {UNITS}; on CPU: the first "
                             f"as many as fit in about a minute, e.g. 1 for VGG16 at 224)")
    parser.add_argument("--steps", type=argtypes.positive_int, default=None,
                        help=f"ascent steps (default on a GPU/TPU: {STEPS}; on CPU: as many as "
                             f"fit in about a minute, at least 10, e.g. 16 for VGG16 at 224)")
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


def default_work(config, args) -> tuple[int, int, str | None]:
    """(units, steps, note) where --units / --steps are not given: UNITS x STEPS on an
    accelerator; on CPU about CPU_SECONDS of work (maximize.work_within). note: a line
    saying so where the CPU's defaults are smaller, else None."""
    given_units = len(args.units) if args.units is not None else None
    if jax.default_backend() != "cpu":
        return given_units or UNITS, args.steps or STEPS, None
    units, steps = maximize.work_within(config, CPU_SECONDS, CPU_FLOPS, units=given_units,
                                        max_units=UNITS, max_steps=STEPS)
    steps = args.steps or steps
    if (given_units or units >= UNITS) and (args.steps or steps >= STEPS):
        return units, steps, None  # no default was made smaller
    return units, steps, (f"maximize: on CPU the defaults are {units} unit(s) x {steps} steps "
                          f"(about a minute); a GPU's are {UNITS} x {STEPS} (pass --units / "
                          f"--steps)")


def progress_chunk(steps: int) -> int:
    """Steps per compiled call: the largest divisor of steps up to steps // 10, so the bar
    moves at least 10 times and every call has one length (one compilation)."""
    return max(d for d in range(1, max(1, steps // 10) + 1) if steps % d == 0)


def run(args) -> list[pathlib.Path]:
    """Write maximize_<layer>.png and maximize_<layer>.npz."""
    loaded = cli.load_model(args)
    params, config, info = loaded.params, loaded.config, loaded.info
    available = maximize.num_units(config, args.layer)  # raises for an unknown layer
    count, steps, note = default_work(config, args)
    units = np.asarray(args.units if args.units is not None else range(min(count, available)),
                       np.int32)
    maximize.check_units(config, args.layer, units)
    if note:
        print(note, file=sys.stderr)
    lower, upper = loaded.preprocessing.pixel_bounds(config.image_size)
    with progress_bar(total=steps, desc=f"maximize {args.layer}, {len(units)} unit(s)",
                      unit="step") as bar:
        result = jax.device_get(maximize.maximize(
            config, params, units, jax.random.key(args.seed), layer=args.layer, steps=steps,
            learning_rate=args.lr, lp_weight=args.lp_weight, p=args.p, tv_weight=args.tv_weight,
            init_std=args.init_std, lower=lower, upper=upper, chunk=progress_chunk(steps),
            on_steps=lambda done: bar.update(done - bar.n)))
    pictures = loaded.preprocessing.to_pixels(result.images)
    classes = render.class_labels(loaded.class_names) or []
    logits = network.dense_layers(config)[-1]
    labels = [f"{args.layer} #{u}" + (f" {classes[u]}" if args.layer == logits and u < len(classes)
                                      else "") for u in units]
    values = np.concatenate([result.value, result.final_value[:, None]], axis=1)
    fig = plot_maximize(pictures, labels, values, title=(
        f"Activation maximisation, {cli.run_label(args.target, info)}: {steps} Adam steps "
        f"(lr {args.lr:g}), L{args.p:g} weight {args.lp_weight:g}, TV weight {args.tv_weight:g}"))
    out = cli.output_folder(args, info)
    stem = f"maximize_{args.layer}"
    npz = artifacts.save_npz(out / f"{stem}.npz", units=units, layer=np.asarray(args.layer),
                             images=result.images, pictures=pictures,
                             objective=result.objective, value=values)
    png = artifacts.save_png(fig, out / f"{stem}.png")
    return [png, npz]
