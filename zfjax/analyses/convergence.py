"""Feature evolution, measured (Zeiler & Fergus 2014, Fig. 4 and section 4.1).

The paper's claim for Fig. 4: "the lower layers of the model can be seen to
converge within a few epochs. However, the upper layers only develop after a
considerable number of epochs (40-50)". This module turns it into numbers about
a run, each epoch compared with the run's final one:

* from the per-epoch snapshots (zfjax.analyses.evolution; every epoch, the followed maps):
  the Pearson correlation of each map's strongest projection (cropped to its
  receptive field) with the final epoch's, and whether the strongest unit sits in
  the same probe image;
* from the kept checkpoints (any map, also those not followed in training): the
  overlap of each map's top-9 probe images with the final checkpoint's top 9
  (|A & B| / 9), mined over the probe images with zfjax.nets.strongest.mine.

``visualize.py convergence RUN`` (``zfjax.commands.convergence``, figure
``zfjax.figures.convergence``) draws both against epochs, one line per layer, and
writes the table (CSV) and a sentence per layer: the first epoch from which the
median projection correlation stays at or above a threshold ("settled").
"""

from __future__ import annotations

import csv
import io
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zfjax.nets import model

SETTLED = 0.8  # median projection correlation from which a layer counts as settled


class Convergence(NamedTuple):
    """Closeness of each epoch's features to the final epoch's, per layer.

    epochs int (E,): snapshot epochs, the last one the reference.
    projection_corr: layer -> float32 (E, K), Pearson correlation of map k's
        strongest projection at each epoch with the reference epoch's.
    same_image: layer -> bool (E, K), the strongest unit is in the reference's image.
    overlap_epochs int (F,): checkpoint epochs mined (empty when none were).
    top_overlap: layer -> float32 (F, C), |top-9 images & reference's top 9| / 9
        for every map of the layer (divided by the reference's filled slots).
    """

    epochs: np.ndarray
    projection_corr: dict
    same_image: dict
    overlap_epochs: np.ndarray
    top_overlap: dict


