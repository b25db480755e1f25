"""``visualize.py convergence RUN``: paper Fig. 4 measured (core ``zfjax.analyses.convergence``,
figure ``zfjax.figures.convergence``)."""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from zfjax import argtypes, artifacts, cli
from zfjax.analyses import convergence, evolution
from zfjax.nets import strongest
from zfjax.train import checkpoints
from zfjax.figures.convergence import plot_convergence


def add_cli(subparsers) -> argparse.ArgumentParser:
    """The ``convergence`` subcommand (paper Fig. 4 measured)."""
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
    parser.add_argument("--threshold", type=argtypes.unit_interval, default=convergence.SETTLED,
                        help=f"median correlation that counts as settled (default {convergence.SETTLED})")
    parser.add_argument("--top", type=argtypes.positive_int, default=strongest.TOP,
                        help=f"images kept per map at each checkpoint (default {strongest.TOP})")
    parser.add_argument("--batch-size", type=argtypes.positive_int, default=128)
    parser.set_defaults(run=run)
    return parser


def mine_checkpoints(run_dir, epochs, stored, batch_size: int, k: int = strongest.TOP) -> dict:
    """epoch -> {conv layer: strongest.TopK} over the stored-size images, for each checkpoint epoch."""
    tops = {}
    for epoch in epochs:
        loaded = cli.load_model(pathlib.Path(run_dir) / checkpoints.CHECKPOINT_DIR / str(epoch))
        batches = loaded.preprocessing.batches(stored, loaded.config.image_size, batch_size)
        tops[epoch] = strongest.mine(loaded.config, loaded.params, batches, k=k)
    return tops


def run(args) -> list[pathlib.Path]:
    """Print the table and the summary; write convergence.png and convergence.csv."""
    if args.target is None:
        raise ValueError("convergence needs a run folder (it reads the run's snapshots and "
                         "checkpoints), not --weights")
    run_dir = pathlib.Path(args.target)
    if not (run_dir / checkpoints.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder made by train.py (no "
                                f"{checkpoints.CONFIG_FILE})")
    snapshots = evolution.load_snapshots(run_dir)
    checked = evolution.check_epochs(snapshots, sorted(snapshots) if args.epochs is None
                                     else args.epochs)
    epochs, corr, same = convergence.snapshot_convergence(snapshots, checked)
    overlap_epochs, overlap = np.zeros(0, np.int32), {}
    if not args.no_checkpoints:
        kept = checkpoints.finished_epochs(run_dir)
        kept = [e for e in kept if e <= epochs[-1]]
        if len(kept) >= 2:
            loaded = cli.load_model(run_dir)
            config, info = loaded.config, loaded.info
            count = args.limit or (info.get("data") or {}).get("probe_count") or 1000
            stored, _, _ = cli.load_stored_images(args, config, info, count)
            overlap_epochs, overlap = convergence.checkpoint_overlap(
                mine_checkpoints(run_dir, kept, stored, args.batch_size, args.top))
    result = convergence.Convergence(epochs, corr, same, overlap_epochs, overlap)
    out = args.out if args.out is not None else run_dir / "figures"
    print(convergence.format_table(result))
    for line in convergence.summary(result, args.threshold):
        print(line)
    csv_path = out / "convergence.csv"
    with artifacts.atomic_path(csv_path) as tmp:
        tmp.write_text(convergence.csv_text(convergence.table_rows(result)))
    fig = plot_convergence(result, title=f"{run_dir.name}: features compared with the final "
                                         f"epoch", threshold=args.threshold)
    return [artifacts.save_png(fig, out / "convergence.png"), csv_path]
