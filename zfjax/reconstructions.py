"""Reconstructions as common deconvnet reimplementations show them.

For one image and each chosen layer (by default after each pooling stage: pool1,
pool2, pool5 of ZFNet; pool1 ... pool5 of VGG16, as the PyTorch VGG16 deconvnet
reimplementations show them) two deconvnet projections to pixels (Zeiler & Fergus
2014, section 2.1):

* (A) the whole layer: every activation of every feature map sent down at once;
* (B) only the layer's single strongest activation (the paper's mode, Fig. 2).
"""

from __future__ import annotations

import argparse
import pathlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from zfjax import artifacts, cli, deconv, model, render, strongest



@partial(jax.jit, static_argnames=("layers", "config"))
def reconstruct(config: model.Network, params, image, *, layers: tuple[str, ...]) -> dict:
    """Project one image's layers down to pixels, whole and by their strongest unit.

    image: (H, W, 3) network input. Returns {'whole': (L, H, W, 3), 'strongest':
    (L, H, W, 3), 'unit': int32 (L, 3) (channel, y, x) of each layer's strongest
    activation, 'value': (L,) that activation}, layers in the order given.
    """
    _, aux = model.forward(config, params, image[None])
    whole, strongest_units, units, values = [], [], [], []
    for layer in layers:
        acts = aux["activations"][layer]  # (1, h, w, C)
        value, channel, y, x = strongest.strongest_map(acts[0])
        unit = deconv.Units(*(jnp.zeros((1,), jnp.int32) + v for v in (0, channel, y, x)))
        whole.append(deconv.project(config, params, aux, layer, acts)[0])
        strongest_units.append(deconv.project_units(config, params, aux, layer, unit)[0])
        units.append(jnp.stack([channel, y, x]).astype(jnp.int32))
        values.append(value)
    return {"whole": jnp.stack(whole), "strongest": jnp.stack(strongest_units),
            "unit": jnp.stack(units), "value": jnp.stack(values)}


def plot_reconstructions(displays, results, layers, image_names):
    """Rows A (whole layer) and B (strongest activation) per image; columns: input, layers.

    displays uint8 (N, H, W, 3); results: N numpy dicts from ``reconstruct``.
    Each projection is contrast-normalised on its own (``render.to_display``).
    """
    from matplotlib.figure import Figure

    n, cols = len(results), len(layers) + 1
    cell = 2.2
    fig = Figure(figsize=(cell * cols + 0.8, (cell + 0.45) * 2 * n + 0.7))
    grid = fig.add_gridspec(2 * n, cols, wspace=0.06, hspace=0.35)
    for i, res in enumerate(results):
        whole, strongest = render.to_display(res["whole"]), render.to_display(res["strongest"])
        for row, (mode, shown) in enumerate((("A: whole layer", whole),
                                             ("B: strongest activation", strongest))):
            ax = fig.add_subplot(grid[2 * i + row, 0])
            ax.imshow(displays[i])
            ax.set_title("input\n" + image_names[i].replace("/", "/\n") if row == 0 else "input",
                         fontsize=8)
            ax.set_ylabel(mode, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            for j, layer in enumerate(layers):
                ax = fig.add_subplot(grid[2 * i + row, j + 1])
                ax.imshow(shown[j])
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"{layer}: all activations", fontsize=9)
                else:
                    c, y, x = (int(v) for v in res["unit"][j])
                    ax.set_title(f"{layer} map #{c} at ({y}, {x})\nvalue {float(res['value'][j]):.3g}",
                                 fontsize=9)
    fig.suptitle("Deconvnet reconstructions: (A) the whole layer, (B) its single strongest "
                 "activation", fontsize=11)
    return fig


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
    known = model.projectable_layers(config)
    chosen = model.check_layers(config, args.layers or model.pool_layers(config))
    layers = tuple(sorted(dict.fromkeys(chosen), key=known.index))
    results = [jax.device_get(reconstruct(config, params, image, layers=layers))
               for image in inputs]
    for r in results:  # projections in RGB for showing (Keras weights take BGR inputs)
        r["whole"], r["strongest"] = (loaded.preprocessing.rgb(r[k]) for k in ("whole", "strongest"))
    fig = plot_reconstructions(display, results, layers, names)
    arrays = {key: np.stack([r[key] for r in results]) for key in results[0]}
    arrays.update(layers=np.array(layers), names=np.array(names), display=display)
    out = cli.output_folder(args, info)
    return [artifacts.save_npz(out / "reconstructions.npz", **arrays),
            artifacts.save_png(fig, out / "reconstructions.png")]
