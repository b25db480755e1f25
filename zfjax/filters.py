"""First-layer filters and second-layer features (Zeiler & Fergus 2014, Fig. 6).

* ``filter_patches``: the conv1 filters as colour patches, each contrast-
  normalised on its own (min -> 0, max -> 1), so a weak filter is as visible
  as a strong one; ``filter_rms`` gives the strengths that this hides (the
  paper's point in Fig. 6(a): without renormalising filters whose RMS exceeds
  a fixed radius, a few filters dominate).
* ``layer2_features``: for the conv2 maps with the strongest activations over
  a set of images, the deconvnet projection of each map's strongest activation,
  cropped to its receptive field (Fig. 6(d, e)).
* ``grid``: patches laid out row-major, filter k at row k // columns, column
  k % columns.

``visualize.py filters RUN [--compare OTHER_RUN]`` draws them, side by side
for two runs (e.g. with and without filter renormalisation).
"""

from __future__ import annotations

import argparse
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from zfjax import argtypes, artifacts, cli, evolution, model, render

MAPS = 36  # conv2 maps shown
IMAGES = 100  # images searched for their strongest activations


@jax.jit
def filter_patches(kernel: jax.Array) -> jax.Array:
    """conv1 kernel HWIO (k, k, 3, K) -> K patches (K, k, k, 3) in [0, 1], each
    stretched from its own min to max; a constant filter is mid-gray."""
    patches = jnp.moveaxis(kernel.astype(jnp.float32), -1, 0)
    low = patches.min(axis=(1, 2, 3), keepdims=True)
    span = patches.max(axis=(1, 2, 3), keepdims=True) - low
    return jnp.where(span > 0, (patches - low) / jnp.where(span > 0, span, 1), 0.5)


@jax.jit
def filter_rms(kernel: jax.Array) -> jax.Array:
    """RMS of each filter of an HWIO kernel: (K,), the quantity the training's
    filter renormalisation caps."""
    return jnp.sqrt(jnp.mean(jnp.square(kernel.astype(jnp.float32)), axis=(0, 1, 2)))


def grid(patches: np.ndarray, columns: int | None = None, *, pad: int = 1,
         fill=1.0) -> np.ndarray:
    """Lay K patches (K, h, w, C) out row-major: (rows*(h+pad)+pad, columns*(w+pad)+pad, C).

    Patch k goes to row k // columns, column k % columns, its top-left pixel at
    ``cell_origin(k, ...)``; gaps and unused cells hold ``fill``. columns
    defaults to ceil(sqrt(K)).
    """
    patches = np.asarray(patches)
    k, h, w, c = patches.shape
    columns = columns or math.ceil(math.sqrt(k))
    rows = math.ceil(k / columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), fill, patches.dtype)
    for i, patch in enumerate(patches):
        top, left = cell_origin(i, columns, h, w, pad)
        out[top:top + h, left:left + w] = patch
    return out


def cell_origin(index: int, columns: int, h: int, w: int, pad: int = 1) -> tuple[int, int]:
    """Top-left pixel (y, x) of patch ``index`` in ``grid``'s layout."""
    row, col = divmod(index, columns)
    return pad + row * (h + pad), pad + col * (w + pad)


def strongest_maps(config: model.Network, params, inputs: np.ndarray, count: int,
                   layer: str = "conv2") -> np.ndarray:
    """The ``count`` maps of ``layer`` whose strongest activation over ``inputs`` is
    largest, strongest first: int32 (count,)."""
    channels = np.arange(model.num_channels(config, layer), dtype=np.int32)
    probe = evolution.Probe(inputs, np.zeros(inputs.shape, np.uint8), {layer: channels})
    value = evolution.strongest_in_probe(config, params, probe)[layer][0]
    return channels[np.argsort(-value, kind="stable")[:count]]


def layer2_features(config: model.Network, params, inputs: np.ndarray,
                    display: np.ndarray, channels, layer: str = "conv2") -> dict:
    """Strongest activation of each given map over the images, projected to pixels.

    inputs float32 (N, H, W, 3), display uint8 (N, H, W, 3), channels int (M,).
    Returns {'channels', 'values' (M,), 'images' (M,), 'positions' (M, 2),
    'projections' float32 (M, R, R, 3), 'patches' uint8 (M, R, R, 3)} with R the
    layer's receptive field (see ``evolution.take_snapshot``).
    """
    probe = evolution.Probe(inputs, display, {layer: np.asarray(channels, np.int32)})
    snapshot = evolution.take_snapshot(config, params, probe)
    return {key.split("/", 1)[1]: value for key, value in snapshot.items()}


def check_comparable(kernel_a, kernel_b, name_a: str, name_b: str) -> None:
    """Raise ValueError unless two runs' conv1 kernels have one shape."""
    a, b = tuple(np.shape(kernel_a)), tuple(np.shape(kernel_b))
    if a != b:
        raise ValueError(
            f"cannot compare filters: {name_a} has conv1 filters {_describe(a)} but {name_b} "
            f"has {_describe(b)}; compare runs of the same architecture (width, image size)")


def _describe(shape) -> str:
    k, _, c, n = shape
    return f"{n} x ({k}x{k}x{c})"


# ---- the figure --------------------------------------------------------------------


