"""How every figure shows a deconvnet projection, and the class names it prints.

* ``to_display``: projections (..., H, W, 3) -> uint8 tiles, each contrast-stretched
  on its own with a robust percentile (zero stays mid-gray, as in the paper's
  figures), so one bright pixel no longer leaves the rest of the tile faint.
* ``upscale``: integer nearest-neighbour enlargement, so the small receptive
  fields of a 64 px run stay sharp blocks instead of resampled blur.
* ``content_box(es)`` / ``trim``: cut tiles to the part that lies inside the image
  (receptive-field crops are zero-padded where they run past the image edge).
* ``class_label`` / ``class_labels``: WordNet ids (n01440764) -> ImageNet names
  (tench), from the table bundled in zfjax/resources/imagenet_classes.tsv.
* ``shown_path`` / ``shown_paths``: file paths as figures and pages print them (the last
  name only), so a published figure or atlas shows nothing of the machine it ran on.
"""

from __future__ import annotations

import functools
import os
from importlib import resources

import numpy as np

DISPLAY_PERCENTILE = 99.0  # |value| at this percentile of a tile's nonzero values -> 0 or 255


def to_display(projections, percentile: float = DISPLAY_PERCENTILE) -> np.ndarray:
    """Projections (..., H, W, 3) -> uint8 (..., H, W, 3), each tile stretched on its own.

    Zero maps to 128; +-s maps to 255 / 0, with s the ``percentile``-th percentile of
    the tile's nonzero magnitudes (values beyond s saturate). The sign of the
    reconstruction stays visible. Percentile 100 is the old scaling by the largest
    magnitude. An all-zero tile is uniform gray.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    x = np.asarray(projections, np.float32)
    if x.ndim < 3:
        raise ValueError(f"projections must be (..., H, W, C), got shape {x.shape}")
    scale = _nonzero_percentile(np.abs(x.reshape(-1, int(np.prod(x.shape[-3:])))), percentile)
    scale = scale.reshape(x.shape[:-3] + (1, 1, 1))
    return np.clip(np.round(127.5 + 127.5 * x / scale), 0, 255).astype(np.uint8)


def _nonzero_percentile(magnitudes: np.ndarray, percentile: float) -> np.ndarray:
    """Per row of (T, n) magnitudes >= 0, the percentile of its nonzero values, as
    ``np.nanpercentile`` with zeros as NaN (linear interpolation) gives it but 3x
    faster: sorted, a row's k nonzero values are its last k. float32 (T,); 1 for a
    row with none."""
    n = magnitudes.shape[1]
    ordered = np.sort(magnitudes, axis=1)
    k = np.count_nonzero(magnitudes, axis=1)
    position = (n - k) + (np.maximum(k, 1) - 1) * (percentile / 100)
    low = np.minimum(np.floor(position).astype(np.int64), n - 1)
    high = np.minimum(low + 1, n - 1)
    rows = np.arange(len(ordered))
    below, above = ordered[rows, low], ordered[rows, high]
    scale = below + (above - below) * (position - low).astype(np.float32)
    return np.where((k > 0) & (scale > 0), scale, 1.0).astype(np.float32)


def upscale(tiles: np.ndarray, min_side: int) -> np.ndarray:
    """Enlarge (..., H, W, C) by the smallest integer factor f with f * max(H, W) >= min_side.

    Nearest neighbour (each pixel becomes an f x f block); factor 1 returns the input.
    """
    tiles = np.asarray(tiles)
    side = max(tiles.shape[-3], tiles.shape[-2])
    factor = max(1, -(-min_side // max(side, 1)))
    if factor == 1:
        return tiles
    return np.repeat(np.repeat(tiles, factor, axis=-3), factor, axis=-2)


def content_box(*stacks) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the pixels nonzero in any of the stacks.

    Each stack is (..., H, W, C) with one H, W. The box covers every position
    where any leading index or channel is nonzero; the whole tile if none is.
    """
    return tuple(int(v) for v in content_boxes(*(np.asarray(s)[None] for s in stacks))[0])


def content_boxes(*stacks) -> np.ndarray:
    """``content_box`` of each of K tiles at once: int (K, 4) (top, left, bottom, right).

    Each stack is (K, ..., H, W, C) with one K, H, W; box k covers the positions
    nonzero in any stack's k-th entry (any further index or channel).
    """
    hit = None
    for stack in stacks:
        a = np.asarray(stack)
        nonzero = (a.reshape(a.shape[:1] + (-1,) + a.shape[-3:]) != 0).any(axis=1)
        # Channels one by one: numpy's any over a short last axis is ~10x slower.
        for c in range(nonzero.shape[-1]):
            hit = nonzero[..., c] if hit is None else hit | nonzero[..., c]
    k, h, w = hit.shape
    rows, cols = hit.any(axis=2), hit.any(axis=1)
    empty = ~rows.any(axis=1)
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    bottom, right = h - rows[:, ::-1].argmax(axis=1), w - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([top, left, bottom, right], axis=1)
    boxes[empty] = (0, 0, h, w)
    return boxes


