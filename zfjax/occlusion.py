"""Occlusion sensitivity (Zeiler & Fergus 2014, section 4.2, Fig. 7).

A square (gray by default: the mean image, i.e. 0 after mean subtraction) is
slid over the image. For every position of the square the network is run on
the occluded copy and four things are recorded, as maps over positions:

* (b) the total activation of the feature map (layer 5 by default) that is
  strongest on the unoccluded image, and the activation of its strongest unit;
* (d) the probability of the correct class;
* (e) the most probable class (and its probability).

Column (c) of the figure projects the top activation of that feature map to
pixels, for the unoccluded image and for the occluded copies that hurt the map
and the correct class most.

The occluded copies are built on the device, inside one jitted call that runs
the positions in batches (``lax.map`` with a batch size), not a Python loop.
By default each position recomputes only the windows of each layer that the
square can change (same results as whole forwards, a third of the work at
224 px with a 32 px square; see "incremental forward" below).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfjax import argtypes, artifacts, cli, data, deconv, model, render, strongest

IMAGES = 3  # rows of the figure, as in the paper


def positions(image_size: int, size: int, stride: int) -> np.ndarray:
    """Top (or left) pixel of every occluder position along one axis: int32 (P,).

    At 224 px with a 32 px square and stride 8: 25 positions (625 in 2-D).
    """
    if not 1 <= size <= image_size or stride < 1:
        raise ValueError(f"occluder size must be 1..{image_size} and stride >= 1; got size "
                         f"{size}, stride {stride}")
    return np.arange(0, image_size - size + 1, stride, dtype=np.int32)


def occlude(image: jax.Array, fill: jax.Array, top, left, size: int) -> jax.Array:
    """image (H, W, 3) with the size x size square at (top, left) replaced by ``fill``.

    fill: scalar or (H, W, 3) network-input values (0 = the mean image).
    """
    rows = jnp.arange(image.shape[0])
    cols = jnp.arange(image.shape[1])
    inside = (((rows >= top) & (rows < top + size))[:, None]
              & ((cols >= left) & (cols < left + size))[None, :])
    return jnp.where(inside[:, :, None], fill, image)


def _scores(logits, acts, y, x, label):
    """The readouts of one image from its logits (classes,) and followed map (h, w)."""
    probs = jax.nn.softmax(logits)
    return {"map_total": acts.sum(), "unit": acts[y, x], "p_true": probs[label],
            "top_class": jnp.argmax(probs).astype(jnp.int32), "top_prob": probs.max()}


# ---- incremental forward: recompute only what the square can change ------------------
#
# An occluder changes a size x size square of the input. Each stage (conv or pool)
# then changes at most a window of its output whose side only depends on the
# square's size; everything else equals the unoccluded pass. So per position only
# those windows are recomputed (from the unoccluded maps with the changed window of
# the stage below laid over them), up to pool5; fc6..fc8 run on the whole pool5 map.
# At 224 px with a 32 px square the windows are 19/110 (conv1), 8/26 (conv2), 7, 9
# and 11/13 (conv3..conv5) wide: 0.31 of the whole forward's multiply-adds.


def _window_sides(config: model.Network, size: int) -> list[int]:
    """Side of the changed output window of every spatial op (network.spatial_ops order)."""
    sides, m = [], size
    for op in model.spatial_ops(config):
        m = min(op.output_size, (m + op.kernel - 2) // op.stride + 1)
        sides.append(m)
    return sides


def _overlay(window, start, patch, at):
    """A map's window (n, n, C) starting at ``start`` (2,), with ``patch`` (m, m, C),
    placed at map position ``at`` (2,), laid over it where they overlap."""
    n, m = window.shape[0], patch.shape[0]
    iy, ix = (start[i] + jnp.arange(n) - at[i] for i in (0, 1))
    inside = (((iy >= 0) & (iy < m))[:, None] & ((ix >= 0) & (ix < m))[None, :])
    taken = patch[jnp.clip(iy, 0, m - 1)][:, jnp.clip(ix, 0, m - 1)]
    return jnp.where(inside[..., None], taken, window)


def _post(op, x):
    """What follows an op's recorded (h, w, C) map before the next op reads it (its LRN, if any)."""
    return model.contrast_normalize(x[None], op.norm)[0] if op.norm is not None else x


