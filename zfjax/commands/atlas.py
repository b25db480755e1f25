"""``visualize.py atlas RUN_OR_WEIGHTS --out DIR``: a browsable static site of a network.

Mines every conv layer in one pass over the split (``zfjax.analyses.atlas``), then writes the
site (``zfjax.figures.atlas_site``) into a temporary folder beside DIR and swaps it in,
so DIR is always a whole atlas. A re-run replaces what the earlier atlas wrote and keeps
everything else in DIR (files the user added), saying so in one line.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pathlib
import re
import sys
import time

import numpy as np

from zfjax import argtypes, artifacts, cli, programs, progress, render
from zfjax.analyses import atlas
from zfjax.inputs import data
from zfjax.nets import network
from zfjax.train import checkpoints
from zfjax.figures import atlas_site
from zfjax.train.run import RunDir


def add_cli(subparsers) -> argparse.ArgumentParser:
    """The ``atlas`` subcommand."""
    parser = subparsers.add_parser(
        "atlas", help="a static HTML site of every feature map: top-9 projections (Fig. 2), "
                      "classes, evolution (Fig. 4); opens offline in a browser",
        description="Write a self-contained HTML atlas of the network into --out "
                    "(default <run>/figures/atlas): open its index.html in a browser. --out "
                    "must be new, empty or an earlier atlas; a re-run replaces the files the "
                    "earlier atlas wrote and keeps any others you added there (carried into "
                    "the new atlas, and said so in one line).")
    cli.add_input_arguments(parser, count_help="at most this many images of the split "
                                               "(default: all)")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="layers to show (default: every conv layer)")
    parser.add_argument("--top", type=argtypes.positive_int, default=atlas.TOP,
                        help="activations kept per feature map")
    parser.add_argument("--batch-size", type=argtypes.positive_int, default=64)
    parser.add_argument("--deconvnet-only", action="store_true",
                        help="skip each map's guided backprop and gradient views and the "
                             "layers' sanity scores (cascade-randomised network): a faster build")
    parser.set_defaults(run=run)
    return parser


class _Lazy:
    """Stored uint8 images made into arrays only when indexed: ``fn(stored[index])``."""

    def __init__(self, stored: np.ndarray, fn):
        self.stored, self.fn = stored, fn

    def __len__(self) -> int:
        return len(self.stored)

    def __getitem__(self, index):
        return self.fn(self.stored[index])


def _bar(desc: str, total: int):
    return progress.bar(total=total, desc=f"atlas: {desc}", unit="img" if desc == "mining" else "it",
                        leave=False)


def run_files(run_dir) -> dict:
    """What the index shows of a run folder: its config.json (paths cut to their last
    name, ``render.shown_paths``), metrics.jsonl lines and curves.png (each where present)."""
    run = RunDir(run_dir)
    found = {"config": render.shown_paths(run.read_config())}
    metrics = run.read_metrics()
    if metrics:
        found["metrics"] = metrics
    if run.curves_file.is_file():
        found["curves"] = run.curves_file
    return found


def _is_atlas(folder) -> bool:
    """An earlier atlas, or a folder that a failed train.py left holding only its lock."""
    return atlas_site.read_manifest(folder) is not None or _only_a_stale_run_lock(folder)


_LOCK_TEXT = re.compile(rb"(pid \d+ on host \S* \(since [\d-]+ [\d:]+\)\n)?")  # checkpoints'


def _only_a_stale_run_lock(folder) -> bool:
    """Whether ``folder`` holds nothing but the .lock of ``checkpoints.lock_run_folder``,
    with its text, and no live process holds it."""
    lock = pathlib.Path(folder) / checkpoints.LOCK_FILE
    if [p.name for p in pathlib.Path(folder).iterdir()] != [lock.name] or lock.is_symlink():
        return False
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if not _LOCK_TEXT.fullmatch(os.pread(fd, 1024, 0)):
            return False
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except OSError:  # BlockingIOError: train.py is still running there
        return False
    finally:
        os.close(fd)


def _check_names_free(out: pathlib.Path, layers) -> None:
    """Raises FileExistsError when a file the user added to the atlas in ``out`` has a name
    the new atlas writes (it could not be kept beside it)."""
    taken = [name for name in atlas_site.user_files(out) if atlas_site.written_by_atlas(name, layers)]
    if taken:
        raise FileExistsError(f"{out / taken[0]} was not written by the earlier atlas, but the "
                              f"new one writes that name; move it away (nothing was written)")


def run(args) -> list[pathlib.Path]:
    """Build the atlas and write the site; returns [DIR/index.html]."""
    start = time.perf_counter()
    loaded = cli.load_model(args)
    config, info = loaded.config, loaded.info
    layers = network.check_layers(config, args.layers or network.conv_layers(config))
    out = (pathlib.Path(args.out) if args.out is not None
           else cli.output_folder(args, info) / "atlas")
    stored, labels, names = cli.load_stored_images(args, config, info, args.limit)
    size = config.image_size
    inputs = _Lazy(stored, lambda x: loaded.preprocessing(x, size))
    display = _Lazy(stored, lambda x: np.ascontiguousarray(data.centre_crop(x, size)))
    source = ("the given images" if args.images else  # no path of this machine on the pages
              f"{render.shown_path(args.data or cli.run_data_source(info)[0])} [{args.split}]")

    run_info = {"title": f"zfjax atlas: {cli.run_label(args.target or args.weights, info)}"}
    facts = {"network": f"{config.arch}, {size} px"
                        + (f", width {config.width}" if getattr(config, "width", 1.0) != 1.0 else "")}
    if info.get("run_dir"):
        run_info.update(run_files(info["run_dir"]))
        facts["run folder"] = pathlib.Path(info["run_dir"]).name
        facts["epoch"] = info.get("epoch")
    else:
        facts["weights"] = render.shown_path(info.get("weights"))
    metrics = info.get("metrics") or {}
    for key, label in (("val_top1", "validation top-1"), ("val_top5", "validation top-5")):
        if isinstance(metrics.get(key), (int, float)):
            facts[label] = f"{metrics[key]:.3f}"
    facts["images analysed"] = f"{len(stored)} ({source})"
    run_info["facts"] = facts
    snapshots = None
    if info.get("run_dir"):
        from zfjax.analyses import evolution

        if evolution.snapshot_dir(info["run_dir"]).is_dir():
            snapshots = evolution.load_snapshots(info["run_dir"])
            evolution.check_epochs(snapshots, sorted(snapshots))  # one probe, before the work

    if out.is_dir():
        _check_names_free(out, layers)  # before the work, not after
    kept: list[str] = []

    def keep(folder) -> list[str]:
        names = atlas_site.user_files(folder)
        if pathlib.Path(folder).absolute() == out.absolute():  # not a leftover's old folder
            kept[:] = names
        return names

    with artifacts.atomic_folder(out, replaceable=_is_atlas, carry=keep,
                                 leftover=atlas_site.is_partial_site) as tmp:
        result = atlas.build(config, loaded.params, inputs, labels, layers=layers,
                             k=min(args.top, len(stored)), batch_size=args.batch_size,
                             num_classes=len(loaded.class_names or []) or None,
                             methods=() if args.deconvnet_only else atlas.METHODS,
                             sanity_seed=None if args.deconvnet_only else atlas.SANITY_SEED,
                             progress=_bar)
        work = ("mining and projections" if args.deconvnet_only
                else "mining, projections, other methods and sanity scores")
        facts["build time"] = f"{time.perf_counter() - start:.1f} s ({work})"
        atlas_site.write_site(config, result, display, tmp, names=names,
                              class_names=loaded.class_names, rgb=loaded.preprocessing.rgb,
                              snapshots=snapshots, run=run_info, source=source, progress=_bar)
    if kept:
        shown = ", ".join(kept[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else "")
        files = f"{len(kept)} file{'s' * (len(kept) != 1)}"
        print(f"{programs.program_name('visualize.py')} atlas: kept {files} that the earlier "
              f"atlas in {out} did not write: {shown}", file=sys.stderr)
    return [out / "index.html"]
