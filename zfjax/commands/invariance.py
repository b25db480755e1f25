"""``visualize.py invariance``: paper Fig. 5 (core ``zfjax.analyses.invariance``, figure
``zfjax.figures.invariance``)."""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from zfjax import argtypes, artifacts, cli
from zfjax.analyses import invariance
from zfjax.figures.invariance import plot_invariance

IMAGES = 5  # the paper's five example images


def add_cli(subparsers) -> argparse.ArgumentParser:
    """The ``invariance`` subcommand (paper Fig. 5)."""
    parser = subparsers.add_parser(
        "invariance", help="Fig. 5: feature distance and P(true class) under translation, "
                           "scale and rotation")
    cli.add_input_arguments(parser, count_help=f"images to analyse (default {IMAGES})")
    parser.add_argument("--layer1", default="pool1", choices=invariance.LAYER1_CHOICES,
                        help="layer-1 features to compare (default pool1)")
    parser.add_argument("--translations", type=argtypes.finite_float, nargs="+", metavar="PX",
                        help="vertical shifts in pixels (default -60..60 step 10, scaled to "
                             "the image size from 224)")
    parser.add_argument("--scales", type=argtypes.positive_float, nargs="+", metavar="RATIO",
                        help="zoom ratios (default 1.0..1.8 step 0.1)")
    parser.add_argument("--rotations", type=argtypes.finite_float, nargs="+", metavar="DEG",
                        help="rotations in degrees (default 0..350 step 10)")
    parser.set_defaults(run=run)
    return parser


def run(args) -> list[pathlib.Path]:
    """Write invariance.png and invariance.npz."""
    chosen = {"translate": args.translations, "scale": args.scales, "rotate": args.rotations}
    loaded, (inputs, display, labels, names) = cli.load_analysis_inputs(args, args.limit or IMAGES)
    params, config, info = loaded.params, loaded.config, loaded.info
    sweeps = {kind: np.asarray(chosen[kind] if chosen[kind] else
                               invariance.default_amounts(kind, config.image_size), np.float32)
              for kind in invariance.TRANSFORMS}
    results = invariance.sweep(config, params, inputs, sweeps, args.layer1)
    curves, examples, arrays = {}, {}, {}
    for kind, amounts in sweeps.items():
        result = results[kind]
        prob = invariance.true_class_probability(result, labels)
        curves[kind] = {"amounts": amounts, "layer1": result.layer1, "layer7": result.layer7,
                        "prob": prob}
        shown = invariance.example_amounts(amounts)
        pictures = loaded.preprocessing.to_pixels(
            np.asarray(invariance.transform(inputs[:1], kind, shown))[:, 0])
        examples[kind] = (shown, pictures)
        arrays.update({f"{kind}/amounts": amounts, f"{kind}/layer1_distance": result.layer1,
                       f"{kind}/layer7_distance": result.layer7,
                       f"{kind}/true_class_probability": prob,
                       f"{kind}/example_amounts": shown, f"{kind}/examples": pictures})
    out = cli.output_folder(args, info)
    label_note = "true class" if labels is not None else "class predicted for the original"
    fig = plot_invariance(curves, examples, names, layer1=args.layer1,
                          title=f"Invariance (Fig. 5): {cli.run_label(args.target, info)}, "
                                f"{len(names)} images; probability of the {label_note}")
    arrays.update(names=np.asarray(names, dtype=str), display=display,
                  labels=np.asarray(labels if labels is not None else [], np.int32),
                  layer1=np.asarray(args.layer1))
    npz = artifacts.save_npz(out / "invariance.npz", **arrays)
    png = artifacts.save_png(fig, out / "invariance.png")
    return [png, npz]
