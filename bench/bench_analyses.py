"""Benchmark of the analyses: top-9 mining against a bare forward pass; occlusion.

    python bench/bench_analyses.py [--size 224] [--width 1.0] [--batch 32] [--batches 4]
                                   [--out bench/results/analyses.json]

* Mining (paper Fig. 2, zfjax.nets.strongest.mine over conv1..conv5) streams the same
  batches as a bare forward pass; the two alternate, best of --repeats each, so
  machine load hits both alike. Target: at most 15% more than the forward.
* Occlusion (paper Fig. 7, zfjax.analyses.occlusion.occlusion_maps): 625 positions (32 px
  square, stride 8) on one 224 image at full width; incremental (only the windows
  the square changes) and whole-forward, against a PyTorch loop doing Captum
  Occlusion's work (batched full forwards, bench/torch_reference.py) in the same
  run, and Captum's own time on this machine (shared/FACTS.md: 12.4 s, unloaded).

Prints a table and writes JSON with the command, machine and load
(bench/common.py). Ratios measured side by side in one run are what to
compare; absolute numbers move with machine load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # torch_reference
from zfjax.analyses import occlusion  # noqa: E402
from zfjax.nets import model, network, strongest
from common import write_results  # noqa: E402  (bench/common.py)

CAPTUM_OCCLUSION_S = 12.4  # 224 px, 32 px window, stride 8, 625 positions (FACTS.md)


def wall(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def bench_mining(config, params, batches, repeats, rows):
    logits = jax.jit(lambda p, x: model.forward(config, p, x)[0])
    conv5 = jax.jit(lambda p, x: model.forward(config, p, x)[1]["activations"]["conv5"])
    cases = {
        "bare forward (logits)": lambda: [logits(params, b) for b in batches],
        "forward to conv5 only": lambda: [conv5(params, b) for b in batches],
        "top-9 mining, conv1..conv5": lambda: strongest.mine(config, params, batches),
    }
    compile_s = {name: wall(fn) for name, fn in cases.items()}  # first call compiles
    best = {name: float("inf") for name in cases}
    for _ in range(repeats):  # alternate, so load changes hit every case alike
        for name, fn in cases.items():
            best[name] = min(best[name], wall(fn))
    n = sum(len(b) for b in batches)
    base = best["bare forward (logits)"]
    for name in cases:
        rows.append({"work": name, "images": n, "seconds": best[name],
                     "first_call_seconds": compile_s[name], "images_per_s": n / best[name],
                     "vs_bare_forward": best[name] / base - 1})
    return best["top-9 mining, conv1..conv5"] / base - 1


def torch_occlusion(params, config, image, size, stride, batch):
    """PyTorch reference doing Captum Occlusion's work: full forwards of occluded copies in
    batches of ``batch`` (Captum's perturbations_per_eval). Returns seconds and p(class 0)."""
    import torch
    import torch.nn.functional as F
    from torch_reference import TorchDeconvnet

    torch.set_num_threads(os.cpu_count())
    net = TorchDeconvnet(params, config)
    fc = [(torch.from_numpy(np.asarray(params[n]["kernel"]).copy()),
           torch.from_numpy(np.asarray(params[n]["bias"]).copy())) for n in ("fc6", "fc7", "fc8")]
    steps = occlusion.positions(config.image_size, size, stride)
    corners = [(t, l) for t in steps for l in steps]
    start = time.perf_counter()
    probs = []
    with torch.no_grad():
        for i in range(0, len(corners), batch):
            chunk = corners[i:i + batch]
            x = np.repeat(image[None], len(chunk), axis=0)
            for k, (t, l) in enumerate(chunk):
                x[k, t:t + size, l:l + size] = 0
            acts, _, _ = net.forward(x)
            h = acts["pool5"].permute(0, 2, 3, 1).reshape(len(chunk), -1)  # NHWC flatten
            for j, (w, b) in enumerate(fc):
                h = h @ w + b
                h = F.relu(h) if j < 2 else h
            probs.append(torch.softmax(h, -1)[:, 0].numpy())
    return time.perf_counter() - start, np.concatenate(probs).reshape(len(steps), len(steps))


def bench_occlusion(params, config, batch_sizes, full_batch, repeats, rows):
    """625 positions (32 px, stride 8) on one 224 image: zfjax incremental and full, PyTorch."""
    image = np.asarray(jax.random.normal(jax.random.key(2), (224, 224, 3)), np.float32) * 0.3
    fill = np.zeros_like(image)

    def zfjax_case(batch, incremental):
        def run():
            return occlusion.occlusion_maps(config, params, image, np.int32(0), fill,
                                            layer="conv5", size=32, stride=8, batch_size=batch,
                                            incremental=incremental)
        return run

    cases = {f"zfjax occlusion, incremental, batches of {b}": zfjax_case(b, True)
             for b in batch_sizes}
    if full_batch:
        cases[f"zfjax occlusion, whole forward per copy, batches of {full_batch}"] = zfjax_case(
            full_batch, False)
    first = {name: wall(fn) for name, fn in cases.items()}  # compiles
    best = {name: float("inf") for name in cases}
    torch_best, torch_p = float("inf"), None
    for _ in range(repeats):  # alternate zfjax and PyTorch, so load changes hit both
        for name, fn in cases.items():
            best[name] = min(best[name], wall(fn))
        seconds, torch_p = torch_occlusion(params, config, image, 32, 8, 25)
        torch_best = min(torch_best, seconds)
    p_true = np.asarray(next(iter(cases.values()))().p_true)
    agree = float(np.abs(p_true - torch_p).max())
    for name in cases:
        rows.append({"work": name, "seconds": best[name], "first_call_seconds": first[name],
                     "positions_per_s": 625 / best[name], "vs_torch_same_run": best[name] / torch_best,
                     "captum_seconds_facts": CAPTUM_OCCLUSION_S})
    rows.append({"work": "PyTorch occlusion (Captum's work), batches of 25", "seconds": torch_best,
                 "first_call_seconds": float("nan"), "positions_per_s": 625 / torch_best,
                 "max_abs_p_difference_vs_zfjax": agree})
    return {name: best[name] for name in cases}, torch_best, agree


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--occlusion-batches", type=int, nargs="+", default=[125, 625],
                        help="batch sizes of the incremental occlusion")
    parser.add_argument("--occlusion-full-batch", type=int, default=25,
                        help="batch size of the whole-forward occlusion (0: skip it)")
    parser.add_argument("--skip-occlusion", action="store_true", help="mining only")
    parser.add_argument("--out", default="bench/results/analyses.json")
    args = parser.parse_args()

    config = network.Network(num_classes=10, image_size=args.size, width=args.width,
                               init_std=None)
    params = model.init_params(config, jax.random.key(0))
    rng = np.random.default_rng(1)
    batches = [rng.normal(0, 0.3, (args.batch, args.size, args.size, 3)).astype(np.float32)
               for _ in range(args.batches)]
    rows = []
    overhead = bench_mining(config, params, batches, args.repeats, rows)
    occ, torch_s, agree = {}, None, None
    if not args.skip_occlusion:
        full = network.Network(num_classes=10, image_size=224, init_std=None)
        full_params = params if full == config else model.init_params(full, jax.random.key(0))
        occ, torch_s, agree = bench_occlusion(full_params, full, args.occlusion_batches,
                                              args.occlusion_full_batch,
                                              max(1, args.repeats - 1), rows)

    print(f"\nzfjax analyses benchmark, {jax.devices()[0].platform} ({jax.device_count()} devices, "
          f"{os.cpu_count()} CPUs); mining: {args.batches} x {args.batch} images, {args.size} px, "
          f"width {args.width}")
    print(f"{'work':64s} {'seconds':>9s} {'1st call':>9s} {'rate':>14s} {'relative':>9s}")
    for row in rows:
        rate = (f"{row['images_per_s']:.1f} img/s" if "images_per_s" in row
                else f"{row['positions_per_s']:.1f} pos/s")
        rel = (f"{100 * row['vs_bare_forward']:+.1f}%" if "vs_bare_forward" in row
               else f"{row['vs_torch_same_run']:.2f}x" if "vs_torch_same_run" in row else "")
        print(f"{row['work']:64s} {row['seconds']:9.3f} {row['first_call_seconds']:9.2f} "
              f"{rate:>14s} {rel:>9s}")
    print(f"{'reference: Captum Occlusion, unloaded machine (FACTS.md)':64s} {CAPTUM_OCCLUSION_S:9.3f}")
    print(f"\nmining overhead over the bare forward: {100 * overhead:+.1f}% (target <= +15%)")
    if occ:
        best = min(occ.values())
        print(f"occlusion, 625 positions: zfjax {best:.2f} s, PyTorch (Captum's work) {torch_s:.2f} s "
              f"in this run ({torch_s / best:.2f}x); Captum on an unloaded machine: "
              f"{CAPTUM_OCCLUSION_S} s; max |p difference| {agree:.1e}")

    write_results(args.out, {
        "config": vars(args), "rows": rows, "mining_overhead": overhead,
        "occlusion_seconds": occ, "torch_occlusion_seconds": torch_s,
        "reference_seconds": {"captum Occlusion": CAPTUM_OCCLUSION_S}})


if __name__ == "__main__":
    main()
