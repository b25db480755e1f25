"""Benchmark of the atlas build (visualize.py atlas) against its least possible work.

    python bench/bench_atlas.py [--size 64] [--width 0.5] [--images 1024] [--batch 64]
                                [--run RUN_FOLDER] [--repeats 3] [--out bench/results/atlas.json]

The issue's target: building the atlas costs at most about 1.3x a bare forward pass
over the same images plus the projections. Side by side, alternating, best of
--repeats each (machine load hits all alike):

* bare forward: the jitted forward to the logits over the N images, in batches;
* projections: for each layer, one forward of the distinct images holding its
  winners (their pooling switches), then ``deconv.project_units`` of every winner
  (the same units the atlas projects), 512 units per call (full-size projections of
  a 224 px layer's 3,456 winners would need 7 GB at once);
* atlas core: ``zfjax.analyses.atlas.build``: the one mining pass (top-9 and per-class sums
  of every conv layer), then the projections chunked by image, cropped to receptive
  fields;
* site: ``figures.atlas_site.write_site`` of that result (JPEG encoding, pages).

Default network: the cpu preset's (64 px, width 0.5, 10 classes) with random weights
and random images; --run uses a trained run and its own validation images.
Prints a table and writes JSON with the command, machine and load (bench/common.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zfjax import cli, loading  # noqa: E402
from zfjax.analyses import atlas
from zfjax.inputs import data
from zfjax.nets import deconv, model, network
from zfjax.figures import atlas_site  # noqa: E402
from common import write_results  # noqa: E402  (bench/common.py)


def wall(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def inputs_of(args):
    """(config, params, inputs float32 (N, H, W, 3), display uint8, labels, class names)."""
    if args.run:
        loaded = loading.load(args.run)
        config = loaded.config
        source, data_dir = cli.run_data_source(loaded.info)
        split = data.load_split(source, "val", config.image_size, data_dir=data_dir,
                                limit=args.images, progress=False,
                                classes=loaded.info.get("class_names"))
        inputs = loaded.preprocessing(split.images, config.image_size)
        display = np.ascontiguousarray(data.centre_crop(split.images, config.image_size))
        return config, loaded.params, inputs, display, split.labels, loaded.class_names
    config = network.Network(num_classes=10, image_size=args.size, width=args.width,
                               init_std=None)
    params = model.init_params(config, jax.random.key(0))
    rng = np.random.default_rng(1)
    inputs = rng.normal(0, 0.3, (args.images, args.size, args.size, 3)).astype(np.float32)
    display = np.clip(inputs * 255 / 1.2 + 128, 0, 255).astype(np.uint8)
    labels = np.arange(args.images) % 10
    return config, params, inputs, display, labels, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--run", default=None, help="a trained run folder (its val images)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/atlas.json")
    args = parser.parse_args()

    config, params, inputs, display, labels, class_names = inputs_of(args)
    n = len(inputs)
    layers = network.conv_layers(config)
    logits = jax.jit(lambda p, x: model.forward(config, p, x)[0])
    tops, _, _ = atlas.mine(config, params, inputs, labels, batch_size=args.batch)
    winners = {}
    for layer, top in tops.items():
        filled = np.isfinite(top.value)
        used, local = np.unique(top.image[filled], return_inverse=True)
        channel = np.broadcast_to(np.arange(len(top.value))[:, None], top.value.shape)[filled]
        winners[layer] = (used, deconv.Units(local.astype(np.int32), channel.astype(np.int32),
                                             top.y[filled], top.x[filled]))
    units = sum(len(u.channel) for _, u in winners.values())

    def forward():
        return [logits(params, inputs[s:s + args.batch]) for s in range(0, n, args.batch)]

    def projections():
        for layer, (used, unit) in winners.items():
            _, aux = model.forward_jit(config, params, inputs[used])
            for start in range(0, len(unit.channel), 512):  # bounded memory at 224 px
                jax.block_until_ready(deconv.project_units(
                    config, params, aux, layer, deconv.Units(*(a[start:start + 512] for a in unit))))
        return 0

    built = {}

    def core():
        built["atlas"] = atlas.build(config, params, inputs, labels, batch_size=args.batch)
        return 0

    def site():
        with tempfile.TemporaryDirectory() as folder:
            atlas_site.write_site(config, built["atlas"], display, Path(folder) / "site",
                                  class_names=class_names, source="bench")
            built["bytes"] = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
            built["files"] = sum(1 for f in Path(folder).rglob("*") if f.is_file())
        return 0

    cases = {"bare forward (logits)": forward, "projections (forward of winners + reverse)":
             projections, "atlas core (atlas.build)": core, "site (write_site)": site}
    first = {name: wall(fn) for name, fn in cases.items()}  # first calls compile
    best = {name: float("inf") for name in cases}
    for _ in range(args.repeats):  # alternate, so load changes hit every case alike
        for name, fn in cases.items():
            best[name] = min(best[name], wall(fn))

    base = best["bare forward (logits)"] + best["projections (forward of winners + reverse)"]
    core_ratio = best["atlas core (atlas.build)"] / base
    total_ratio = (best["atlas core (atlas.build)"] + best["site (write_site)"]) / base
    rows = [{"work": name, "seconds": best[name], "first_call_seconds": first[name],
             "vs_forward_plus_projections": best[name] / base} for name in cases]

    where = f"run {args.run}" if args.run else f"random weights and images, {args.size} px, width {args.width}"
    print(f"\nzfjax atlas benchmark, {jax.devices()[0].platform} ({os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}); {n} images ({where}), {len(layers)} layers, "
          f"{units} projections")
    print(f"{'work':46s} {'seconds':>9s} {'1st call':>9s} {'/ (fwd+proj)':>13s}")
    for row in rows:
        print(f"{row['work']:46s} {row['seconds']:9.2f} {row['first_call_seconds']:9.2f} "
              f"{row['vs_forward_plus_projections']:12.2f}x")
    print(f"\natlas core / (bare forward + projections): {core_ratio:.2f}x (target <= ~1.3x); "
          f"with the site: {total_ratio:.2f}x; site {built['bytes'] / 2**20:.1f} MiB in "
          f"{built['files']} files")

    print()
    write_results(args.out, {
        "config": vars(args), "images": n, "projections": units, "rows": rows,
        "core_vs_forward_plus_projections": core_ratio,
        "with_site_vs_forward_plus_projections": total_ratio,
        "site_bytes": built["bytes"], "site_files": built["files"]})


if __name__ == "__main__":
    main()
