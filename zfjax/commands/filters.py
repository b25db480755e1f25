"""``visualize.py filters``: paper Fig. 6 for one run or two side by side (core
``zfjax.analyses.filters``, figure ``zfjax.figures.filters``)."""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from zfjax import argtypes, artifacts, cli
from zfjax.analyses import filters
from zfjax.nets import network
from zfjax.figures.filters import plot_filters

MAPS = 36  # conv2 maps shown
IMAGES = 100  # images searched for their strongest activations


def add_cli(subparsers) -> argparse.ArgumentParser:
    """The ``filters`` subcommand (paper Fig. 6)."""
    parser = subparsers.add_parser(
        "filters", help="Fig. 6: conv1 filters and conv2 features, optionally of two runs")
    cli.add_input_arguments(
        parser, count_help=f"images searched for conv2 features (default {IMAGES})")
    parser.add_argument("--compare", metavar="OTHER_RUN", default=None,
                        help="a second run or checkpoint to show side by side (e.g. trained "
                             "without filter renormalisation)")
    parser.add_argument("--maps", type=argtypes.nonnegative_int, default=MAPS,
                        help=f"conv2 maps shown per run (default {MAPS}; 0: filters only)")
    parser.set_defaults(run=run)
    return parser


def _radius(info: dict) -> tuple[float | None, str]:
    """(filter renormalisation radius or None, a note for titles) as the run recorded it."""
    train = info.get("train")
    if not isinstance(train, dict) or "filter_radius" not in train:
        return None, ""
    radius = train["filter_radius"]
    return radius, (f"filter radius {radius:g}" if radius else "no filter renormalisation")


def run(args) -> list[pathlib.Path]:
    """Write filters.png and filters.npz (filters_compare.* with --compare)."""
    models = [cli.load_model(args)] + ([cli.load_model(args.compare)] if args.compare else [])
    targets = [args.target or args.weights] + ([args.compare] if args.compare else [])
    first = [network.conv_layers(m.config)[0] for m in models]
    if args.compare:
        filters.check_comparable(models[0].params[first[0]]["kernel"],
                                 models[1].params[first[1]]["kernel"], targets[0], args.compare)
    panels, arrays = [], {}
    for i, (target, loaded) in enumerate(zip(targets, models)):
        params, config, info = loaded.params, loaded.config, loaded.info
        second = network.conv_layers(config)[1]
        features, count = None, 0
        if args.maps:
            stored, _, _ = cli.load_stored_images(args, config, info, args.limit or IMAGES)
            inputs, display, _, _ = cli.images_for(loaded, stored)
            count = len(inputs)
            maps = filters.strongest_maps(config, params, inputs,
                                          min(args.maps, network.num_channels(config, second)),
                                          layer=second)
            features = filters.layer2_features(config, params, inputs, display, maps, layer=second)
            # For showing: Keras weights are BGR.
            features = features._replace(projections=loaded.preprocessing.rgb(features.projections))
        kernel = np.asarray(params[network.conv_layers(config)[0]]["kernel"])
        radius, note = _radius(info)
        panels.append({"name": cli.run_label(target, info) + (f" ({note})" if note else ""),
                       "kernel": loaded.preprocessing.rgb(kernel, axis=2), "radius": radius,
                       "features": features, "images": count})
        prefix = f"run{i}/"
        arrays[prefix + "conv1_kernel"] = kernel
        arrays[prefix + "conv1_rms"] = np.asarray(filters.filter_rms(kernel))
        arrays[prefix + "target"] = np.asarray(str(target))
        if features is not None:
            arrays.update({prefix + "conv2/" + k: v for k, v in features._asdict().items()})
    out = cli.output_folder(args, models[0].info)
    name = "filters_compare" if args.compare else "filters"
    fig = plot_filters(panels, title="First-layer filters and second-layer features (Fig. 6)")
    npz = artifacts.save_npz(out / f"{name}.npz", **arrays)
    png = artifacts.save_png(fig, out / f"{name}.png")
    return [png, npz]
