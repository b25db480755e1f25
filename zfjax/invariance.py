"""Invariance to vertical translation, scale and rotation (Zeiler & Fergus 2014, Fig. 5).

Each image is transformed by a sweep of amounts and run through the network.
For every amount we record the Euclidean distance between the feature vectors
of the original and the transformed image at layer 1 (``pool1`` by default,
or ``conv1``; flattened) and at layer 7 (``fc7``), and the softmax
probability of the image's true class.

Transformations run in JAX, batched over the images, as one bilinear affine
warp (``jax.scipy.ndimage.map_coordinates``, order 1) of the network inputs
about the image centre, so all three sweeps share one compiled loop:

* ``translate``: vertical shift by ``amount`` pixels, positive = down;
* ``scale``: zoom by the ratio ``amount`` (> 1 enlarges; no anti-aliasing,
  so ratios well below 1 alias);
* ``rotate``: ``amount`` degrees counter-clockwise.

Edges: pixels that come from outside the image are 0, i.e. the mean image
(inputs are mean-subtracted), so nothing wraps around or gets smeared.
The identity (0 px, ratio 1, 0 degrees) returns the input exactly, and the
reference features are computed by the same compiled loop at the identity,
so an identity amount gives distance 0 exactly.
"""

from __future__ import annotations

import argparse
import pathlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.ndimage import map_coordinates

from zfjax import argtypes, artifacts, cli, model

TRANSFORMS = ("translate", "scale", "rotate")
AXIS_LABELS = {"translate": "vertical translation (pixels)", "scale": "scale (ratio)",
               "rotate": "rotation (degrees)"}
LAYER1_CHOICES = ("pool1", "conv1")
LAYER7 = "fc7"
IMAGES = 5  # the paper's five example images


def default_amounts(kind: str, image_size: int) -> np.ndarray:
    """The paper's sweeps: -60..60 px (scaled from 224 px), ratio 1..1.8, 0..350 degrees."""
    if kind == "translate":
        return np.linspace(-60, 60, 13, dtype=np.float32) * image_size / 224
    if kind == "scale":
        return np.linspace(1.0, 1.8, 9, dtype=np.float32)
    if kind == "rotate":
        return np.arange(0, 360, 10, dtype=np.float32)
    raise _unknown_transform(kind)


def _unknown_transform(kind) -> ValueError:
    return ValueError(f"unknown transformation {kind!r}; expected one of {', '.join(TRANSFORMS)}")


def affine(kind: str, amounts) -> tuple[np.ndarray, np.ndarray]:
    """Each amount as an inverse map ``source = A @ (output - c) + c + b`` about the
    centre c: (A float32 (T, 2, 2), b float32 (T, 2)) in (y, x) order."""
    amounts = np.atleast_1d(np.asarray(amounts, np.float64))
    t = len(amounts)
    eye = np.broadcast_to(np.eye(2), (t, 2, 2))
    zero = np.zeros((t, 2))
    if kind == "translate":
        a, b = eye, np.stack([-amounts, np.zeros(t)], axis=1)
    elif kind == "scale":
        if np.any(amounts <= 0):
            raise ValueError(f"scale ratios must be positive, got {amounts.min():g}")
        a, b = eye / amounts[:, None, None], zero
    elif kind == "rotate":
        # Counter-clockwise on screen (y points down): sample the inverse rotation.
        theta = np.deg2rad(amounts)
        cos, sin = np.cos(theta), np.sin(theta)
        a, b = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], 1), zero
    else:
        raise _unknown_transform(kind)
    return np.asarray(a, np.float32), np.asarray(b, np.float32)


def warp(images: jax.Array, matrix: jax.Array, offset: jax.Array) -> jax.Array:
    """Warp images (N, H, W, C) by one inverse affine map (see ``affine``); pixels
    sampled from outside the image are 0. Same shape."""
    n, h, w, c = images.shape
    if h != w:
        raise ValueError(f"warp needs square images, got {h}x{w}")
    centre = (h - 1) / 2
    grid = jnp.stack(jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                                  jnp.arange(w, dtype=jnp.float32), indexing="ij"))
    coords = jnp.einsum("ij,jhw->ihw", matrix, grid - centre) + centre + offset[:, None, None]
    one_plane = lambda plane: map_coordinates(plane, [coords[0], coords[1]], order=1,
                                              mode="constant", cval=0.0)
    # vmap over images and channels: (N, H, W, C) -> planes (H, W).
    return jax.vmap(jax.vmap(one_plane, in_axes=2, out_axes=2))(images)


