"""Feature evolution, measured (Zeiler & Fergus 2014, Fig. 4 and section 4.1).

The paper's claim for Fig. 4: "the lower layers of the model can be seen to
converge within a few epochs. However, the upper layers only develop after a
considerable number of epochs (40-50)". This module turns it into numbers about
a run, each epoch compared with the run's final one:

* from the per-epoch snapshots (zfjax.evolution; every epoch, the followed maps):
  the Pearson correlation of each map's strongest projection (cropped to its
  receptive field) with the final epoch's, and whether the strongest unit sits in
  the same probe image;
* from the kept checkpoints (any map, also those not followed in training): the
  overlap of each map's top-9 probe images with the final checkpoint's top 9
  (|A & B| / 9), mined over the probe images with zfjax.strongest.mine.

``visualize.py convergence RUN`` draws both against epochs, one line per layer,
and writes the table (CSV) and a sentence per layer: the first epoch from which
the median projection correlation stays at or above a threshold ("settled").
"""

from __future__ import annotations

import argparse
import csv
import io
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zfjax import argtypes, artifacts, checkpoints, cli, evolution, model, strongest

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

    epochs: those to compare (default all saved); the last is the reference.
    """
    epochs = evolution.check_epochs(snapshots, sorted(snapshots) if epochs is None else epochs)
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


# ---- the figure --------------------------------------------------------------------


def plot_convergence(result: Convergence, *, title: str | None = None,
                     threshold: float = SETTLED):
    """Left: median (line) and quartiles (band) of the projection correlation with the final
    epoch, per layer; right: mean top-9 image overlap per kept checkpoint. A Figure."""
    from matplotlib.figure import Figure

    panels = 2 if len(result.overlap_epochs) else 1
    fig = Figure(figsize=(6.2 * panels, 4.2), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for layer, corr in result.projection_corr.items():
        q1, median, q3 = np.percentile(corr, [25, 50, 75], axis=1)
        line, = axes[0].plot(result.epochs, median, "o-", ms=3, label=layer)
        axes[0].fill_between(result.epochs, q1, q3, color=line.get_color(), alpha=0.12)
    axes[0].axhline(threshold, color="0.5", ls=":", lw=1)
    axes[0].set(xlabel="epoch", ylabel=f"correlation with epoch {int(result.epochs[-1])}",
                title="strongest projection of followed maps\n(median, quartile band)",
                ylim=(-0.1, 1.05))
    axes[0].legend(fontsize=8)
    if panels == 2:
        for layer, overlap in result.top_overlap.items():
            axes[1].plot(result.overlap_epochs, overlap.mean(axis=1), "s-", ms=4, label=layer)
        axes[1].set(xlabel="epoch (kept checkpoints)",
                    ylabel=f"top-9 overlap with epoch {int(result.overlap_epochs[-1])}",
                    title="top-9 probe images of every map\n(mean over maps)", ylim=(-0.05, 1.05))
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ---- command line ------------------------------------------------------------------


def add_cli(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convergence", help="Fig. 4 quantified: how close each epoch's features are to the "
                            "final epoch's (projection correlation, top-9 overlap)",
        description="Compare a run's per-epoch snapshots (and kept checkpoints) with its last "
                    "epoch. Writes convergence.png, convergence.csv and prints the table.")
    cli.add_input_arguments(parser, count_help="probe images mined at each kept checkpoint "
                                               "(default: the run's probe count)")
    parser.add_argument("--epochs", type=argtypes.positive_int, nargs="+", default=None,
                        help="snapshot epochs to compare (default: all saved; the last is the "
                             "reference)")
    parser.add_argument("--no-checkpoints", action="store_true",
                        help="snapshots only: skip mining the top-9 images at kept checkpoints")
    parser.add_argument("--threshold", type=argtypes.unit_interval, default=SETTLED,
                        help=f"median correlation that counts as settled (default {SETTLED})")
    parser.add_argument("--top", type=argtypes.positive_int, default=strongest.TOP,
                        help=f"images kept per map at each checkpoint (default {strongest.TOP})")
    parser.add_argument("--batch-size", type=argtypes.positive_int, default=128)
    parser.set_defaults(run=run_cli)
    return parser


def mine_checkpoints(run_dir, epochs, stored, batch_size: int, k: int = strongest.TOP) -> dict:
    """epoch -> {conv layer: strongest.TopK} over the stored-size images, for each checkpoint epoch."""
    tops = {}
    for epoch in epochs:
        loaded = cli.load_model(pathlib.Path(run_dir) / checkpoints.CHECKPOINT_DIR / str(epoch))
        batches = loaded.preprocessing.batches(stored, loaded.config.image_size, batch_size)
        tops[epoch] = strongest.mine(loaded.config, loaded.params, batches, k=k)
    return tops


def run_cli(args) -> list[pathlib.Path]:
    if args.target is None:
        raise ValueError("convergence needs a run folder (it reads the run's snapshots and "
                         "checkpoints), not --weights")
    run_dir = pathlib.Path(args.target)
    if not (run_dir / checkpoints.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder made by train.py (no "
                                f"{checkpoints.CONFIG_FILE})")
    snapshots = evolution.load_snapshots(run_dir)
    epochs, corr, same = snapshot_convergence(snapshots, args.epochs)
    overlap_epochs, overlap = np.zeros(0, np.int32), {}
    if not args.no_checkpoints:
        kept = checkpoints.finished_epochs(run_dir)
        kept = [e for e in kept if e <= epochs[-1]]
        if len(kept) >= 2:
            loaded = cli.load_model(run_dir)
            config, info = loaded.config, loaded.info
            count = args.limit or (info.get("data") or {}).get("probe_count") or 1000
            stored, _, _ = cli.load_stored_images(args, config, info, count)
            overlap_epochs, overlap = checkpoint_overlap(
                mine_checkpoints(run_dir, kept, stored, args.batch_size, args.top))
    result = Convergence(epochs, corr, same, overlap_epochs, overlap)
    out = args.out if args.out is not None else run_dir / "figures"
    print(format_table(result))
    for line in summary(result, args.threshold):
        print(line)
    csv_path = out / "convergence.csv"
    with artifacts.atomic_path(csv_path) as tmp:
        tmp.write_text(csv_text(table_rows(result)))
    fig = plot_convergence(result, title=f"{run_dir.name}: features compared with the final "
                                         f"epoch", threshold=args.threshold)
    return [artifacts.save_png(fig, out / "convergence.png"), csv_path]
