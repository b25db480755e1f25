"""``visualize.py evolution RUN_DIR``: paper Fig. 4 from the snapshots train.py saved (core
``zfjax.analyses.evolution``, figure ``zfjax.figures.evolution``)."""

from __future__ import annotations

import argparse
import pathlib

from zfjax import argtypes, artifacts
from zfjax.analyses import evolution
from zfjax.figures.evolution import DPI, evolution_figure


def plot_evolution(run_dir, out_png, epochs=None) -> pathlib.Path:
    """Draw the paper's Fig. 4 from a run's snapshots into out_png; returns its path.

    epochs: default those of DEFAULT_EPOCHS that were saved and the last saved one.
    Raises ValueError for an epoch not saved or snapshots that follow other maps.
    """
    snapshots = evolution.load_snapshots(run_dir)
    epochs = evolution.check_epochs(snapshots, epochs)
    fig = evolution_figure(snapshots, epochs, title=pathlib.Path(run_dir).name)
    out_png = pathlib.Path(out_png)
    with artifacts.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out_png


def add_cli(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evolution", help="Fig. 4: feature evolution over the epochs of a training run",
        description="Draw the per-epoch snapshots train.py saved in RUN_DIR/snapshots.")
    parser.add_argument("target", help="run folder written by train.py")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="output folder (default: <run>/figures)")
    parser.add_argument("--epochs", type=argtypes.positive_int, nargs="+", default=None,
                        help="epochs to show (default: those of 1,2,5,10,20,30,40,64 present, "
                             "and the last)")
    parser.set_defaults(run=run)
    return parser


def run(args) -> list[pathlib.Path]:
    run_dir = pathlib.Path(args.target)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist; pass the --out folder "
                                f"of a train.py run")
    out = args.out if args.out is not None else run_dir / "figures"
    return [plot_evolution(run_dir, out / "evolution.png", args.epochs)]
