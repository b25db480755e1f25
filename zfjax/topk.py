"""Top-9 activations per feature map, projected to pixels (Zeiler & Fergus 2014, Fig. 2).

A split is streamed through the network in batches. For every feature map of a
layer the 9 strongest activations over the whole set are kept, one per image at
most (each image's map is first reduced to its single maximum, as in the
paper), with on-device ``lax.top_k`` merges of [running top-9, batch
candidates]. Each winner is then projected to pixels with the deconvnet and
shown beside the image patch under its receptive field.
"""

from __future__ import annotations

import argparse
import pathlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from zfjax import argtypes, artifacts, cli, data, deconv, model, render, strongest
from zfjax.receptive_field import crop_to_receptive_field

TOP = 9  # activations kept per feature map (the paper's 3x3 grids)


# ---- mining (pure, jitted, on device) ----------------------------------------------


TopK = strongest.TopK


def empty_top(channels: int, k: int = TOP) -> TopK:
    """A TopK with every slot unfilled: (C, k) fields."""
    return strongest.empty_top(channels, k)


merge_top = strongest.merge


@partial(jax.jit, static_argnames=("layers", "config"))
def _mine_batch(config, params, best, images, first, count, layers):
    _, aux = model.forward(config, params, images)  # logits unused: XLA drops what is above
    return {layer: merge_top(best[layer], aux["activations"][layer], first, count)
            for layer in layers}


def mine(config: model.Network, params, batches, layers=None, *,
         k: int = TOP) -> dict[str, TopK]:
    """Stream batches of network inputs and keep each feature map's k strongest activations.

    batches: iterable of float32 (B_i, H, W, 3) arrays, in set order; every batch
    is padded to the first one's size, so one compilation serves all. The running
    top-k never leaves the device until the end. Returns layer -> TopK (numpy).
    """
    layers = model.check_layers(config, model.conv_layers(config) if layers is None else layers)
    best = {layer: empty_top(model.num_channels(config, layer), k) for layer in layers}
    first, size = 0, None
    for batch in batches:
        batch = np.asarray(batch, np.float32)
        count = len(batch)
        size = size or count
        if count > size:
            raise ValueError(f"batch of {count} images after batches of {size}; only the "
                             f"last batch may be smaller")
        if count < size:
            batch = np.concatenate([batch, np.zeros((size - count,) + batch.shape[1:], batch.dtype)])
        best = _mine_batch(config, params, best, batch, np.int32(first), np.int32(count), layers)
        first += count
    return {layer: TopK(*(np.asarray(a) for a in top)) for layer, top in jax.device_get(best).items()}


def batches_of(stored: np.ndarray, preprocess, config: model.Network, batch_size: int):
    """Network inputs for stored-size uint8 images, preprocessed batch by batch (low memory).

    preprocess: a ``preprocessing.Preprocessing`` (``loading.Model.preprocessing``)."""
    for start in range(0, len(stored), batch_size):
        yield preprocess(stored[start:start + batch_size], config.image_size)


# ---- projections of the winners ----------------------------------------------------


@partial(jax.jit, static_argnames=("layer", "config"))
def _project_winners(config, params, images, channels, ys, xs, layer):
    """images (K, H, W, 3), one per unit -> each unit's projection (K, H, W, 3)."""
    _, aux = model.forward(config, params, images)
    units = deconv.Units(jnp.arange(images.shape[0], dtype=jnp.int32), channels, ys, xs)
    return deconv.project_units(config, params, aux, layer, units)