@jax.jit
def correlation(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pearson correlation of a (..., R, R, C) with b (broadcastable), over the last 3 axes.

    A constant tile (no variance, e.g. a map that never fired) correlates 0 with a
    varying one and 1 with another constant tile.
    """
    a = a.astype(jnp.float32)
    b = jnp.broadcast_to(b.astype(jnp.float32), a.shape)
    axes = (-3, -2, -1)
    a = a - a.mean(axis=axes, keepdims=True)
    b = b - b.mean(axis=axes, keepdims=True)
    num = (a * b).sum(axis=axes)
    den = jnp.sqrt((a * a).sum(axis=axes) * (b * b).sum(axis=axes))
    both_flat = ((a * a).sum(axis=axes) == 0) & ((b * b).sum(axis=axes) == 0)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), jnp.where(both_flat, 1.0, 0.0))


@jax.jit
def top_overlap(images: jax.Array, reference: jax.Array) -> jax.Array:
    """Fraction of the reference's top-k images of each map that are also in ``images``.

    images int (..., C, k), reference int (C, k); unfilled slots (-1, fewer images than
    k) never match and do not count. Returns float32 (..., C).
    """
    hit = (images[..., :, :, None] == reference[:, None, :]) & (images[..., :, :, None] >= 0)
    filled = jnp.maximum((reference >= 0).sum(axis=-1), 1)
    return hit.any(axis=-1).sum(axis=-1).astype(jnp.float32) / filled


def snapshot_convergence(snapshots: dict, epochs=None) -> tuple[np.ndarray, dict, dict]:
    """(epochs (E,), projection_corr, same_image) from loaded snapshots (epoch -> arrays).

    epochs: those to compare, sorted, snapshots of one probe (``evolution.check_epochs``;
    default all saved); the last is the reference.
    """
    epochs = sorted(snapshots) if epochs is None else list(epochs)
    ref = snapshots[epochs[-1]]
    layers = sorted((key.split("/")[0] for key in ref if key.endswith("/projections")),
                    key=model.network.layer_order)
    corr, same = {}, {}
    for layer in layers:
        stack = np.stack([snapshots[e][f"{layer}/projections"] for e in epochs])  # (E, K, R, R, 3)
        corr[layer] = np.asarray(correlation(stack, ref[f"{layer}/projections"]))
        images = np.stack([snapshots[e][f"{layer}/images"] for e in epochs])
        same[layer] = images == ref[f"{layer}/images"]
    return np.asarray(epochs, np.int32), corr, same


def checkpoint_overlap(tops: dict) -> tuple[np.ndarray, dict]:
    """(epochs (F,), layer -> (F, C) top-9 overlap with the last epoch) from
    epoch -> {layer: strongest.TopK} mined on one image set."""
    epochs = sorted(tops)
    ref = tops[epochs[-1]]
    out = {layer: np.asarray(top_overlap(np.stack([tops[e][layer].image for e in epochs]),
                                         ref[layer].image)) for layer in ref}
    return np.asarray(epochs, np.int32), out


def settled_epoch(epochs: np.ndarray, values: np.ndarray, threshold: float = SETTLED):
    """First epoch from which ``values`` (E,) stay >= threshold up to the end, or None."""
    ok = np.asarray(values) >= threshold
    if not ok[-1]:
        return None
    below = np.flatnonzero(~ok)
    return int(epochs[below[-1] + 1]) if len(below) else int(epochs[0])


def table_rows(result: Convergence) -> list[dict]:
    """One row per (layer, epoch): median and mean projection correlation, fraction of
    maps whose strongest unit is in the final epoch's image, mean top-9 overlap (if mined)."""
    rows = []
    for layer, corr in result.projection_corr.items():
        overlap = result.top_overlap.get(layer)
        for i, epoch in enumerate(result.epochs):
            row = {"layer": layer, "epoch": int(epoch),
                   "projection_corr_median": float(np.median(corr[i])),
                   "projection_corr_mean": float(corr[i].mean()),
                   "same_image": float(result.same_image[layer][i].mean())}
            where = np.flatnonzero(result.overlap_epochs == epoch)
            row["top9_overlap_mean"] = (float(overlap[where[0]].mean())
                                        if overlap is not None and len(where) else None)
            rows.append(row)
    return rows


def summary(result: Convergence, threshold: float = SETTLED) -> list[str]:
    """One sentence per layer: when its median projection correlation settled."""
    lines = []
    for layer, corr in result.projection_corr.items():
        median = np.median(corr, axis=1)
        epoch = settled_epoch(result.epochs, median, threshold)
        final = int(result.epochs[-1])
        early = ", ".join(f"ep {int(e)} {m:.2f}" for e, m in zip(result.epochs[:-1], median[:-1]))
        state = (f"settled from epoch {epoch}" if epoch is not None and epoch < final
                 else "not settled before the final epoch")
        lines.append(f"{layer}: median projection correlation with epoch {final} >= "
                     f"{threshold:g} {state} ({early})")
    return lines


def csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else f"{v:.4f}" if isinstance(v, float) else v)
                         for k, v in row.items()})
    return out.getvalue()


def format_table(result: Convergence) -> str:
    """Layers (rows) x epochs (columns): median projection correlation, and the mean top-9
    overlap in brackets where that epoch's checkpoint was mined."""
    head = "layer " + "".join(f"{'ep ' + str(int(e)):>13}" for e in result.epochs)
    lines = [head]
    for layer, corr in result.projection_corr.items():
        cells = []
        for i, epoch in enumerate(result.epochs):
            cell = f"{np.median(corr[i]):.2f}"
            where = np.flatnonzero(result.overlap_epochs == epoch)
            if layer in result.top_overlap and len(where):
                cell += f" [{result.top_overlap[layer][where[0]].mean():.2f}]"
            cells.append(f"{cell:>13}")
        lines.append(f"{layer:<6}" + "".join(cells))
    return "\n".join(lines)
