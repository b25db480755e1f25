"""Benchmark of the core: forward with/without switches, single-unit projections.

    python bench/bench_core.py [--size 224] [--batch 32] [--units 256] [--vgg-units 16]
                               [--sample 16] [--rounds 5] [--projections-only]
                               [--out bench/results/core.json]

ZFNet conv5 and VGG16 conv5_3 units of one 224 image, projected by
``deconv.project_units`` (its default: 8 units per step on CPU), by a
hand-written PyTorch deconvnet (bench/torch_reference.py) and by Captum's
NeuronDeconvolution, all in the same run (torch==2.13.0 and captum optional),
taking turns round by round.

Prints a table and writes JSON with the command, machine and load
(bench/common.py). Ratios measured side by side in one run are what to
compare; absolute numbers move with machine load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from zfjax.nets import deconv, model, network  # noqa: E402
from common import write_results  # noqa: E402  (bench/common.py)



def timed(fn, *args, repeats=3):
    """Best wall time of ``fn(*args)`` over repeats, after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


@contextlib.contextmanager
def plain_xla_pooling():
    """Swap in XLA's own max-pool (no switch machinery) as a baseline."""
    def pool(x, spec=model.ZFNET_POOL):
        n, k, s, p = x.shape[1], spec.window, spec.stride, spec.padding
        extra = (model.pool_output_size(n, spec) - 1) * s + k - n - p
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, s, s, 1),
                                 ((0, 0), (p, extra), (p, extra), (0, 0))), None
    original = model.max_pool_with_switches
    model.max_pool_with_switches = pool
    try:
        yield
    finally:
        model.max_pool_with_switches = original


def bench_forward(config, params, images, rows):
    n = images.shape[0]

    def loss(p, x):
        logits, _ = model.forward(config, p, x)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0])

    def variants():  # fresh jits, so each traces with the pooling in place at the time
        return {
            "forward, logits only": jax.jit(lambda p, x: model.forward(config, p, x)[0]),
            "forward, logits + aux (switches)": jax.jit(lambda p, x: model.forward(config, p, x)),
            "loss + grad": jax.jit(jax.value_and_grad(loss)),
        }

    def measure(fns, pooling):
        for name, fn in fns.items():
            seconds = timed(fn, params, images)
            rows.append({"work": name, "pooling": pooling, "batch": n,
                         "seconds": seconds, "images_per_s": n / seconds})

    measure(variants(), "zfjax (switches)")
    with plain_xla_pooling():
        fns = variants()
        del fns["forward, logits + aux (switches)"]
        measure(fns, "XLA reduce_window (baseline)")