@jax.jit
def _transform(images, matrices, offsets):
    return lax.map(lambda m: warp(images, *m), (matrices, offsets))


def transform(images, kind: str, amounts) -> jax.Array:
    """Images (N, H, W, C) under each amount (T,) of one transformation: (T, N, H, W, C)."""
    return _transform(images, *affine(kind, amounts))


@partial(jax.jit, static_argnames=("config", "layer1"))
def _sweep(config, params, images, matrices, offsets, layer1):
    # Step 0 is the identity; its features are the reference.
    matrices = jnp.concatenate([jnp.eye(2, dtype=jnp.float32)[None], matrices])
    offsets = jnp.concatenate([jnp.zeros((1, 2), jnp.float32), offsets])

    def one(m):
        logits, aux = model.forward(config, params, warp(images, *m))
        acts = aux["activations"]
        return (acts[layer1].reshape(len(images), -1).astype(jnp.float32),
                acts[LAYER7].astype(jnp.float32), jax.nn.softmax(logits))

    f1, f7, probs = lax.map(one, (matrices, offsets))  # (T + 1, N, ...)
    distance = lambda f: jnp.sqrt(jnp.sum(jnp.square(f[1:] - f[:1]), axis=-1)).T
    return {"layer1": distance(f1), "layer7": distance(f7),
            "probs": jnp.swapaxes(probs[1:], 0, 1), "reference_probs": probs[0]}


def sweep(config: model.Network, params, images, sweeps: dict,
          layer1: str = "pool1") -> dict:
    """Feature distances and class probabilities along transformation sweeps.

    images: (N, H, W, 3) network inputs; sweeps: kind -> amounts (T_kind,).
    Returns kind -> {
      'layer1' float32 (N, T)  ||f1(x) - f1(warp(x, a))||, f1 = layer1 flattened,
      'layer7' float32 (N, T)  the same for fc7,
      'probs'  float32 (N, T, classes)  softmax of the transformed images,
      'reference_probs' float32 (N, classes)  softmax of the originals}.
    All sweeps run in one compiled loop over the amounts (one forward of the
    N images per amount; the first step is the identity, the reference).
    """
    if layer1 not in LAYER1_CHOICES:
        raise ValueError(f"unknown layer-1 features {layer1!r}; expected one of "
                         f"{', '.join(LAYER1_CHOICES)}")
    maps = [affine(kind, amounts) for kind, amounts in sweeps.items()]
    result = jax.device_get(_sweep(config, params, images,
                                   np.concatenate([m for m, _ in maps]),
                                   np.concatenate([b for _, b in maps]), layer1))
    out, start = {}, 0
    for kind, (m, _) in zip(sweeps, maps):
        part = slice(start, start + len(m))
        out[kind] = {"layer1": result["layer1"][:, part], "layer7": result["layer7"][:, part],
                     "probs": result["probs"][:, part],
                     "reference_probs": result["reference_probs"]}
        start += len(m)
    return out


def true_class_probability(result: dict, labels) -> np.ndarray:
    """P(true class) per image and amount (N, T); labels None: the class predicted
    for the original image stands in for the true one."""
    probs = np.asarray(result["probs"])
    if labels is None:
        labels = np.asarray(result["reference_probs"]).argmax(-1)
    labels = np.asarray(labels)
    return probs[np.arange(len(labels)), :, labels]


# ---- the figure --------------------------------------------------------------------


