"""``visualize.py methods``: attribution methods side by side (core ``zfjax.analyses.methods``,
figure ``zfjax.figures.methods``)."""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from zfjax import argtypes, artifacts, cli, render
from zfjax.analyses import methods
from zfjax.inputs import data
from zfjax.nets import attribution, network
from zfjax.commands.occlusion import class_index
from zfjax.figures.methods import plot_methods
from zfjax.nets.receptive_field import receptive_field

IMAGES = 3  # rows of images in the figure by default


def add_cli(subparsers) -> argparse.ArgumentParser:
    """The ``methods`` subcommand."""
    parser = subparsers.add_parser(
        "methods", help="attribution methods side by side: each image's strongest unit (conv5) "
                        "and predicted class under deconvnet, guided backprop, gradient, "
                        "gradient x input, SmoothGrad, integrated gradients and Grad-CAM")
    cli.add_input_arguments(parser, count_help=f"images taken from the split (default {IMAGES})")
    parser.add_argument("--methods", nargs="+", default=list(attribution.METHODS),
                        choices=attribution.METHODS, metavar="METHOD",
                        help=f"methods to show (default all: {', '.join(attribution.METHODS)})")
    parser.add_argument("--layer", default=None,
                        help="layer of the explained unit, and of Grad-CAM for the class "
                             "(default: the last conv layer, conv5 for ZFNet)")
    parser.add_argument("--channel", type=argtypes.nonnegative_int, default=None,
                        help="explain the strongest unit of this map (default: of any map)")
    parser.add_argument("--label", default=None,
                        help="explain this class (name or index; default: the predicted one)")
    cli.add_method_settings(parser, cam_layer=False)
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="SmoothGrad's noise")
    parser.set_defaults(run=run)
    return parser


def baseline_input(text: str, loaded) -> np.ndarray | str:
    """--baseline as ``methods.explain`` takes it: 'blur', or an (H, W, 3) network input
    (black: the preprocessing of a black image). ValueError (one line) for anything else."""
    config = loaded.config
    want = (config.image_size, config.image_size, 3)
    if text == "blur":
        return text
    if text == "black":
        side = data.stored_size(config.image_size)
        return loaded.preprocessing(np.zeros((1, side, side, 3), np.uint8), config.image_size)[0]
    path = pathlib.Path(text)
    if path.suffix != ".npy" or not path.is_file():
        raise ValueError(f"--baseline {text!r}: expected black, blur or a .npy file of a network "
                         f"input of shape {want}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"--baseline {text}: not a readable .npy array ({err})") from None
    if array.shape != want or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"--baseline {text}: expected a numeric array of shape {want} (one "
                         f"network input); got {array.dtype} {array.shape}")
    return array.astype(np.float32)


def run(args) -> list[pathlib.Path]:
    """Every chosen method on --limit images (or --images); write methods.png and .npz."""
    loaded = cli.load_model(args)
    config = loaded.config
    layer = args.layer or network.conv_layers(config)[-1]
    label = (None if args.label is None
             else class_index(args.label, loaded.class_names, config.num_classes))
    given = cli.method_settings(args, config)
    settings = methods.Settings(layer, args.channel, label, given.samples, given.noise, given.steps,
                                args.seed)
    chosen = methods.check_methods(args.methods)
    methods.check_settings(config, settings)
    baseline = baseline_input(given.baseline, loaded)
    # Every check above runs before the images are read and the minutes of work.
    stored, labels, names = cli.load_stored_images(args, config, loaded.info,
                                                   args.limit or IMAGES)
    inputs, display, labels, names = cli.images_for(loaded, stored, labels, names)
    explained = methods.explain_images(config, loaded.params, inputs, settings, baseline, chosen)
    # For showing: Keras weights are BGR.
    for e in explained:
        e.maps.update({m: loaded.preprocessing.rgb(e.maps[m]) for m in chosen if m != "grad_cam"})
    units = np.stack([e.unit for e in explained])
    boxes = np.stack(receptive_field(config, layer, units[:, 1], units[:, 2]),
                     axis=1)
    notes = {"smoothgrad": f"{given.samples} × {given.noise:g} noise",
             "integrated_gradients": f"{given.steps} steps, {pathlib.Path(given.baseline).name}",
             "grad_cam": None}
    fig = plot_methods(display, explained, chosen, layer, render.class_labels(loaded.class_names),
                       names, labels, boxes=boxes,
                       cam_layers=(methods.cam_layer_below(config, layer), layer), notes=notes)
    fig.text(0.5, 1.0, cli.run_label(args.target or args.weights, loaded.info), ha="center",
             va="bottom", fontsize=9)
    arrays = {f"{m}_{kind}": np.stack([e.maps[m][k] for e in explained])
              for m in chosen for k, kind in enumerate(methods.TARGETS)}
    arrays.update(units=units, unit_values=np.stack([e.unit_value for e in explained]),
                  classes=np.stack([e.target_class for e in explained]),
                  probabilities=np.stack([e.probability for e in explained]),
                  predicted=np.stack([e.predicted for e in explained]),
                  receptive_fields=boxes, methods=np.array(chosen), layer=np.array(layer),
                  names=np.array(names), display=display)
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    out = cli.output_folder(args, loaded.info)
    return [artifacts.save_npz(out / "methods.npz", **arrays),
            artifacts.save_png(fig, out / "methods.png")]
