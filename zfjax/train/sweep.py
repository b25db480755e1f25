"""Architecture sweeps in the layout of the paper's Table 3 (and Table 2).

A sweep folder holds one run folder per variant (``<sweep>/<variant>/``, as
train.py writes it). ``sweep.py`` trains the variants one after another and is
resumable: a finished run is skipped, a stopped one continued. ``table_rows``
reads the finished runs back: per variant, its parameter count and the final
epoch's train top-1 error, validation top-1 and top-5 error (in %, as the paper).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import NamedTuple

from zfjax import artifacts
from zfjax.train import checkpoints
from zfjax.train.run import RunDir

TABLE_CSV, TABLE_MD = "table3.csv", "table3.md"


class Row(NamedTuple):
    """One line of Table 3. Errors in %; train error is on the training crops of the last
    epoch (with dropout, as the paper's training error)."""

    variant: str
    parameters: int
    epochs: int
    train_top1_error: float
    val_top1_error: float
    val_top5_error: float


def state(run_dir, epochs: int) -> str:
    """'done' (metrics reach ``epochs``), 'stopped' (checkpoints, not done) or 'new'."""
    run = RunDir(run_dir)
    metrics = run.read_metrics()
    if metrics and metrics[-1]["epoch"] >= epochs:
        return "done"
    ckpt = run.checkpoint_dir
    return "stopped" if ckpt.is_dir() and any(ckpt.iterdir()) else "new"


def parameter_count(run_dir) -> int:
    """Parameters of the run's network, from its config.json (nothing is loaded)."""
    from zfjax.nets import network

    return network.parameter_count(checkpoints.model_config(RunDir(run_dir).read_config()))


def row(run_dir, variant: str) -> Row:
    """Table 3's line for one finished (or stopped) run: its last recorded epoch."""
    metrics = RunDir(run_dir).read_metrics()
    if not metrics:
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl lines yet; train it first")
    last = metrics[-1]
    return Row(variant, parameter_count(run_dir), int(last["epoch"]),
               100 * (1 - last["train_top1"]), 100 * (1 - last["val_top1"]),
               100 * (1 - last["val_top5"]))


def table_rows(sweep_dir, variants) -> list[Row]:
    """Rows of the variants whose run folders have metrics, in the given order."""
    return [row(Path(sweep_dir) / v, v) for v in variants
            if RunDir(Path(sweep_dir) / v).read_metrics()]


def table_csv(rows: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(Row._fields)
    for r in rows:
        writer.writerow([r.variant, r.parameters, r.epochs] + [f"{v:.2f}" for v in r[3:]])
    return out.getvalue()


def table_markdown(rows: list[Row], note: str = "") -> str:
    """Table 3's layout: variant | train top-1 | val top-1 | val top-5 (errors, %) | parameters."""
    lines = ([note, ""] if note else []) + [
        "| variant | epochs | train top-1 err % | val top-1 err % | val top-5 err % | parameters |",
        "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.variant} | {r.epochs} | {r.train_top1_error:.1f} | "
                     f"{r.val_top1_error:.1f} | {r.val_top5_error:.1f} | {r.parameters:,} |")
    return "\n".join(lines) + "\n"


def write_table(sweep_dir, rows: list[Row], note: str = "") -> list[Path]:
    """Write table3.csv and table3.md into the sweep folder (atomically); returns the paths."""
    sweep_dir = Path(sweep_dir)
    paths = []
    for name, text in ((TABLE_CSV, table_csv(rows)), (TABLE_MD, table_markdown(rows, note))):
        artifacts.atomic_write(sweep_dir / name, lambda f, t=text: f.write(t.encode()))
        paths.append(sweep_dir / name)
    return paths