def project_top(config: model.Network, params, layer: str, top: TopK, channels,
                inputs: np.ndarray, display: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project the top-k units of the given maps and crop them to their receptive fields.

    top: the layer's TopK; channels: int (M,) maps to draw; inputs float32 and display
    uint8 (N, H, W, 3), indexed by ``top.image``. Returns (projections float32
    (M, k, R, R, 3), patches uint8 (M, k, R, R, 3)), R = receptive_field_size(layer);
    boxes running past the image edge are zero-padded to the full R.
    """
    projections, patches = [], []
    for c in np.asarray(channels):
        image, ys, xs = (np.maximum(a[c], 0) for a in (top.image, top.y, top.x))
        full = _project_winners(config, params, inputs[image],
                                np.full(len(image), c, np.int32), ys, xs, layer)
        full = np.where(np.isfinite(top.value[c])[:, None, None, None], np.asarray(full), 0)
        projections.append(crop_to_receptive_field(config, layer, full.astype(np.float32), ys,
                                                   xs))
        patches.append(crop_to_receptive_field(config, layer, display[image], ys, xs))
    return np.stack(projections), np.stack(patches)


# ---- the figure --------------------------------------------------------------------


def mosaic(cells: np.ndarray, side: int, gap: int) -> np.ndarray:
    """uint8 cells (k, R, R, 3) -> one (side*R + (side-1)*gap)^2 image, row-major, white gaps."""
    k, r = cells.shape[:2]
    n = side * r + (side - 1) * gap
    out = np.full((n, n, 3), 255, np.uint8)
    for j in range(k):
        y, x = (j // side) * (r + gap), (j % side) * (r + gap)
        out[y:y + r, x:x + r] = cells[j]
    return out


def plot_topk(layer: str, channels, values: np.ndarray, projections: np.ndarray,
              patches: np.ndarray, *, title: str | None = None, columns: int = 3):
    """Paper Fig. 2 for one layer: per map, its top-k projections (3x3) beside their patches.

    channels int (M,); values float32 (M, k); projections float32 and patches
    uint8 (M, k, R, R, 3) from ``project_top``. Each pair is cut to the image and
    enlarged by whole pixels to at least 48 px, each projection stretched on its own
    (``render.fit_pairs``). Returns a matplotlib Figure.
    """
    from matplotlib.figure import Figure

    m, k = values.shape
    r = render.display_side(projections.shape[2])
    shown, patches = render.fit_pairs(projections, patches, r)
    side = int(np.ceil(np.sqrt(k)))
    gap = max(1, r // 20)
    columns = max(1, min(columns, m))
    rows = -(-m // columns)
    block = 1.9  # inches per 3x3 grid
    fig = Figure(figsize=(columns * (2 * block + 0.5) + 0.3, rows * (block + 0.45) + 0.9))
    grid = fig.add_gridspec(rows, columns, wspace=0.08, hspace=0.25, top=1 - 0.75 / fig.get_figheight(),
                            bottom=0.02, left=0.02, right=0.98)
    for i, c in enumerate(np.asarray(channels)):
        left = mosaic(shown[i], side, gap)
        right = mosaic(patches[i], side, gap)
        spacer = np.full((left.shape[0], 4 * gap + r // 6, 3), 255, np.uint8)
        ax = fig.add_subplot(grid[i // columns, i % columns])
        ax.imshow(np.concatenate([left, spacer, right], axis=1), interpolation="nearest")
        ax.set_axis_off()
        best = values[i][np.isfinite(values[i])]
        peak = f"{best.max():.3g}" if best.size else "-"
        ax.set_title(f"{layer} map #{int(c)}   (top activation {peak})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


# ---- command line ------------------------------------------------------------------


def check_channels(config: model.Network, layer: str, channels) -> np.ndarray:
    """channels as int32 (M,), or ValueError naming the first one the layer does not have."""
    n = model.num_channels(config, layer)
    for c in channels:
        if not 0 <= c < n:
            raise ValueError(f"channel {c} is out of range for {layer}: this run's {layer} has "
                             f"{n} feature maps, 0..{n - 1}")
    return np.asarray(channels, np.int32)


def choose_maps(top: TopK, count: int, seed: int) -> np.ndarray:
    """``count`` random maps (sorted), drawn among those that fire on some image if enough do."""
    active = np.flatnonzero(top.value[:, 0] > 0)
    pool = active if len(active) >= count else np.arange(len(top.value))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, min(count, len(pool)), replace=False)).astype(np.int32)


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
    parser.add_argument("--top", type=argtypes.positive_int, default=TOP, help="activations kept per map")
    parser.add_argument("--batch-size", type=argtypes.positive_int, default=64)
    parser.set_defaults(run=run)
    return parser


def run(args) -> list[pathlib.Path]:
    """Mine, project and draw; write topk_<layer>.png per layer and topk.npz."""
    loaded = cli.load_model(args)
    params, config, info = loaded.params, loaded.config, loaded.info
    layers = model.check_layers(config, args.layers or model.conv_layers(config))
    for layer in layers:
        check_channels(config, layer, args.channels or [])
    stored, labels, names = cli.load_stored_images(args, config, info, args.limit)
    k = min(args.top, len(stored))
    tops = mine(config, params, batches_of(stored, loaded.preprocessing, config, args.batch_size),
                layers, k=k)

    arrays, figures = {"names": np.array(names)}, {}
    if labels is not None:
        arrays["labels"] = labels
    source = ("the given images" if args.images
              else f"{args.data or cli.run_data_source(info)[0]} [{args.split}]")
    for layer in layers:
        top = tops[layer]
        channels = (check_channels(config, layer, args.channels) if args.channels
                    else choose_maps(top, args.count, args.seed))
        # Only the winners' images are preprocessed; image indices are remapped onto them.
        used, where = np.unique(np.maximum(top.image[channels], 0), return_inverse=True)
        local = top.image.copy()
        local[channels] = np.where(top.image[channels] >= 0, where.reshape(len(channels), k), -1)
        chosen = cli.images_for(loaded, stored[used])
        projections, patches = project_top(config, params, layer, top._replace(image=local),
                                           channels, chosen.inputs, chosen.display)
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