def trim(tiles: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """tiles (..., H, W, C)[..., top:bottom, left:right, :] for a ``content_box``."""
    top, left, bottom, right = box
    return np.asarray(tiles)[..., top:bottom, left:right, :]


# ---- class names -------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def imagenet_names() -> dict[str, str]:
    """The bundled ImageNet-1k table: WordNet id -> short name (1000 entries)."""
    text = resources.files("zfjax").joinpath("resources/imagenet_classes.tsv").read_text()
    rows = (line.split("\t") for line in text.splitlines() if line and not line.startswith("#"))
    return {wnid: name for wnid, name in rows}


def class_label(name: str) -> str:
    """A class as figures print it: the ImageNet name for a WordNet id, else ``name``."""
    return imagenet_names().get(name, name)


def class_labels(names) -> list[str] | None:
    """``class_label`` of each name; None stays None."""
    return None if names is None else [class_label(str(n)) for n in names]


# ---- paths -------------------------------------------------------------------------


def shown_path(text) -> str:
    """A path as figures and pages print it: a file system path (absolute, starting with
    ~, ./ or ../, or one that exists) -> its last name ('/home/me/data/imagenette' ->
    'imagenette'); anything else (a TFDS name such as 'imagenette/160px-v2') as given."""
    text = str(text)
    looks_like_path = (os.path.isabs(text) or text.startswith(("~", "./", "../"))
                       or (os.sep in text and os.path.exists(text)))
    return os.path.basename(os.path.normpath(text)) or text if looks_like_path else text


def shown_paths(tree):
    """``shown_path`` of every string in a JSON-like tree (dicts, lists), e.g. a run's
    config.json as a page shows it."""
    if isinstance(tree, dict):
        return {key: shown_paths(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [shown_paths(value) for value in tree]
    return shown_path(tree) if isinstance(tree, str) else tree


def fit_tile(tile: np.ndarray, side: int, fill: int = 255) -> np.ndarray:
    """One uint8 tile (h, w, C) scaled to fit a (side, side, C) square, aspect kept.

    Enlarging uses the largest integer factor that fits, nearest neighbour (pixels
    stay equal sharp blocks); shrinking uses area averaging; the rest of the square
    is ``fill``.
    """
    from PIL import Image

    tile = np.asarray(tile, np.uint8)
    h, w, channels = tile.shape
    if side >= max(h, w):  # an integer factor: every pixel an equal square block
        factor = side // max(h, w)
        nh, nw = h * factor, w * factor
        resized = np.repeat(np.repeat(tile, factor, axis=0), factor, axis=1)
    else:
        scale = side / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        img = Image.fromarray(tile if channels > 1 else tile[..., 0])
        resized = np.asarray(img.resize((nw, nh), Image.Resampling.BOX)).reshape(nh, nw, channels)
    out = np.full((side, side, channels), fill, np.uint8)
    top, left = (side - nh) // 2, (side - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out


def display_side(side: int, minimum: int = 48) -> int:
    """The smallest whole multiple of ``side`` that is at least ``minimum`` pixels."""
    return side * max(1, -(-minimum // max(side, 1)))


def fit_pairs(projections, patches, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Projections float (..., R, R, 3) and their image patches uint8 (same shape) ->
    (displayed projections, patches), each uint8 (..., side, side, 3).

    Each pair is cut to the part inside the image (``content_box`` of the pair: crops
    are zero-padded past the image edge) and scaled to ``side`` (``fit_tile``); projections
    are stretched on their own (``to_display``).
    """
    projections, patches = np.asarray(projections), np.asarray(patches)
    lead = projections.shape[:-3]
    shown = to_display(projections).reshape((-1,) + projections.shape[-3:])
    flat_p = projections.reshape(shown.shape)
    flat_q = patches.reshape(shown.shape)
    out_p = np.empty((len(shown), side, side, 3), np.uint8)
    out_q = np.empty_like(out_p)
    for i, box in enumerate(content_boxes(flat_p, flat_q).tolist()):
        out_p[i] = fit_tile(trim(shown[i], box), side)
        out_q[i] = fit_tile(trim(flat_q[i], box), side)
    return out_p.reshape(lead + out_p.shape[1:]), out_q.reshape(lead + out_q.shape[1:])


TILE_GAP, PATCH_GAP = 2, 8  # pixels between the tiles of a Fig. 4 block, and before its patches


def evolution_block(projections: np.ndarray, patches: np.ndarray, side: int) -> np.ndarray:
    """One layer's block of Fig. 4: rows = maps, columns = epochs, then the patch column.

    projections float32 (E, K, R, R, 3) (epoch-major), patches uint8 (K, R, R, 3).
    Each tile is cut to the part inside the image (``content_box``; the
    patch with the last epoch's projection), each projection stretched on its own
    (``to_display``) and scaled to ``side`` px. Returns uint8
    (K*(side+gap)-gap, (E+1)*(side+gap)-gap+patch_gap, 3) on white.
    """
    e, k = projections.shape[:2]
    step = side + TILE_GAP
    out = np.full((k * step - TILE_GAP, (e + 1) * step - TILE_GAP + PATCH_GAP, 3), 255, np.uint8)
    shown = to_display(projections)
    for i in range(k):
        y = i * step
        for j in range(e):  # each epoch's winner may sit elsewhere: trim each tile alone
            box = content_box(projections[j, i])
            out[y:y + side, j * step:j * step + side] = fit_tile(
                trim(shown[j, i], box), side)
        box = content_box(projections[-1, i], patches[i])
        x = e * step + PATCH_GAP
        out[y:y + side, x:x + side] = fit_tile(trim(patches[i], box), side)
    return out
