"""Correspondence of object parts across images (Zeiler & Fergus 2014, Table 1).

For N images of one kind of object (the paper: 5 frontal dog faces) the same
part (left eye, nose, ...) is masked in every image, and so are random boxes
of the same size. For image i and layer l,

    eps_i^l = x_i^l - x~_i^l

is the change of its feature vector when masked. The consistency of these
changes across images is

    Delta_l = 1 / (N (N-1)) * sum_{i != j} H(sign(eps_i^l), sign(eps_j^l))

with H the Hamming distance as a *fraction* of the vector length. The paper
writes the plain sum over pairs, but its numbers (0.07 for eyes to 0.11 for
random boxes at layer 5, about 0.4 at layer 7) can only be fractions averaged
over the pairs: a sum of 20 ordered pairs of fractions would be 20 times
larger, and an unnormalised count would be in the thousands. Lower Delta
means the part changes the representation in a more consistent way.

Masked pixels are set to 0 after mean subtraction, i.e. to the mean image
(the paper's gray). Layer 5 is ``pool5`` by default (the layer-5 output that
feeds fc6; ``conv5`` also works), layer 7 is ``fc7`` (after ReLU). A zero
change counts as its own sign (sign(0) = 0).

Parts file (JSON), boxes ``[top, left, bottom, right]`` in pixels of the
original image file, half-open; paths relative to the JSON file's folder::

    {"images": [{"path": "dog1.jpg",
                 "parts": {"left_eye": [40, 60, 58, 80], "nose": [...]}}, ...]}

Every image needs the same parts. The boxes are mapped onto the network's
input the way the image is (shorter side resized, centre crop) and cut to it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import pathlib
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from PIL import Image

from zfjax import argtypes, artifacts, cli, data, model

LAYERS = ("pool5", "fc7")
RANDOM = "random"


# ---- the core ----------------------------------------------------------------------


def box_masks(boxes: np.ndarray, size: int) -> np.ndarray:
    """Boolean masks (..., size, size) of half-open boxes (..., 4) [top, left, bottom, right]."""
    boxes = np.asarray(boxes)
    rows, cols = np.arange(size), np.arange(size)
    top, left, bottom, right = (boxes[..., i, None] for i in range(4))
    in_rows = (rows >= top) & (rows < bottom)
    in_cols = (cols >= left) & (cols < right)
    return in_rows[..., :, None] & in_cols[..., None, :]


@partial(jax.jit, static_argnames=("config", "layers"))
def hamming_matrices(config: model.Network, params, images: jax.Array, masks: jax.Array, *,
                     layers: tuple[str, ...] = LAYERS) -> dict:
    """Pairwise sign disagreement of the feature changes under each set of masks.

    images: (N, H, W, 3) network inputs; masks: bool (M, N, H, W), one mask per
    image in each of M sets. Returns layer -> float32 (M, N, N) with entry
    [m, i, j] = H(sign(eps_i), sign(eps_j)) as a fraction of the layer's size,
    eps_i = features(image i) - features(image i masked by masks[m, i]).
    """
    # The reference is step 0 of the same loop (an empty mask), so an empty
    # mask gives eps = 0 exactly.
    steps = jnp.concatenate([jnp.zeros_like(masks[:1]), masks])

    def features(mask):
        _, aux = model.forward(config, params, jnp.where(mask[..., None], 0, images))
        return {l: aux["activations"][l].reshape(len(images), -1).astype(jnp.float32)
                for l in layers}

    feats = lax.map(features, steps)
    out = {}
    for layer in layers:
        signs = jnp.sign(feats[layer][:1] - feats[layer][1:])  # (M, N, D)
        out[layer] = jnp.mean(signs[:, :, None] != signs[:, None], axis=-1)
    return out


def hamming(a, b) -> float:
    """H(sign(a), sign(b)) as a fraction of the length (the reference definition)."""
    return float(np.mean(np.sign(a) != np.sign(b)))


def delta(h: np.ndarray) -> np.ndarray:
    """Delta from pairwise matrices (..., N, N): mean of H over the pairs i != j."""
    h = np.asarray(h)
    n = h.shape[-1]
    off = ~np.eye(n, dtype=bool)
    return h[..., off].mean(axis=-1)


def pair_values(h: np.ndarray) -> np.ndarray:
    """H over the unordered pairs i < j: (..., N (N-1) / 2)."""
    n = h.shape[-1]
    i, j = np.triu_indices(n, 1)
    return np.asarray(h)[..., i, j]


# ---- parts file --------------------------------------------------------------------


class Parts(NamedTuple):
    """A validated parts file."""

    paths: list[pathlib.Path]  # image files
    names: tuple[str, ...]  # part names, in file order
    boxes: np.ndarray  # int (N, P, 4) in the original images' pixels
    sizes: np.ndarray  # int (N, 2) original (height, width)


def read_parts(path) -> Parts:
    """Read and check a parts file; one-line ValueError / FileNotFoundError otherwise."""
    path = pathlib.Path(path)
    example = '{"images": [{"path": "dog.jpg", "parts": {"left_eye": [top, left, bottom, right]}}]}'
    if not path.is_file():
        raise FileNotFoundError(f"parts file {path} does not exist; write one like {example}")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"parts file {path} is not valid JSON ({err}); expected {example}") from None
    entries = spec.get("images") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or len(entries) < 2:
        raise ValueError(f"parts file {path} needs an 'images' list of at least 2 entries; "
                         f"expected {example}")
    paths, boxes, sizes, names = [], [], [], None
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) \
                or not isinstance(entry.get("parts"), dict) or not entry["parts"]:
            raise ValueError(f"parts file {path}: entry {k} needs a 'path' string and a "
                             f"non-empty 'parts' object; expected {example}")
        image = pathlib.Path(entry["path"]).expanduser()
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise FileNotFoundError(f"image {image} (entry {k} of parts file {path}) does not exist")
        try:
            with Image.open(image) as im:
                width, height = im.size
        except Exception as err:
            raise ValueError(f"cannot read image {image} (entry {k} of {path}): {err}") from None
        parts = entry["parts"]
        if names is None:
            names = tuple(parts)
        elif set(parts) != set(names):
            raise ValueError(f"image {image} has parts {sorted(parts)} but {paths[0]} has "
                             f"{sorted(names)}; every image needs the same parts")
        row = []
        for name in names:
            box = parts[name]
            if (not isinstance(box, list) or len(box) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
                raise ValueError(f"image {image}: part {name!r} box {box!r} is not "
                                 f"[top, left, bottom, right] (4 numbers)")
            top, left, bottom, right = box
            if not (0 <= top < bottom <= height and 0 <= left < right <= width):
                raise ValueError(
                    f"image {image}: part {name!r} box [top, left, bottom, right] = {box} lies "
                    f"outside the {height}x{width} (height x width) image or is empty; need "
                    f"0 <= top < bottom <= {height} and 0 <= left < right <= {width}")
            row.append(box)
        paths.append(image)
        boxes.append(row)
        sizes.append((height, width))
    return Parts(paths, names, np.asarray(boxes, np.float64), np.asarray(sizes, np.int64))


def input_boxes(parts: Parts, image_size: int) -> np.ndarray:
    """Parts' boxes on the network input: int (N, P, 4), following data's resize and crops.

    Raises ValueError naming image and part if a box falls outside the centre crop.
    """
    stored = data.stored_size(image_size)
    crop = (stored - image_size) // 2
    out = np.zeros(parts.boxes.shape, np.int64)
    for i, ((height, width), image) in enumerate(zip(parts.sizes, parts.paths)):
        side = min(height, width)
        scale = stored / side
        offset = np.array([(height - side) / 2, (width - side) / 2] * 2)
        mapped = (parts.boxes[i] - offset) * scale - crop
        lo = np.clip(np.floor(mapped[:, :2]), 0, image_size)
        hi = np.clip(np.ceil(mapped[:, 2:]), 0, image_size)
        out[i] = np.concatenate([lo, hi], axis=1)
        for p, name in enumerate(parts.names):
            if not (out[i, p, 0] < out[i, p, 2] and out[i, p, 1] < out[i, p, 3]):
                raise ValueError(
                    f"image {image}: part {name!r} box {parts.boxes[i, p].astype(int).tolist()} "
                    f"lies outside the centre square the network sees ({image_size} px of the "
                    f"shorter side); mark parts inside the image's centre square")
    return out


def random_boxes(boxes: np.ndarray, image_size: int, draws: int, seed: int) -> np.ndarray:
    """Boxes of the same sizes as ``boxes`` (N, P, 4) at uniform random places fully
    inside the input: int (draws, N, P, 4), from np.random.default_rng(seed)."""
    rng = np.random.default_rng(seed)
    heights = boxes[..., 2] - boxes[..., 0]
    widths = boxes[..., 3] - boxes[..., 1]
    top = rng.integers(0, image_size - heights + 1, (draws,) + heights.shape)
    left = rng.integers(0, image_size - widths + 1, (draws,) + widths.shape)
    return np.stack([top, left, top + heights, left + widths], axis=-1)


# ---- the table ---------------------------------------------------------------------


def table(h: dict, part_names, draws: int, layers=None) -> list[dict]:
    """Rows of Table 1 from ``hamming_matrices`` run on the masks of ``mask_sets``.

    Parts: Delta and its std over the image pairs. Random: each draw's Delta
    (averaged over boxes the size of each part), then mean and std over draws.
    """
    rows = []
    p = len(part_names)
    for layer in layers or h:
        mats = np.asarray(h[layer])
        for k, name in enumerate(part_names):
            pairs = pair_values(mats[k])
            rows.append({"layer": layer, "part": name, "delta": float(delta(mats[k])),
                         "std": float(pairs.std()), "std_over": "image pairs",
                         "count": len(pairs)})
        per_draw = delta(mats[p:].reshape(draws, p, *mats.shape[1:])).mean(axis=1)
        rows.append({"layer": layer, "part": RANDOM, "delta": float(per_draw.mean()),
                     "std": float(per_draw.std()), "std_over": "draws", "count": draws})
    return rows


def mask_sets(boxes: np.ndarray, random: np.ndarray, image_size: int) -> np.ndarray:
    """Masks (P + draws*P, N, H, W): each part in every image, then each draw's boxes."""
    n, p, _ = boxes.shape
    sets = np.concatenate([np.swapaxes(boxes, 0, 1),
                           np.swapaxes(random, 1, 2).reshape(-1, n, 4)])
    return box_masks(sets, image_size)


