"""The accelerator bench: the figures zfjax's defaults rest on, in one run on one machine.

    python bench/accelerator.py [--out FILE.json] [--peak-tflops T] [--quick]

Made for one GPU (an H100/H200: the whole run is meant to stay under 8 minutes) with
only the packages such a machine has; runs anywhere. Parts, each a table:

* train step: full-width ZFNet at 224 px on device-resident synthetic uint8 batches
  (bench_train.synthetic_rows), bfloat16 and float32, batch 128 and 256: ms per step,
  img/s, MFU (FLOPs per image from the network's shapes, x3 for forward + backward,
  against the chip's dense bfloat16 peak for both dtypes: bench_train.PEAK_TFLOPS or
  --peak-tflops);
* streamed pipeline: a folder of random 256 px JPEGs written here, prepared into a
  store and read for one epoch with as many Grain workers as cores
  (bench_data.epoch_row): img/s and img/s per worker; then one epoch of train.py
  streaming that store, step- or input-bound (skipped, saying so, without grain);
* projections at 224 px: 256 ZFNet conv5 and 64 VGG16 conv5_3 units (random weights)
  with project_units' batch_size 1, 8, 64, 256 and all at once: the best, and each
  one's time over the best;
* analyses: the atlas core (mining img/s, projections/s), occlusion with 625 positions,
  maximize on VGG16 (8 units, 200 steps);
* with more than one device: data-parallel scaling of the train step (the same batch
  per device on 1, 2, 4, ... devices).

--quick runs every part at toy sizes (a CPU minute; the tests run it). Prints the
tables and writes one JSON file with the machine, devices, versions (bench/common.py)
and every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from zfjax.analyses import atlas, maximize, occlusion  # noqa: E402
from zfjax.nets import deconv, model, network
from bench_chunk import strongest_per_map  # noqa: E402
from bench_train import peak_tflops, synthetic_rows  # noqa: E402
from common import forward_flops, in_turns, random_params, write_results  # noqa: E402


class Plan(NamedTuple):
    """The sizes of every part (FULL on an accelerator, QUICK for a CPU minute)."""

    train_size: int
    train_width: float
    train_classes: int
    train_batches: tuple[int, ...]
    train_steps: int  # steps per timed round
    train_rounds: int
    jpegs: int  # training images written for the streamed part (and an eighth for val)
    jpeg_side: int
    stream_size: int  # network input side of the streamed part
    stream_batch: int
    stream_workers: int | None  # Grain workers of the streamed part (None: as many as cores)
    train_py: tuple[str, ...]  # train.py options besides data, store, epochs and workers
    train_py_snapshots: bool  # False: no Fig. 4 snapshots (their compiles: most of a toy epoch)
    zfnet_size: int
    zfnet_width: float
    zfnet_units: int
    vgg_size: int
    vgg_width: float
    vgg_units: int
    unit_batch_sizes: tuple[int, ...]
    projection_rounds: int
    atlas_images: int
    atlas_layers: tuple[str, ...] | None  # None: every conv layer
    atlas_size: int
    atlas_width: float
    occlusion_size: int
    occluder: int
    occlusion_stride: int
    maximize_size: int
    maximize_width: float
    maximize_units: int
    maximize_steps: int
    scaling_batch: int  # per device


FULL = Plan(train_size=224, train_width=1.0, train_classes=1000, train_batches=(128, 256),
            train_steps=20, train_rounds=5,
            jpegs=8192, jpeg_side=256, stream_size=224, stream_batch=128, stream_workers=None,
            train_py=("--size", "224", "--batch", "128"), train_py_snapshots=True,
            zfnet_size=224, zfnet_width=1.0, zfnet_units=256,
            vgg_size=224, vgg_width=1.0, vgg_units=64,
            unit_batch_sizes=(1, 8, 64, 256), projection_rounds=5,
            atlas_images=1024, atlas_layers=None, atlas_size=224, atlas_width=1.0,
            occlusion_size=224, occluder=32, occlusion_stride=8,  # 25 x 25 = 625 positions
            maximize_size=224, maximize_width=1.0, maximize_units=8, maximize_steps=200,
            scaling_batch=128)

QUICK = Plan(train_size=64, train_width=0.25, train_classes=10, train_batches=(8,),
             train_steps=2, train_rounds=2,
             jpegs=32, jpeg_side=80, stream_size=64, stream_batch=8,
             stream_workers=1,  # each worker process imports JAX: seconds of CPU apiece
             train_py=("--preset", "cpu", "--size", "64", "--width", "0.25", "--batch", "8"),
             train_py_snapshots=False,
             zfnet_size=64, zfnet_width=0.25, zfnet_units=8,
             vgg_size=32, vgg_width=0.125, vgg_units=1,  # all at once only: one compile
             unit_batch_sizes=(1,), projection_rounds=2,
             atlas_images=16, atlas_layers=("conv2",), atlas_size=64, atlas_width=0.25,
             occlusion_size=64, occluder=16, occlusion_stride=16,
             maximize_size=32, maximize_width=0.125, maximize_units=2, maximize_steps=3,
             scaling_batch=8)


def _say(line: str) -> None:
    print(line, flush=True)


# ------------------------------------------------------------------------- train step

def train_step_rows(plan: Plan, peak: float | None) -> list[dict]:
    """bench_train.synthetic_rows for each dtype and batch, with MFU from the shapes."""
    rows = []
    for dtype in ("bfloat16", "float32"):
        for batch in plan.train_batches:
            for row in synthetic_rows(plan.train_size, batch, dtype, plan.train_steps,
                                      plan.train_rounds, peak, width=plan.train_width,
                                      num_classes=plan.train_classes,
                                      devices=jax.devices()[:1]):
                rows.append(_with_shape_mfu(row, plan, peak))
    return rows


def _with_shape_mfu(row: dict, plan: Plan, peak: float | None) -> dict:
    config = network.Network(num_classes=plan.train_classes, image_size=row["input_size"],
                           width=plan.train_width)
    per_image = 3 * forward_flops(config)  # forward + backward (two products per layer)
    achieved = row["images_per_s"] * per_image / 1e12
    return {**row, "xla_gflop_per_image": row.pop("gflop_per_image"),
            "gflop_per_image": per_image / 1e9, "tflops": achieved, "peak_tflops": peak,
            "mfu": achieved / peak if peak else None, "ms_per_step": 1e3 * row["seconds"]}


def scaling_rows(plan: Plan, peak: float | None) -> list[dict]:
    """The bfloat16 train step on 1, 2, 4, ... and all devices, plan.scaling_batch per
    device: img/s and efficiency (img/s over devices x one device's img/s)."""
    n = jax.device_count()
    counts = sorted({2 ** i for i in range(n.bit_length()) if 2 ** i <= n} | {n})
    rows = []
    for d in counts:
        (row,) = synthetic_rows(plan.train_size, plan.scaling_batch * d, "bfloat16",
                                plan.train_steps, plan.train_rounds, peak,
                                width=plan.train_width, num_classes=plan.train_classes,
                                devices=jax.devices()[:d])
        rows.append(_with_shape_mfu(row, plan, peak))
    one = rows[0]["images_per_s"]
    for row in rows:
        row["scaling_efficiency"] = row["images_per_s"] / (row["devices"] * one)
    return rows


# ------------------------------------------------------------------ streamed pipeline

def write_random_jpegs(root: Path, count: int, side: int, classes: int = 4,
                       seed: int = 0) -> dict:
    """count training and count // 8 validation JPEGs (q90, side x side) of smooth random
    colour fields with some grain, root/<split>/<class>/<i>.jpg. Returns
    {'images', 'bytes', 'seconds'}."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    rng = np.random.default_rng(seed)
    jobs = [(split, i) for split, n in (("train", count), ("val", max(classes, count // 8)))
            for i in range(n)]
    for split in ("train", "val"):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
    seeds = rng.integers(0, 2**31, len(jobs))

    def one(job):
        (split, i), s = job
        r = np.random.default_rng(s)
        coarse = Image.fromarray(r.integers(0, 256, (16, 16, 3), np.uint8)).resize(
            (side, side), Image.Resampling.BICUBIC)
        pixels = np.asarray(coarse, np.int16) + r.integers(-12, 13, (side, side, 3))
        path = root / split / f"class{i % classes}" / f"{i}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        return path.stat().st_size

    start = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        sizes = list(pool.map(one, zip(jobs, seeds)))
    return {"images": len(jobs), "bytes": int(sum(sizes)),
            "seconds": time.perf_counter() - start}


def streamed_rows(plan: Plan, folder: Path) -> tuple[list[dict], str | None]:
    """Random JPEGs -> store -> one streamed epoch (plan.stream_workers) -> one train.py
    epoch on that store. Returns (rows, None), or ([], why) when Grain is missing."""
    missing = [m for m in ("grain", "array_record") if importlib.util.find_spec(m) is None]
    if missing:
        return [], (f"streamed pipeline skipped: {' and '.join(missing)} not importable "
                    f"(README: 'On a GPU machine without network' carries them as wheels)")
    from bench_data import epoch_row
    from zfjax.commands import train
    from zfjax.inputs import loader, store

    workers = plan.stream_workers or os.cpu_count() or 1
    made = write_random_jpegs(folder / "jpegs", plan.jpegs, plan.jpeg_side)
    rows = [{"work": "write random JPEGs", "images": made["images"], "seconds": made["seconds"],
             "images_per_s": made["images"] / made["seconds"],
             "mean_kb": made["bytes"] / made["images"] / 1e3}]
    start = time.perf_counter()
    prepared = store.prepare(str(folder / "jpegs"), folder / "store", plan.stream_size,
                             workers=workers, progress=False)
    seconds = time.perf_counter() - start
    count = prepared.count("train") + prepared.count("val")
    rows.append({"work": "prepare the store", "workers": workers, "images": count,
                 "seconds": seconds, "images_per_s": count / seconds})
    feed = loader.Streamed(prepared, "train", workers=workers)
    rows.append(epoch_row(feed, plan.stream_batch, plan.stream_size, workers))

    run = folder / "run"
    argv = ["--data", str(folder / "store"), "--epochs", "1", "--workers", str(workers),
            "--memory-budget", "1e-6", "--out", str(run), "--no-progress", "--offline",
            *plan.train_py]
    _say("train.py " + " ".join(argv) + ("" if plan.train_py_snapshots else
                                           "  (without its per-epoch snapshots)"))
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if not plan.train_py_snapshots:
            stack.enter_context(mock.patch.object(train, "snapshot_hook", lambda: None))
        code = train.main(argv)
    row = {"work": "train.py, one streamed epoch", "command": "train.py " + " ".join(argv),
           "snapshots": plan.train_py_snapshots, "exit_code": code, "workers": workers,
           "wall_seconds": time.perf_counter() - start}
    if code == 0:
        epoch = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        wait, train_seconds = epoch["input_wait_seconds"], epoch["train_seconds"]
        row.update(images_per_s=epoch["images_per_s"], seconds=train_seconds,
                   input_wait_seconds=wait,
                   # zfjax.train.trainer's rule for its epoch line
                   bound="input" if wait > 0.1 * train_seconds else "step")
    rows.append(row)
    return rows, None


# ------------------------------------------------------------------------ projections

def projection_rows(plan: Plan) -> list[dict]:
    """ZFNet conv5 and VGG16 conv5_3 units by project_units at each batch_size and all
    at once, taking turns: seconds (best round), and over the best batch size."""
    rows = []
    for arch, layer, size, width, count in (
            ("zfnet", "conv5", plan.zfnet_size, plan.zfnet_width, plan.zfnet_units),
            ("vgg16", "conv5_3", plan.vgg_size, plan.vgg_width, plan.vgg_units)):
        config = network.Network(arch=arch, num_classes=1000, image_size=size, width=width)
        params = jax.device_put(random_params(config))
        # numpy draws: jax.random.normal compiles once per shape (seconds on a CPU)
        image = np.random.default_rng(1).normal(size=(1, size, size, 3)).astype(np.float32)
        _, aux = model.forward_jit(config, params, image)
        units = strongest_per_map(aux, layer, count)
        k = len(units.channel)
        sizes = [b for b in plan.unit_batch_sizes if b < k] + [k]  # k: all at once (vmap)
        cases = {b: (lambda b=b: deconv.project_units(config, params, aux, layer, units,
                                                      batch_size=b)) for b in sizes}
        first = {}
        times = in_turns(cases, plan.projection_rounds, first)
        best = {b: min(t) for b, t in times.items()}
        fastest = min(best, key=best.get)
        for b in sizes:
            rows.append({"work": f"{k} {arch} {layer} projections", "image_size": size,
                         "width": width, "batch_size": b, "all_at_once": b == k,
                         "seconds": best[b], "median_seconds": statistics.median(times[b]),
                         "first_call_seconds": first[b],  # compilation included
                         "projections_per_s": k / best[b], "over_best": best[b] / best[fastest],
                         "best_batch_size": fastest,
                         "default_batch_size": deconv.default_batch_size(config, layer, k)})
    return rows


# --------------------------------------------------------------------------- analyses

def atlas_rows(plan: Plan) -> list[dict]:
    """atlas.mine over random images (img/s), then deconv.project_strongest of every conv
    layer's winners (projections/s); second calls (the first ones compile)."""
    config = network.Network(num_classes=1000, image_size=plan.atlas_size,
                           width=plan.atlas_width)
    params = jax.device_put(random_params(config))
    rng = np.random.default_rng(1)
    n, size = plan.atlas_images, plan.atlas_size
    inputs = rng.normal(0, 0.3, (n, size, size, 3)).astype(np.float32)
    rows = []
    for attempt in range(2):  # the first compiles
        start = time.perf_counter()
        tops, _, _ = atlas.mine(config, params, inputs, layers=plan.atlas_layers)
        mine_seconds = time.perf_counter() - start
        start = time.perf_counter()
        count = 0
        for layer, top in tops.items():
            deconv.project_strongest(config, params, layer, top,
                                     np.arange(len(top.value))[:, None], inputs)
            count += int(np.isfinite(top.value).sum())
        project_seconds = time.perf_counter() - start
    rows.append({"work": f"atlas mining ({', '.join(tops)}: top 9)", "images": n,
                 "image_size": size, "seconds": mine_seconds, "images_per_s": n / mine_seconds})
    rows.append({"work": "atlas projections (every winner)", "projections": count,
                 "image_size": size, "seconds": project_seconds,
                 "projections_per_s": count / project_seconds})
    return rows


def occlusion_row(plan: Plan) -> dict:
    """occlusion_maps of one random image, conv5, every position in one call."""
    size = plan.occlusion_size
    config = network.Network(num_classes=1000, image_size=size, width=plan.zfnet_width)
    params = jax.device_put(random_params(config))
    image = np.random.default_rng(2).normal(size=(size, size, 3)).astype(np.float32)
    positions = len(occlusion.positions(size, plan.occluder, plan.occlusion_stride)) ** 2

    def run():
        return occlusion.occlusion_maps(config, params, image, -1, jnp.zeros((size, size, 3)),
                                        layer="conv5", size=plan.occluder,
                                        stride=plan.occlusion_stride, batch_size=positions)

    first = {}
    (seconds,) = in_turns({"occlusion": run}, 1, first)["occlusion"]
    return {"work": f"occlusion, {positions} positions", "image_size": size,
            "first_call_seconds": first["occlusion"],
            "occluder": plan.occluder, "stride": plan.occlusion_stride, "positions": positions,
            "seconds": seconds, "positions_per_s": positions / seconds}


def maximize_row(plan: Plan) -> dict:
    """maximize.maximize on VGG16 conv5_3: plan.maximize_units units at once."""
    size = plan.maximize_size
    config = network.Network(arch="vgg16", num_classes=1000, image_size=size,
                           width=plan.maximize_width)
    params = jax.device_put(random_params(config))
    units = jnp.arange(plan.maximize_units, dtype=jnp.int32)

    def run():
        return maximize.maximize(config, params, units, jax.random.key(3), layer="conv5_3",
                                 steps=plan.maximize_steps)

    first = {}
    (seconds,) = in_turns({"maximize": run}, 1, first)["maximize"]
    steps = plan.maximize_units * plan.maximize_steps
    return {"work": f"maximize vgg16 conv5_3, {plan.maximize_units} units x "
                    f"{plan.maximize_steps} steps", "image_size": size, "seconds": seconds,
            "first_call_seconds": first["maximize"],
            "unit_steps_per_s": steps / seconds}


# ------------------------------------------------------------------------------- main

def print_rows(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """A table: columns (key, heading, format); '-' where a row lacks the key."""
    _say(f"\n{title}")
    _say("  ".join(f"{h:>{max(len(h), 8)}}" if i else f"{h:44}"
                   for i, (_, h, _) in enumerate(columns)))
    for row in rows:
        cells = []
        for i, (key, heading, fmt) in enumerate(columns):
            value = row.get(key)
            text = "-" if value is None else format(value, fmt)
            cells.append(f"{text:>{max(len(heading), 8)}}" if i else f"{text:44}")
        _say("  ".join(cells))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "accelerator.json"),
                   help="the JSON file written (default: bench/results/accelerator.json)")
    p.add_argument("--peak-tflops", type=float,
                   help="the chip's dense bfloat16 peak, for MFU (default: from a table: "
                        "H100/H200 989, A100 312)")
    p.add_argument("--quick", action="store_true", help="every part at toy sizes (a CPU minute)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    peak = args.peak_tflops or peak_tflops("bfloat16")
    started = time.perf_counter()
    results: dict = {"plan": plan._asdict(), "quick": args.quick, "peak_tflops": peak}
    timings = {}

    def part(name, fn):
        start = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - start
        return value

    _say(f"zfjax accelerator bench: {jax.device_count()} x {jax.devices()[0].device_kind} "
         f"({jax.default_backend()}), {os.cpu_count()} CPUs, peak "
         f"{f'{peak:g} TFLOP/s' if peak else 'unknown (--peak-tflops)'}"
         f"{', quick' if args.quick else ''}")
    train_cols = [("work", "work", ""), ("batch", "batch", "d"), ("devices", "devices", "d"),
                  ("ms_per_step", "ms/step", ".1f"), ("images_per_s", "img/s", ".0f"),
                  ("gflop_per_image", "GFLOP/img", ".2f"), ("tflops", "TFLOP/s", ".2f"),
                  ("mfu", "MFU", ".1%")]
    results["train_step"] = part("train_step", lambda: train_step_rows(plan, peak))
    print_rows(f"train step, ZFNet {plan.train_size} px width {plan.train_width:g}, synthetic "
               f"uint8 batches on the device (MFU against the bfloat16 peak)",
               results["train_step"], train_cols)

    with tempfile.TemporaryDirectory(prefix="zfjax-accelerator-") as folder:
        rows, skipped = part("streamed", lambda: streamed_rows(plan, Path(folder)))
    results["streamed"] = rows
    if skipped:
        results["streamed_skipped"] = skipped
        _say(f"\n{skipped}")
    else:
        print_rows(f"streamed pipeline, {plan.jpeg_side} px random JPEGs, input "
                   f"{plan.stream_size}", rows,
                   [("work", "work", ""), ("workers", "workers", "d"),
                    ("images", "images", "d"), ("seconds", "s", ".2f"),
                    ("images_per_s", "img/s", ".0f"),
                    ("images_per_s_per_worker", "img/s/worker", ".0f"),
                    ("input_wait_seconds", "input wait s", ".2f"), ("bound", "bound", "")])

    results["projections"] = part("projections", lambda: projection_rows(plan))
    print_rows("projections (project_units), random weights, one image",
               results["projections"],
               [("work", "work", ""), ("batch_size", "batch_size", "d"),
                ("seconds", "s", ".3f"), ("projections_per_s", "proj/s", ".0f"),
                ("over_best", "/ best", ".2f"), ("first_call_seconds", "1st call s", ".1f")])

    analyses = part("analyses", lambda: [*atlas_rows(plan), occlusion_row(plan),
                                         maximize_row(plan)])
    results["analyses"] = analyses
    print_rows("analyses, random weights", analyses,
               [("work", "work", ""), ("image_size", "px", "d"), ("seconds", "s", ".2f"),
                ("images_per_s", "img/s", ".0f"), ("projections_per_s", "proj/s", ".0f"),
                ("positions_per_s", "pos/s", ".0f"), ("unit_steps_per_s", "unit-steps/s", ".0f"),
                ("first_call_seconds", "1st call s", ".1f")])

    if jax.device_count() > 1:
        results["scaling"] = part("scaling", lambda: scaling_rows(plan, peak))
        print_rows(f"data-parallel scaling, bfloat16, {plan.scaling_batch} images per device",
                   results["scaling"], [*train_cols, ("scaling_efficiency", "efficiency", ".2f")])
    else:
        _say("\ndata-parallel scaling: skipped (one device)")
    results["part_seconds"] = timings
    results["seconds"] = time.perf_counter() - started
    _say(f"\nwhole run {results['seconds']:.0f} s ("
         + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