def bench_projections(config, params, image, layer, units_count, rows, sample=16, rounds=5):
    """``units_count`` single-unit projections of one image from ``layer``, every way.

    Every way runs once per round, all ways in turn, so each sees the same stretches of
    machine noise; a row keeps its best round (and the median). One-at-a-time loops are
    timed on ``sample`` units and scaled to ``units_count``.
    """
    forward = jax.jit(lambda p, x: model.forward(config, p, x)[1])
    aux = forward(params, image)
    t_forward = timed(forward, params, image)
    peaks = aux["activations"][layer][0].max(axis=(0, 1))
    channels = jnp.argsort(-peaks)[:units_count]
    units = deconv.strongest_units(aux, layer, channels)
    k = len(units.channel)
    sample = min(sample, k)
    tag = f"{k} {config.arch} {layer} projections"

    window_default = jax.jit(lambda u: deconv.project_units(config, params, aux, layer, u))
    window_vmap = jax.jit(lambda u: deconv.project_units(config, params, aux, layer, u,
                                                         batch_size=k))
    one_units = [deconv.Units(*(u[i : i + 1] for u in units)) for i in range(sample)]
    cases = [
        ("zfjax project_units, batched (default)", lambda: window_default(units), k, t_forward),
        ("zfjax project_units, vmap over all units", lambda: window_vmap(units), k, t_forward),
        ("zfjax project_units, one unit per call", lambda: [window_default(u) for u in one_units],
         sample, t_forward),
    ]
    if config.arch == "zfnet":
        signals = jax.vmap(lambda c, y, x: deconv.unit_signal(aux, layer, c, y, x))(
            units.channel, units.y, units.x)
        dense_many = jax.jit(jax.vmap(lambda s: deconv.project(config, params, aux, layer, s)))
        cases.append(("zfjax project (dense), vmap", lambda: dense_many(signals), k, t_forward))
    if deconv.default_batch_size(config, layer, k) >= k:
        print(f"{tag}: the default already projects all {k} at once: the same program as "
              f"'vmap over all units' (their difference is timing noise)")
    ours = np.asarray(window_default(units))
    checks = [(f"{tag}: max |default - vmap| / max",
               float(np.abs(ours - np.asarray(window_vmap(units))).max() / np.abs(ours).max()))]
    extra_cases, extra_checks = torch_cases(config, params, image, layer, units, ours, sample)
    cases += extra_cases
    checks += extra_checks

    times = {name: [] for name, *_ in cases}
    for _, fn, _, _ in cases:  # warm-up: compilation, first-call allocations
        jax.block_until_ready(fn())
    for _ in range(rounds):
        for name, fn, count, _ in cases:
            # Let the last way's worker threads stop spinning (XLA's and PyTorch's pools
            # compete for the 2 cores otherwise: PyTorch one at a time was 1.4x slower).
            time.sleep(0.5)
            times[name].append(_wall(lambda: jax.block_until_ready(fn())) * k / count)
    for name, _, _, forward_seconds in cases:
        best = min(times[name])
        row = {"work": f"{tag}: {name}", "batch": k, "seconds": best,
               "median_seconds": float(np.median(times[name])), "projections_per_s": k / best}
        if forward_seconds is not None:
            row["seconds_with_forward"] = best + forward_seconds
        rows.append(row)
    rows.extend({"work": work, "value": value} for work, value in checks)


def torch_cases(config, params, image, layer, units, ours, sample):
    """The same projections with a hand-written PyTorch deconvnet and with Captum's
    NeuronDeconvolution, where torch (and captum) are installed: ([(name, fn, count,
    forward seconds)], [(check name, max relative difference to zfjax)])."""
    try:
        import torch
        from torch_reference import TorchDeconvnet, torch_sequential
    except ImportError:
        print("torch not installed: no side-by-side PyTorch rows (pip install torch==2.13.0)")
        return [], []
    net = TorchDeconvnet(params, config)
    k = len(units.channel)
    tag = f"{k} {config.arch} {layer} projections"
    with torch.no_grad():
        start = time.perf_counter()
        acts, indices, sizes = net.forward(np.asarray(image))
        t_forward = time.perf_counter() - start
        top = acts[layer]
        signals = torch.zeros((k,) + top.shape[1:])
        for i, (c, y, x) in enumerate(zip(units.channel.tolist(), units.y.tolist(), units.x.tolist())):
            signals[i, c, y, x] = top[0, c, y, x]
        first_value = float(top[0, int(units.channel[0]), int(units.y[0]), int(units.x[0])])

    def one_at_a_time():
        with torch.no_grad():
            return [net.project(layer, signals[i : i + 1], indices, sizes) for i in range(sample)]

    def batched(chunk=32):
        with torch.no_grad():
            return torch.cat([net.project(layer, signals[i : i + chunk], indices, sizes)
                              for i in range(0, k, chunk)])

    cases = [("PyTorch hand-written, one at a time", one_at_a_time, sample, t_forward),
             ("PyTorch hand-written, batched (chunks of 32)", batched, k, t_forward)]
    theirs = batched().numpy().transpose(0, 2, 3, 1)
    checks = [(f"{tag}: max |zfjax - PyTorch| / max |PyTorch|",
               float(np.abs(ours - theirs).max() / np.abs(theirs).max()))]
    try:
        from captum.attr import NeuronDeconvolution
    except ImportError:
        print("captum not installed: no Captum rows (pip install captum)")
        return cases, checks
    seq, modules = torch_sequential(params, config)
    deconvolution = NeuronDeconvolution(seq, modules[layer])
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(0, 3, 1, 2)))

    def captum_loop(count=sample):
        return [deconvolution.attribute(x, neuron_selector=(int(units.channel[i]), int(units.y[i]),
                                                            int(units.x[i])))
                for i in range(count)]

    # Captum runs the forward inside every call: no separate forward time.
    cases.append(("Captum NeuronDeconvolution loop", captum_loop, sample, None))
    # Captum sends a gradient of 1 down from the unit; zfjax sends the unit's activation.
    first = captum_loop(1)[0].numpy().transpose(0, 2, 3, 1)[0] * first_value
    checks.append((f"{tag}: max |zfjax - Captum| / max |Captum| (first unit)",
                   float(np.abs(ours[0] - first).max() / np.abs(first).max())))
    return cases, checks