def plot_invariance(curves: dict, examples: dict, names, *, layer1: str = "pool1",
                    title: str | None = None):
    """The paper's Fig. 5 layout: rows translate / scale / rotate; columns: example
    transformed images, layer-1 distance, layer-7 distance, P(true class).

    curves: kind -> {'amounts' (T,), 'layer1' (N, T), 'layer7' (N, T), 'prob' (N, T)};
    examples: kind -> (amounts (E,), uint8 images (E, H, W, 3)) of the first image.
    Returns a matplotlib Figure.
    """
    from matplotlib.figure import Figure

    kinds = [k for k in TRANSFORMS if k in curves]
    fig = Figure(figsize=(17, 3.6 * len(kinds)), layout="constrained")
    axes = fig.subplots(len(kinds), 4, squeeze=False, width_ratios=[1.5, 1, 1, 1])
    colours = [f"C{i}" for i in range(len(names))]
    for row, kind in zip(axes, kinds):
        c = curves[kind]
        amounts, pictures = examples[kind]
        row[0].imshow(np.concatenate(list(pictures), axis=1), interpolation="nearest")
        row[0].set_xticks([(i + 0.5) * pictures.shape[2] for i in range(len(amounts))],
                          [_amount_label(kind, a) for a in amounts], fontsize=8)
        row[0].set_yticks([])
        row[0].set_title(f"{kind}: {names[0]}", fontsize=9)
        for ax, key, label in ((row[1], "layer1", f"distance, layer 1 ({layer1})"),
                               (row[2], "layer7", f"distance, layer 7 ({LAYER7})"),
                               (row[3], "prob", "P(true class)")):
            for i, name in enumerate(names):
                ax.plot(c["amounts"], c[key][i], "-o", ms=3, color=colours[i], label=name)
            ax.set_xlabel(AXIS_LABELS[kind], fontsize=9)
            ax.set_ylabel(label, fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
        row[3].set_ylim(-0.02, 1.02)
    fig.legend(*axes[0, 1].get_legend_handles_labels(), loc="outside lower center",
               ncol=min(len(names), 5), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _amount_label(kind: str, amount: float) -> str:
    return {"translate": f"{amount:+.0f} px", "scale": f"x{amount:.2f}",
            "rotate": f"{amount:.0f}°"}[kind]


def example_amounts(amounts: np.ndarray, count: int = 4) -> np.ndarray:
    """``count`` amounts spread over a sweep (ends included), for the example column."""
    idx = np.unique(np.linspace(0, len(amounts) - 1, count).round().astype(int))
    return np.asarray(amounts)[idx]


# ---- command line ------------------------------------------------------------------


def add_cli(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "invariance", help="Fig. 5: feature distance and P(true class) under translation, "
                           "scale and rotation")
    cli.add_input_arguments(parser, count_help=f"images to analyse (default {IMAGES})")
    parser.add_argument("--layer1", default="pool1", choices=LAYER1_CHOICES,
                        help="layer-1 features to compare (default pool1)")
    parser.add_argument("--translations", type=argtypes.finite_float, nargs="+", metavar="PX",
                        help="vertical shifts in pixels (default -60..60 step 10, scaled to "
                             "the image size from 224)")
    parser.add_argument("--scales", type=argtypes.positive_float, nargs="+", metavar="RATIO",
                        help="zoom ratios (default 1.0..1.8 step 0.1)")
    parser.add_argument("--rotations", type=argtypes.finite_float, nargs="+", metavar="DEG",
                        help="rotations in degrees (default 0..350 step 10)")
    parser.set_defaults(run=run_cli)
    return parser


def run_cli(args) -> list[pathlib.Path]:
    chosen = {"translate": args.translations, "scale": args.scales, "rotate": args.rotations}
    loaded, (inputs, display, labels, names) = cli.load_analysis_inputs(args, args.limit or IMAGES)
    params, config, info = loaded.params, loaded.config, loaded.info
    sweeps = {kind: np.asarray(chosen[kind] if chosen[kind] else
                               default_amounts(kind, config.image_size), np.float32)
              for kind in TRANSFORMS}
    results = sweep(config, params, inputs, sweeps, args.layer1)
    curves, examples, arrays = {}, {}, {}
    for kind, amounts in sweeps.items():
        result = results[kind]
        prob = true_class_probability(result, labels)
        curves[kind] = {"amounts": amounts, "layer1": result["layer1"],
                        "layer7": result["layer7"], "prob": prob}
        shown = example_amounts(amounts)
        pictures = loaded.preprocessing.to_pixels(
            np.asarray(transform(inputs[:1], kind, shown))[:, 0])
        examples[kind] = (shown, pictures)
        arrays.update({f"{kind}/amounts": amounts, f"{kind}/layer1_distance": result["layer1"],
                       f"{kind}/layer7_distance": result["layer7"],
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