def format_table(rows: list[dict]) -> str:
    """The table as text: one line per part, one column per layer, 'mean ± std'."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    parts = list(dict.fromkeys(r["part"] for r in rows))
    cell = {(r["layer"], r["part"]): f"{r['delta']:.3f} ± {r['std']:.3f}" for r in rows}
    width = max(len(p) for p in parts + ["part"])
    lines = [f"{'part':<{width}}  " + "  ".join(f"{'Delta ' + l:>15}" for l in layers)]
    for part in parts:
        lines.append(f"{part:<{width}}  " + "  ".join(f"{cell[l, part]:>15}" for l in layers))
    lines.append("(parts: ± std over image pairs; random: ± std over draws)")
    return "\n".join(lines)


def table_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["layer", "part", "delta", "std", "std_over", "count"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "delta": f"{r['delta']:.6f}", "std": f"{r['std']:.6f}"} for r in rows)
    return out.getvalue()


# ---- the figure --------------------------------------------------------------------


def plot_correspondence(display: np.ndarray, boxes: np.ndarray, random: np.ndarray,
                        part_names, rows: list[dict], names, title: str | None = None):
    """Images with their part boxes (solid) and the first random draw (dashed),
    and Delta per part and layer with error bars. Returns a matplotlib Figure."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n = len(display)
    fig = Figure(figsize=(max(2.4 * n, 8), 6.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.3])
    axes = np.atleast_1d(top.subplots(1, n))
    for i, ax in enumerate(axes):
        ax.imshow(display[i], interpolation="nearest")
        for p, name in enumerate(part_names):
            for box, style in ((boxes[i, p], "-"), (random[0, i, p], ":")):
                t, l, b, r = box
                ax.add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, lw=1.5,
                                       ls=style, color=f"C{p}",
                                       label=name if style == "-" and i == 0 else None))
        ax.set_title(names[i], fontsize=8)
        ax.axis("off")
    top.legend(loc="outside right center", fontsize=8,
               title="parts (dotted: a random box\nof the same size)", title_fontsize=7)
    ax = bottom.subplots()
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    parts = list(dict.fromkeys(r["part"] for r in rows))
    width = 0.8 / len(layers)
    for k, layer in enumerate(layers):
        sel = [next(r for r in rows if r["layer"] == layer and r["part"] == p) for p in parts]
        ax.bar(np.arange(len(parts)) + (k - (len(layers) - 1) / 2) * width,
               [r["delta"] for r in sel], width, yerr=[r["std"] for r in sel], capsize=3,
               label=f"layer {layer}", color=f"C{k}")
    ax.set_xticks(np.arange(len(parts)), parts)
    ax.set_ylabel("Delta: mean sign disagreement\nof feature changes over image pairs")
    ax.set_title("Part correspondence (Table 1): lower = more consistent; error bars: std "
                 "over image pairs (parts) or draws (random)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


# ---- command line ------------------------------------------------------------------


def add_cli(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "correspondence", help="Table 1: consistency of feature changes when the same part "
                               "is masked in several images")
    cli.add_model_arguments(parser)
    parser.add_argument("--parts", required=True, type=pathlib.Path, metavar="JSON",
                        help='parts file: {"images": [{"path": ..., "parts": {"left_eye": '
                             '[top, left, bottom, right], ...}}, ...]} in image pixels')
    parser.add_argument("--draws", type=argtypes.positive_int, default=10,
                        help="random-box draws for the 'random' row (default 10)")
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the random boxes")
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), metavar="LAYER",
                        help=f"layers to compare (default {' '.join(LAYERS)}; any conv or "
                             f"pool map, fc6, fc7)")
    parser.set_defaults(run=run_cli)
    return parser


