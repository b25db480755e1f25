"""``visualize.py occlusion``: paper Fig. 7 (core ``zfjax.analyses.occlusion``, figure
``zfjax.figures.occlusion``)."""

from __future__ import annotations

import argparse
import pathlib

import jax
import numpy as np

from zfjax import argtypes, artifacts, cli, render
from zfjax.analyses import occlusion
from zfjax.nets import network
from zfjax.figures.occlusion import plot_occlusion

IMAGES = 3  # rows of the figure, as in the paper


def add_cli(subparsers) -> argparse.ArgumentParser:
    """The ``occlusion`` subcommand (paper Fig. 7)."""
    parser = subparsers.add_parser(
        "occlusion", help="Fig. 7: slide a gray square over images; map the strongest layer-5 "
                          "feature map, p(correct class) and the top class over its positions")
    cli.add_input_arguments(parser, count_help=f"images taken from the split (default {IMAGES})")
    parser.add_argument("--layer", default="conv5", help="layer of the feature map followed")
    parser.add_argument("--size", type=argtypes.positive_int, default=None,
                        help="occluder side in px (default image_size / 7: 32 at 224)")
    parser.add_argument("--stride", type=argtypes.positive_int, default=None,
                        help="step between positions in px (default image_size / 28: 8 at 224)")
    parser.add_argument("--fill", default="gray",
                        help="gray (the mean image, default), black, white or a pixel value 0..255")
    parser.add_argument("--label", default=None,
                        help="correct class (name or index) for every image (default: the "
                             "split's labels; with --images, the predicted class)")
    parser.add_argument("--batch-size", type=argtypes.positive_int, default=None,
                        help="positions computed together (default: one row of positions)")
    parser.set_defaults(run=run)
    return parser


def class_index(label: str, class_names, num_classes: int) -> int:
    """--label (a class id such as n01440764, its name such as tench, or an index) as a
    class index, or ValueError saying what the run's classes are."""
    if class_names is not None:
        for names in (list(class_names), render.class_labels(class_names)):
            if label in names:
                return names.index(label)
    if label.lstrip("-").isdigit() and 0 <= int(label) < num_classes:
        return int(label)
    raise ValueError(f"--label {label!r} is not a class of this run; give a class name or an "
                     f"index 0..{num_classes - 1}")


def run(args) -> list[pathlib.Path]:
    """Occlusion maps for --limit images (or --images); write occlusion.png and .npz."""
    loaded, (inputs, display, labels, names) = cli.load_analysis_inputs(args, args.limit or IMAGES)
    params, config, info = loaded.params, loaded.config, loaded.info
    (layer,) = network.check_layers(config, [args.layer])
    size = args.size if args.size is not None else max(1, round(config.image_size / 7))
    stride = args.stride if args.stride is not None else max(1, round(config.image_size / 28))
    steps = occlusion.positions(config.image_size, size, stride)
    fill = occlusion.fill_values(args.fill, loaded.preprocessing, config.image_size)
    class_names = loaded.class_names
    if args.label is not None:
        labels = np.full(len(inputs), class_index(args.label, class_names, config.num_classes))
    elif labels is None:
        labels = np.full(len(inputs), -1)  # the predicted class

    results, projections, picks = [], [], []
    for image, label in zip(inputs, labels):
        res = jax.device_get(occlusion.occlusion_maps(
            config, params, image, np.int32(label), fill, layer=layer, size=size, stride=stride,
            batch_size=args.batch_size or len(steps)))
        pick_names, pick = occlusion.chosen_occluders(res, steps)
        projections.append(occlusion.projections_for(config, params, image, fill, res.channel,
                                                     pick, size, layer))
        results.append(res)
        picks.append(pick)
    # For showing: Keras weights are BGR.
    picks, projections = np.stack(picks), loaded.preprocessing.rgb(np.stack(projections))
    fig = plot_occlusion(results, display, projections, picks, pick_names, steps, size, layer,
                         render.class_labels(class_names), names)
    fig.suptitle(f"Occlusion ({size} px {args.fill} square, stride {stride}, "
                 f"{len(steps) ** 2} positions); {layer} map = the strongest on the unoccluded "
                 f"image", fontsize=11)
    arrays = {key: np.stack([getattr(r, key) for r in results])
              for key in occlusion.OcclusionMaps._fields if key != "clean"}
    arrays.update({f"clean_{key}": np.stack([getattr(r.clean, key) for r in results])
                   for key in occlusion.Readouts._fields})
    arrays.update(positions=steps, size=np.int32(size), projections=projections,
                  projection_occluders=picks, names=np.array(names))
    out = cli.output_folder(args, info)
    return [artifacts.save_npz(out / "occlusion.npz", **arrays),
            artifacts.save_png(fig, out / "occlusion.png")]
