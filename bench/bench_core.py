"""Benchmark of the core: forward with/without switches, conv5 projections.

    python bench/bench_core.py [--size 224] [--batch 32] [--units 256] [--out bench/results/core.json]

Prints a table and writes JSON with the platform. Ratios measured side by side
in one run are what to compare; absolute numbers move with machine load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from zfjax import deconv, model  # noqa: E402

# PyTorch 2.13 CPU on this 2-core machine (shared/FACTS.md): 256 conv5
# projections of one 224 image.
REFERENCE_S = {"captum NeuronDeconvolution loop": 13.1, "hand-written torch deconvnet": 3.75}


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


def bench_projections(config, params, image, units_count, rows):
    forward = jax.jit(lambda p, x: model.forward(config, p, x)[1])
    aux = forward(params, image)
    t_forward = timed(forward, params, image)
    peaks = aux["activations"]["conv5"][0].max(axis=(0, 1))
    channels = jnp.argsort(-peaks)[:units_count]
    units = deconv.strongest_units(aux, "conv5", channels)
    signals = jax.vmap(lambda c, y, x: deconv.unit_signal(aux, "conv5", c, y, x))(
        units.channel, units.y, units.x)

    dense_one = jax.jit(lambda s: deconv.project(config, params, aux, "conv5", s))
    window_one = jax.jit(lambda u: deconv.project_units(config, params, aux, "conv5", u))
    dense_many = jax.jit(jax.vmap(lambda s: deconv.project(config, params, aux, "conv5", s)))

    def loop(fn, items, count):
        def run():
            return [fn(item) for item in items[:count]]
        return run

    one_units = [deconv.Units(*(u[k : k + 1] for u in units)) for k in range(units_count)]
    sample = min(16, units_count)  # one-at-a-time loops are timed on a sample, then scaled
    cases = [
        ("dense, one at a time", loop(dense_one, list(signals), sample), sample),
        ("receptive-field window, one at a time", loop(window_one, one_units, sample), sample),
        ("dense, batched (vmap)", lambda: dense_many(signals), units_count),
        ("receptive-field window, batched", lambda: window_one(units), units_count),
    ]
    for name, fn, count in cases:
        seconds = timed(fn, repeats=2) * units_count / count
        rows.append({"work": f"{units_count} conv5 projections: {name}", "batch": units_count,
                     "seconds": seconds, "seconds_with_forward": seconds + t_forward,
                     "projections_per_s": units_count / seconds})
    dense = dense_many(signals)[:, 0]  # (K, 1, H, W, 3): one image per signal
    window = window_one(units)
    rows.append({"work": "max |dense - window| / max |dense|",
                 "value": float(jnp.abs(dense - window).max() / jnp.abs(dense).max())})
    bench_torch(config, params, image, units, np.asarray(window), t_forward, rows)


def bench_torch(config, params, image, units, ours, t_forward_jax, rows):
    """The same projections with a hand-written PyTorch deconvnet, if torch is installed."""
    try:
        import torch
        from torch_reference import TorchDeconvnet
    except ImportError:
        print("torch not installed: no side-by-side PyTorch rows (pip install torch==2.13.0)")
        return
    net = TorchDeconvnet(params, config)
    k = len(units.channel)
    with torch.no_grad():
        start = time.perf_counter()
        acts, indices, sizes = net.forward(np.asarray(image))
        t_forward = time.perf_counter() - start
        conv5 = acts["conv5"]
        signals = torch.zeros((k,) + conv5.shape[1:])
        for i, (c, y, x) in enumerate(zip(units.channel.tolist(), units.y.tolist(), units.x.tolist())):
            signals[i, c, y, x] = conv5[0, c, y, x]

        def one_at_a_time(count):
            return [net.project("conv5", signals[i : i + 1], indices, sizes) for i in range(count)]

        def batched(chunk=32):
            return torch.cat([net.project("conv5", signals[i : i + chunk], indices, sizes)
                              for i in range(0, k, chunk)])

        sample = min(16, k)
        for name, fn, count in [("one at a time", lambda: one_at_a_time(sample), sample),
                                ("batched (chunks of 32)", batched, k)]:
            fn()
            best = min(_wall(fn) for _ in range(2)) * k / count
            rows.append({"work": f"{k} conv5 projections: PyTorch hand-written, {name}",
                         "batch": k, "seconds": best, "seconds_with_forward": best + t_forward,
                         "projections_per_s": k / best})
        theirs = batched().numpy().transpose(0, 2, 3, 1)
    rows.append({"work": "max |zfjax - PyTorch| / max |PyTorch| (conv5 units)",
                 "value": float(np.abs(ours - theirs).max() / np.abs(theirs).max())})
    rows.append({"work": "forward of 1 image, PyTorch / zfjax seconds",
                 "value": t_forward / t_forward_jax})


def _wall(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--out", default="bench/results/core.json")
    parser.add_argument("--projections-only", action="store_true",
                        help="skip the forward/gradient rows")
    args = parser.parse_args()

    config = model.ZFNetConfig(num_classes=1000, image_size=args.size, init_std=None)
    params = model.init_params(config, jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (args.batch, args.size, args.size, 3))
    rows = []
    if not args.projections_only:
        bench_forward(config, params, images, rows)
    bench_projections(config, params, images[:1], args.units, rows)

    print(f"\nzfjax core benchmark, {args.size} px, {jax.devices()[0].platform} "
          f"({jax.device_count()} devices, {os.cpu_count()} CPUs)")
    print(f"{'work':62s} {'seconds':>9s} {'rate':>14s}")
    for row in rows:
        if "value" in row:
            print(f"{row['work']:62s} {row['value']:>9.2g}")
            continue
        rate = (f"{row['images_per_s']:.1f} img/s" if "images_per_s" in row
                else f"{row['projections_per_s']:.1f} proj/s")
        label = row["work"] + (f" [{row['pooling']}]" if "pooling" in row else "")
        print(f"{label:62s} {row['seconds']:9.3f} {rate:>14s}")
    for name, seconds in REFERENCE_S.items():
        print(f"{'reference: ' + name + ' (FACTS.md)':62s} {seconds:9.3f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "platform": {"machine": platform.platform(), "processor": platform.processor(),
                     "cpus": os.cpu_count(), "jax": jax.__version__,
                     "backend": jax.devices()[0].platform, "device": str(jax.devices()[0].device_kind),
                     "device_count": jax.device_count()},
        "config": {"image_size": args.size, "batch": args.batch, "units": args.units},
        "rows": rows, "reference_seconds": REFERENCE_S,
    }, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