def run_cli(args) -> list[pathlib.Path]:
    parts = read_parts(args.parts)
    loaded = cli.load_model(args)
    params, config, info = loaded.params, loaded.config, loaded.info
    feature_layers = model.projectable_layers(config) + model.fc_layers(config)
    for layer in args.layers:
        if layer not in feature_layers:
            raise ValueError(f"unknown layer {layer!r}; expected one of {', '.join(feature_layers)}")
    size = config.image_size
    boxes = input_boxes(parts, size)
    stored = data.load_image_files([str(p) for p in parts.paths], size)
    inputs, display, _, _ = cli.images_for(loaded, stored)
    random = random_boxes(boxes, size, args.draws, args.seed)
    layers = tuple(dict.fromkeys(args.layers))
    h = jax.device_get(hamming_matrices(config, params, inputs, mask_sets(boxes, random, size),
                                        layers=layers))
    rows = table(h, parts.names, args.draws, layers)
    names = [p.name for p in parts.paths]
    fig = plot_correspondence(display, boxes, random, parts.names, rows, names,
                              title=f"{cli.run_label(args.target, info)}: {len(names)} images")
    out = cli.output_folder(args, info)
    csv_path = out / "correspondence.csv"
    with artifacts.atomic_path(csv_path) as tmp:
        tmp.write_text(table_csv(rows))
    npz = artifacts.save_npz(
        out / "correspondence.npz", part_names=np.asarray(parts.names, dtype=str),
        images=np.asarray(names, dtype=str), boxes=boxes, random_boxes=random,
        **{f"{layer}/hamming": h[layer] for layer in layers})
    png = artifacts.save_png(fig, out / "correspondence.png")
    print(format_table(rows))
    return [png, npz, csv_path]