def plot_filters(panels: list[dict], title: str | None = None):
    """One column per run: conv1 filter grid, conv1 filter RMS, conv2 features.

    Each panel: {'name', 'kernel' HWIO conv1 kernel, 'radius' float or None,
    'features' (``layer2_features`` output, or None), 'images' int (searched)}.
    Returns a matplotlib Figure.
    """
    from matplotlib.figure import Figure

    has_features = any(p.get("features") is not None for p in panels)
    rows = 3 if has_features else 2
    fig = Figure(figsize=(6.2 * len(panels), 6.4 + 5.4 * has_features), layout="constrained")
    axes = fig.subplots(rows, len(panels), squeeze=False,
                        height_ratios=[3, 1.4, 3.4][:rows])
    top = max(float(np.asarray(filter_rms(p["kernel"])).max()) for p in panels)
    for col, panel in zip(axes.T, panels):
        kernel = np.asarray(panel["kernel"])
        k, _, _, n = kernel.shape
        col[0].imshow(grid(np.asarray(filter_patches(kernel))), interpolation="nearest")
        col[0].set_title(f"{panel['name']}\nconv1: {n} filters, {k}x{k}, each stretched "
                         f"min..max", fontsize=9)
        col[0].axis("off")
        rms = np.asarray(filter_rms(kernel))
        col[1].bar(np.arange(n), rms, width=1.0, color="C0")
        if panel.get("radius"):
            col[1].axhline(panel["radius"], color="C3", ls="--", lw=1,
                           label=f"renormalisation radius {panel['radius']:g}")
            col[1].legend(fontsize=7, loc="upper right")
        col[1].set_ylim(0, top * 1.1)
        col[1].set_xlim(-0.5, n - 0.5)
        col[1].set_xlabel("conv1 filter", fontsize=8)
        col[1].set_ylabel("RMS", fontsize=8)
        col[1].set_title("conv1 filter strength (RMS of weights)", fontsize=9)
        col[1].tick_params(labelsize=7)
        if has_features:
            f = panel.get("features")
            if f is None:
                col[2].axis("off")
                continue
            cells, _ = render.fit_pairs(f["projections"], f["patches"],
                                        render.display_side(f["projections"].shape[1]))
            col[2].imshow(grid(cells, fill=255), interpolation="nearest")
            col[2].set_title(f"conv2: strongest activation of its {len(cells)} most active "
                             f"maps\nover {panel['images']} images, deconvnet projections "
                             f"({f['projections'].shape[1]} px RF)", fontsize=9)
            col[2].axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


# ---- command line ------------------------------------------------------------------


def add_cli(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "filters", help="Fig. 6: conv1 filters and conv2 features, optionally of two runs")
    cli.add_input_arguments(
        parser, count_help=f"images searched for conv2 features (default {IMAGES})")
    parser.add_argument("--compare", metavar="OTHER_RUN", default=None,
                        help="a second run or checkpoint to show side by side (e.g. trained "
                             "without filter renormalisation)")
    parser.add_argument("--maps", type=argtypes.nonnegative_int, default=MAPS,
                        help=f"conv2 maps shown per run (default {MAPS}; 0: filters only)")
    parser.set_defaults(run=run_cli)
    return parser


def _radius(info: dict) -> tuple[float | None, str]:
    """(filter renormalisation radius or None, a note for titles) as the run recorded it."""
    train = info.get("train")
    if not isinstance(train, dict) or "filter_radius" not in train:
        return None, ""
    radius = train["filter_radius"]
    return radius, (f"filter radius {radius:g}" if radius else "no filter renormalisation")


def run_cli(args) -> list[pathlib.Path]:
    models = [cli.load_model(args)] + ([cli.load_model(args.compare)] if args.compare else [])
    targets = [args.target or args.weights] + ([args.compare] if args.compare else [])
    first = [model.conv_layers(m.config)[0] for m in models]
    if args.compare:
        check_comparable(models[0].params[first[0]]["kernel"], models[1].params[first[1]]["kernel"],
                         targets[0], args.compare)
    panels, arrays = [], {}
    for i, (target, loaded) in enumerate(zip(targets, models)):
        params, config, info = loaded.params, loaded.config, loaded.info
        second = model.conv_layers(config)[1]
        features, count = None, 0
        if args.maps:
            stored, _, _ = cli.load_stored_images(args, config, info, args.limit or IMAGES)
            inputs, display, _, _ = cli.images_for(loaded, stored)
            count = len(inputs)
            maps = strongest_maps(config, params, inputs,
                                  min(args.maps, model.num_channels(config, second)), layer=second)
            features = layer2_features(config, params, inputs, display, maps, layer=second)
        kernel = np.asarray(params[model.conv_layers(config)[0]]["kernel"])
        radius, note = _radius(info)
        panels.append({"name": cli.run_label(target, info) + (f" ({note})" if note else ""),
                       "kernel": kernel, "radius": radius, "features": features,
                       "images": count})
        prefix = f"run{i}/"
        arrays[prefix + "conv1_kernel"] = kernel
        arrays[prefix + "conv1_rms"] = np.asarray(filter_rms(kernel))
        arrays[prefix + "target"] = np.asarray(str(target))
        if features is not None:
            arrays.update({prefix + "conv2/" + k: v for k, v in features.items()})
    out = cli.output_folder(args, models[0].info)
    name = "filters_compare" if args.compare else "filters"
    fig = plot_filters(panels, title="First-layer filters and second-layer features (Fig. 6)")
    npz = artifacts.save_npz(out / f"{name}.npz", **arrays)
    png = artifacts.save_png(fig, out / f"{name}.png")
    return [png, npz]