def _incremental_readout(config, params, image, fill, clean, top, left, *, size, layer, channel,
                         y, x, label):
    """The readouts of the image occluded at (top, left), recomputing only changed windows.

    clean: layer -> the unoccluded (h, w, C) map (model.forward's activations of image).
    Every conv and pool of the network description is recomputed on the window the
    square can change; the stages after the last pool run on the whole map.
    """
    dtype = config.compute_dtype
    ops = model.spatial_ops(config)
    at = jnp.stack([top, left])
    patch = lax.dynamic_slice(fill, (top, left, 0), (size, size, fill.shape[-1]))
    below, followed = image, None
    for op, n_out in zip(ops, _window_sides(config, size)):
        k, s, p = op.kernel, op.stride, op.padding
        # First output window position that reads the changed window, kept inside the map.
        first = -(-(at + p - k + 1) // s)
        out_at = jnp.clip(first, 0, op.output_size - n_out)
        n_in, in_at = (n_out - 1) * s + k, out_at * s - p
        pad = 0.0 if op.kind == "conv" else -jnp.inf  # conv zero padding; pool -inf padding
        padded = jnp.pad(below, ((k, k), (k, k), (0, 0)), constant_values=pad)
        window = lax.dynamic_slice(padded, (in_at[0] + k, in_at[1] + k, 0),
                                   (n_in, n_in, below.shape[-1]))
        window = _overlay(window, in_at, patch, at)[None].astype(dtype)
        if op.kind == "conv":
            out = model.conv(op.stage, params, window, dtype, padding="VALID")
        else:
            exact = dataclasses.replace(op.stage, padding=0, ceil=False)  # padding is in the window
            out = model.max_pool_with_switches(window, exact)[0]
        out = jax.nn.relu(out)[0] if op.relu else out[0]
        if op.name == layer:
            followed = _overlay(clean[op.name], jnp.zeros(2, jnp.int32), out, out_at)
        at, below, patch = out_at, _post(op, clean[op.name]), _post(op, out)
    top_map = _overlay(below, jnp.zeros(2, jnp.int32), patch, at)
    flatten = next(i for i, st in enumerate(model.stages(config)) if isinstance(st, model.Flatten))
    logits, _, _ = model.apply_stages(config, params, top_map[None], flatten, record=False)
    return _scores(logits[0].astype(jnp.float32), followed[..., channel].astype(jnp.float32),
                   y, x, label)


@partial(jax.jit, static_argnames=("config", "layer", "size", "stride", "batch_size",
                                   "incremental"))
def occlusion_maps(config: model.Network, params, image, label, fill, *, layer: str, size: int,
                   stride: int, batch_size: int, incremental: bool = True) -> dict:
    """Slide a size x size square over one image (H, W, 3) with the given stride.

    label: int, the correct class (negative: use the class predicted on the
    unoccluded image). fill: (H, W, 3) network-input values under the square.
    The feature map followed is the layer's strongest on the unoccluded image
    (largest single activation), with its strongest unit at (y, x).
    incremental: recompute only the windows the square can change (same results;
    False runs the whole network on every occluded copy).

    Returns {'map_total', 'unit', 'p_true', 'top_class', 'top_prob'}: each (P, P)
    over occluder positions (row: top, column: left; see ``positions``), plus
    'clean' (the same five readouts of the unoccluded image, scalars), 'channel',
    'y', 'x', 'label' (int32 scalars).
    """
    clean_logits, aux = model.forward(config, params, image[None])
    clean = {name: a[0] for name, a in aux["activations"].items()}
    acts = clean[layer]  # (h, w, C)
    _, channel, y, x = strongest.strongest_map(acts)
    label = jnp.where(label < 0, jnp.argmax(clean_logits[0]), label).astype(jnp.int32)
    fill = jnp.broadcast_to(fill, image.shape).astype(image.dtype)

    def one(top_left):
        top, left = top_left
        if incremental:
            return _incremental_readout(config, params, image, fill, clean, top, left, size=size,
                                        layer=layer, channel=channel, y=y, x=x, label=label)
        logits, aux = model.forward(config, params, occlude(image, fill, top, left, size)[None])
        return _scores(logits[0], aux["activations"][layer][0, ..., channel].astype(jnp.float32),
                       y, x, label)

    steps = positions(config.image_size, size, stride)
    tops, lefts = (a.ravel() for a in jnp.meshgrid(steps, steps, indexing="ij"))
    out = jax.lax.map(one, (tops, lefts), batch_size=batch_size)
    p = len(steps)
    out = {key: value.reshape(p, p) for key, value in out.items()}
    out["clean"] = _scores(clean_logits[0], acts[..., channel].astype(jnp.float32), y, x, label)
    out.update(channel=channel, y=y.astype(jnp.int32), x=x.astype(jnp.int32), label=label)
    return out


@partial(jax.jit, static_argnames=("config", "layer"))
def map_projections(config: model.Network, params, images, channel, *, layer: str):
    """Project the strongest activation of feature map ``channel`` in each image (K, H, W, 3).

    Returns (projections (K, H, W, 3), y (K,), x (K,), value (K,)): paper Fig. 7 column (c).
    """
    _, aux = model.forward(config, params, images)
    k = images.shape[0]
    channels = jnp.full((k,), channel, jnp.int32)
    value, ys, xs = deconv.strongest(aux, layer, channel[None])  # (K, 1) each
    units = deconv.Units(jnp.arange(k, dtype=jnp.int32), channels, ys[:, 0], xs[:, 0])
    return deconv.project_units(config, params, aux, layer, units), ys[:, 0], xs[:, 0], value[:, 0]


def fill_values(fill: str, preprocess, size: int) -> np.ndarray:
    """Network-input values under the occluder for --fill.

    preprocess: the model's ``preprocessing.Preprocessing``; size: the input side.
    'gray': the mean (0 after mean subtraction, the paper's gray square);
    'black', 'white' or a number 0..255: that pixel value, preprocessed. Returns
    float32 (H, W, 3), the same shape for every fill (one compilation serves all).
    """
    named = {"black": 0.0, "white": 255.0}
    if fill == "gray":
        return np.zeros((size, size, 3), np.float32)
    try:
        value = named[fill] if fill in named else float(fill)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= 255:
        raise ValueError(f"--fill must be gray, black, white or a pixel value 0..255; got {fill!r}")
    return preprocess(np.full((1, size, size, 3), value, np.float32), size)[0]


def chosen_occluders(result: dict, steps: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The occluder positions whose projections column (c) shows: names, int (4, 2) (top, left).

    Unoccluded (-1, -1); where the map's total activation, p(correct class) and the
    strongest unit drop the most.
    """
    names, picks = ["unoccluded"], [(-1, -1)]
    for key, name in (("map_total", "map total lowest"), ("p_true", "p(class) lowest"),
                      ("unit", "unit lowest")):
        i, j = np.unravel_index(np.argmin(result[key]), result[key].shape)
        names.append(name)
        picks.append((steps[i], steps[j]))
    return names, np.array(picks, np.int32)


def projections_for(config, params, image, fill, channel, picks, size: int, layer: str):
    """Column (c): the map's top projection for the unoccluded image and occluded copies.

    picks int (K, 2) occluder (top, left), (-1, -1) meaning none. Returns float32 (K, H, W, 3).
    """
    copies = np.repeat(np.asarray(image, np.float32)[None], len(picks), axis=0)
    fill = np.broadcast_to(fill, image.shape)
    for copy, (t, l) in zip(copies, picks):
        if t >= 0:
            copy[t:t + size, l:l + size] = fill[t:t + size, l:l + size]
    projections, _, _, _ = map_projections(config, params, copies, jnp.int32(channel),
                                           layer=layer)
    return np.asarray(projections, np.float32)


# ---- the figure --------------------------------------------------------------------


def plot_occlusion(results, displays, projections, picks, pick_names, steps, size: int,
                   layer: str, class_names, image_names):
    """Paper Fig. 7: per image (rows), (a) input with occluder, (b) map total, (c)
    projections, (d) p(correct class), (e) most probable class, over occluder positions.

    results: list of N numpy dicts from ``occlusion_maps``; displays uint8 (N, H, W, 3);
    projections float32 (N, K, H, W, 3); picks int (N, K, 2). Returns a Figure.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle
    import matplotlib

    n = len(results)
    h = displays.shape[1]
    fig = Figure(figsize=(18, 3.6 * n + 0.6))
    outer = fig.add_gridspec(n, 5, width_ratios=[1, 1.25, 1, 1.25, 1.6], wspace=0.35, hspace=0.45)
    step = (steps[1] - steps[0]) if len(steps) > 1 else size
    centres = steps + size / 2
    extent = (centres[0] - step / 2, centres[-1] + step / 2, centres[-1] + step / 2,
              centres[0] - step / 2)
    name_of = lambda c: class_names[c] if class_names is not None and c < len(class_names) else str(c)
    palette = matplotlib.colormaps["tab20"].colors

    def square(ax, top, left, color):
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, lw=1.5,
                               edgecolor=color))

    def position_axes(ax, title):
        ax.set_xlim(-0.5, h - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("occluder centre x (px)", fontsize=8)
        ax.set_ylabel("occluder centre y (px)", fontsize=8)
        ax.tick_params(labelsize=7)

    for r, res in enumerate(results):
        label, channel = int(res["label"]), int(res["channel"])
        clean = res["clean"]
        # (a) the input, with the occluder that hurts the correct class most.
        ax = fig.add_subplot(outer[r, 0])
        ax.imshow(displays[r])
        square(ax, *picks[r][2], "red")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"(a) {image_names[r]}\ntrue: {name_of(label)}", fontsize=9)
        ax.set_xlabel("red: occluder of lowest p(true)", fontsize=8)
        # (b) total activation of the strongest feature map.
        ax = fig.add_subplot(outer[r, 1])
        im = ax.imshow(res["map_total"], extent=extent, cmap="viridis", interpolation="nearest")
        position_axes(ax, f"(b) {layer} map #{channel}: total activation\n"
                          f"(unoccluded: {float(clean['map_total']):.3g})")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
        # (c) projections of the map's top activation, unoccluded and occluded.
        cells = outer[r, 2].subgridspec(2, 2, wspace=0.08, hspace=0.3)
        shown = render.to_display(projections[r])
        for k in range(min(4, len(shown))):
            ax = fig.add_subplot(cells[k // 2, k % 2])
            ax.imshow(shown[k])
            if picks[r][k][0] >= 0:
                square(ax, *picks[r][k], "black")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(("(c) " if k == 0 else "") + pick_names[k], fontsize=7, pad=2)
        # (d) probability of the correct class.
        ax = fig.add_subplot(outer[r, 3])
        im = ax.imshow(res["p_true"], extent=extent, cmap="magma", vmin=0,
                       interpolation="nearest")
        position_axes(ax, f"(d) p({name_of(label)})\n(unoccluded: {float(clean['p_true']):.3f})")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
        # (e) most probable class, one colour per class present.
        ax = fig.add_subplot(outer[r, 4])
        present = np.unique(res["top_class"])
        index = np.searchsorted(present, res["top_class"])
        colours = [palette[(2 * i) % 20 + (2 * i) // 20 % 2] for i in range(len(present))]
        ax.imshow(index, extent=extent, cmap=ListedColormap(colours), vmin=-0.5,
                  vmax=len(present) - 0.5, interpolation="nearest")
        position_axes(ax, "(e) most probable class")
        handles = [Patch(color=colours[i], label=name_of(int(c)) + (" (true)" if c == label else ""))
                   for i, c in enumerate(present)]
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1),
                  borderaxespad=0, frameon=False)
    return fig


# ---- command line ------------------------------------------------------------------


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
    (layer,) = model.check_layers(config, [args.layer])
    size = args.size if args.size is not None else max(1, round(config.image_size / 7))
    stride = args.stride if args.stride is not None else max(1, round(config.image_size / 28))
    steps = positions(config.image_size, size, stride)
    fill = fill_values(args.fill, loaded.preprocessing, config.image_size)
    class_names = loaded.class_names
    if args.label is not None:
        labels = np.full(len(inputs), class_index(args.label, class_names, config.num_classes))
    elif labels is None:
        labels = np.full(len(inputs), -1)  # the predicted class

    results, projections, picks = [], [], []
    for image, label in zip(inputs, labels):
        res = jax.device_get(occlusion_maps(config, params, image, np.int32(label), fill,
                                            layer=layer, size=size, stride=stride,
                                            batch_size=args.batch_size or len(steps)))
        pick_names, pick = chosen_occluders(res, steps)
        projections.append(projections_for(config, params, image, fill, res["channel"], pick,
                                           size, layer))
        results.append(res)
        picks.append(pick)
    picks, projections = np.stack(picks), np.stack(projections)
    fig = plot_occlusion(results, display, projections, picks, pick_names, steps, size, layer,
                         render.class_labels(class_names), names)
    fig.suptitle(f"Occlusion ({size} px {args.fill} square, stride {stride}, "
                 f"{len(steps) ** 2} positions); {layer} map = the strongest on the unoccluded "
                 f"image", fontsize=11)
    arrays = {key: np.stack([r[key] for r in results])
              for key in ("map_total", "unit", "p_true", "top_class", "top_prob",
                          "channel", "y", "x", "label")}
    arrays.update({f"clean_{key}": np.stack([r["clean"][key] for r in results])
                   for key in results[0]["clean"]})
    arrays.update(positions=steps, size=np.int32(size), projections=projections,
                  projection_occluders=picks, names=np.array(names))
    out = cli.output_folder(args, info)
    return [artifacts.save_npz(out / "occlusion.npz", **arrays),
            artifacts.save_png(fig, out / "occlusion.png")]