def ratios(rows, tag):
    """Speed of the default batched call against the others, measured in the same run."""
    seconds = {r["work"].split(": ", 1)[1]: r["seconds"] for r in rows
               if r["work"].startswith(tag + ":") and "seconds" in r}
    ours = seconds.get("zfjax project_units, batched (default)")
    return {f"{tag}: {name} / zfjax default": s / ours for name, s in seconds.items()
            if ours and not name.startswith("zfjax project_units, batched")}


def _wall(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--units", type=int, default=256, help="ZFNet conv5 units projected")
    parser.add_argument("--vgg-units", type=int, default=16,
                        help="VGG16 conv5_3 units projected (0: skip VGG16)")
    parser.add_argument("--sample", type=int, default=16,
                        help="units timed in the one-at-a-time loops (then scaled)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="projection rounds (every way once per round; best kept)")
    parser.add_argument("--out", default="bench/results/core.json")
    parser.add_argument("--projections-only", action="store_true",
                        help="skip the forward/gradient rows")
    args = parser.parse_args()

    config = network.Network(num_classes=1000, image_size=args.size, init_std=None)
    params = model.init_params(config, jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (args.batch, args.size, args.size, 3))
    rows = []
    if not args.projections_only:
        bench_forward(config, params, images, rows)
    bench_projections(config, params, images[:1], "conv5", args.units, rows, args.sample,
                      args.rounds)
    tags = [f"{args.units} zfnet conv5 projections"]
    if args.vgg_units:
        vgg = network.Network(arch="vgg16", num_classes=1000, image_size=224, init_std=None)
        vgg_params = model.init_params(vgg, jax.random.key(0))
        image = jax.random.normal(jax.random.key(1), (1, 224, 224, 3))
        bench_projections(vgg, vgg_params, image, "conv5_3", args.vgg_units, rows,
                          min(args.sample, 4), args.rounds)
        tags.append(f"{args.vgg_units} vgg16 conv5_3 projections")
    summary = {}
    for tag in tags:
        summary.update(ratios(rows, tag))

    print(f"\nzfjax core benchmark, {args.size} px, {jax.devices()[0].platform} "
          f"({jax.device_count()} devices, {os.cpu_count()} CPUs)")
    print(f"{'work':78s} {'seconds':>9s} {'median':>9s} {'rate':>14s}")
    for row in rows:
        if "value" in row:
            print(f"{row['work']:78s} {row['value']:>9.2g}")
            continue
        rate = (f"{row['images_per_s']:.1f} img/s" if "images_per_s" in row
                else f"{row['projections_per_s']:.1f} proj/s")
        label = row["work"] + (f" [{row['pooling']}]" if "pooling" in row else "")
        median = f"{row['median_seconds']:9.3f}" if "median_seconds" in row else " " * 9
        print(f"{label:78s} {row['seconds']:9.3f} {median} {rate:>14s}")
    print("\nspeed-ups of the default batched call, same run:")
    for name, ratio in summary.items():
        print(f"{name:88s} {ratio:6.2f}x")

    print()
    write_results(args.out, {
        "config": {"image_size": args.size, "batch": args.batch, "units": args.units,
                   "vgg_units": args.vgg_units, "sample": args.sample, "rounds": args.rounds},
        "rows": rows, "speedups": summary})


if __name__ == "__main__":
    main()
