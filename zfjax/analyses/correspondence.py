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

Every image needs the same parts (``zfjax.commands.correspondence.read_parts``). The
boxes are mapped onto the network's input the way the image is (shorter side resized,
centre crop) and cut to it. The figure is ``zfjax.figures.correspondence``.
"""

from __future__ import annotations

import csv
import io
import pathlib
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zfjax.inputs import data
from zfjax.nets import model, network

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
def hamming_matrices(config: network.Network, params, images: jax.Array, masks: jax.Array, *,
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
    """A validated parts file (``zfjax.commands.correspondence.read_parts``)."""

    paths: list[pathlib.Path]  # image files
    names: tuple[str, ...]  # part names, in file order
    boxes: np.ndarray  # int (N, P, 4) in the original images' pixels
    sizes: np.ndarray  # int (N, 2) original (height, width)


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
