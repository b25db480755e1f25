"""``visualize.py topk``: paper Fig. 2 over a split (core ``zfjax.analyses.topk``, figure
``zfjax.figures.topk``)."""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from zfjax import argtypes, artifacts, cli
from zfjax.analyses import topk
from zfjax.nets import deconv, network, strongest
from zfjax.figures.topk import plot_topk
from zfjax.render import shown_path


def add_cli(subparsers) -> argparse.ArgumentParser:
    """The ``topk`` subcommand (paper Fig. 2)."""
    parser = subparsers.add_parser(
        "topk", help="Fig. 2: the 9 strongest activations of feature maps over a split, "
                     "projected to pixels beside their image patches")
    cli.add_input_arguments(parser, count_help="at most this many images of the split (default: all)")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="layers to mine (default: every conv layer; any conv or pool map)")
    parser.add_argument("--channels", nargs="+", type=argtypes.nonnegative_int, default=None, metavar="C",
                        help="feature maps to draw, in every layer (default: --count random ones)")
    parser.add_argument("--count", type=argtypes.positive_int, default=9, help="random maps drawn per layer")
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the random maps")
    parser.add_argument("--top", type=argtypes.positive_int, default=strongest.TOP,
                        help="activations kept per map")
    parser.add_argument("--batch-size", type=argtypes.positive_int, default=64)
    parser.set_defaults(run=run)
    return parser


def run(args) -> list[pathlib.Path]:
    """Mine, project and draw; write topk_<layer>.png per layer and topk.npz."""
    loaded = cli.load_model(args)
    params, config, info = loaded.params, loaded.config, loaded.info
    layers = network.check_layers(config, args.layers or network.conv_layers(config))
    for layer in layers:
        topk.check_channels(config, layer, args.channels or [])
    stored, labels, names = cli.load_stored_images(args, config, info, args.limit)
    k = min(args.top, len(stored))
    tops = strongest.mine(config, params,
                          loaded.preprocessing.batches(stored, config.image_size, args.batch_size),
                          layers, k=k)

    arrays, figures = {"names": np.array(names)}, {}
    if labels is not None:
        arrays["labels"] = labels
    source = ("the given images" if args.images else  # no path of this machine in titles
              f"{shown_path(args.data or cli.run_data_source(info)[0])} [{args.split}]")
    for layer in layers:
        top = tops[layer]
        channels = (topk.check_channels(config, layer, args.channels) if args.channels
                    else topk.choose_maps(top, args.count, args.seed))
        # Only the winners' images are preprocessed; image indices are remapped onto them.
        drawn = strongest.TopK(*(a[channels] for a in top))
        used, where = np.unique(np.maximum(drawn.image, 0), return_inverse=True)
        local = np.where(drawn.image >= 0, where.reshape(drawn.image.shape), -1)
        chosen = cli.images_for(loaded, stored[used])
        found = deconv.project_strongest(config, params, layer, drawn._replace(image=local),
                                         channels[:, None], chosen.inputs,
                                         display=chosen.display)
        # For showing: Keras weights are BGR.
        projections, patches = loaded.preprocessing.rgb(found.projections), found.patches
        arrays.update({f"{layer}/{field}": value for field, value in top._asdict().items()})
        arrays.update({f"{layer}/channels": channels, f"{layer}/projections": projections,
                       f"{layer}/patches": patches})
        figures[layer] = plot_topk(
            layer, channels, top.value[channels], projections, patches,
            title=f"{layer}: top {k} activations per feature map over {len(stored)} images of "
                  f"{source}\n(left: deconvnet projections, right: image patches under the "
                  f"receptive field)")
    out = cli.output_folder(args, info)
    paths = [artifacts.save_npz(out / "topk.npz", **arrays)]
    paths += [artifacts.save_png(fig, out / f"topk_{layer}.png") for layer, fig in figures.items()]
    return paths
