"""``visualize.py reconstructions``: whole layer and strongest activation after each pooling
stage (core ``zfjax.analyses.reconstructions``, figure ``zfjax.figures.reconstructions``)."""

from __future__ import annotations

import argparse
import pathlib

import jax
import numpy as np

from zfjax import artifacts, cli
from zfjax.analyses import reconstructions
from zfjax.nets import network
from zfjax.figures.reconstructions import plot_reconstructions


def add_cli(subparsers) -> argparse.ArgumentParser:
    """The ``reconstructions`` subcommand."""
    parser = subparsers.add_parser(
        "reconstructions", help="project a whole layer and its strongest activation to pixels, "
                                "after each pooling stage, for one image")
    cli.add_input_arguments(parser, count_help="images taken from the split (default 1)")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="layers (default: after each pooling stage, pool1 ... pool5; any "
                             "conv or pool map fits)")
    parser.set_defaults(run=run)
    return parser


def run(args) -> list[pathlib.Path]:
    """Write reconstructions.png and reconstructions.npz."""
    loaded, (inputs, display, labels, names) = cli.load_analysis_inputs(args, args.limit or 1)
    params, config, info = loaded.params, loaded.config, loaded.info
    # Bottom to top, as the forward pass goes.
    known = network.projectable_layers(config)
    chosen = network.check_layers(config, args.layers or network.pool_layers(config))
    layers = tuple(sorted(dict.fromkeys(chosen), key=known.index))
    results = [jax.device_get(reconstructions.reconstruct(config, params, image, layers=layers))
               for image in inputs]
    results = [r._replace(whole=loaded.preprocessing.rgb(r.whole),  # for showing: Keras
                          strongest=loaded.preprocessing.rgb(r.strongest))  # weights are BGR
               for r in results]
    fig = plot_reconstructions(display, results, layers, names)
    arrays = {key: np.stack([getattr(r, key) for r in results])
              for key in reconstructions.Reconstruction._fields}
    arrays.update(layers=np.array(layers), names=np.array(names), display=display)
    out = cli.output_folder(args, info)
    return [artifacts.save_npz(out / "reconstructions.npz", **arrays),
            artifacts.save_png(fig, out / "reconstructions.png")]
