"""XLA's convolution against ``model.patch_convolve`` (im2col) for the strided convs, side by side.

    python bench/bench_conv.py [--batch 16] [--size 224] [--rounds 5]
                               [--out bench/results/conv-<platform>.json]

For ZFNet's conv1 (7x7, stride 2) and conv2 (5x5, stride 2) and AlexNet's conv1 (11x11,
stride 4) at their sizes for a ``--size`` px image: the forward, the forward with the
input's gradient (what the attribution methods need) and the forward with the filter's
gradient (and the input's, but for a first layer: training), each way compiled on its
own; the ways take turns for ``--rounds`` rounds after a first call, best and median
kept, milliseconds per image from the best. ``model.convolve`` takes the patches on CPU
for stride 2 from this. Prints a table, writes JSON (bench/common.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from zfjax.nets import model, network  # noqa: E402
from common import in_turns, write_results  # noqa: E402  (bench/common.py)


WAYS = {"XLA conv": model.xla_convolve, "patches": model.patch_convolve}


def strided_convs(size: int):
    """(name, input shape (H, W, C), Conv stage) of each strided conv of ZFNet and AlexNet."""
    out = []
    for arch in ("zfnet", "alexnet"):
        side, channels = size, 3
        for stage in network.stages(network.Network(arch=arch, image_size=size)):
            if isinstance(stage, network.Conv):
                if stage.stride > 1:
                    out.append((f"{arch} {stage.name}", (side, side, channels), stage))
                side = network.conv_output_size(side, stage.kernel, stage.stride, stage.padding)
                channels = stage.features
            elif isinstance(stage, network.MaxPool):
                side = network.pool_output_size(side, stage)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if min(args.batch, args.size, args.rounds) <= 0:
        parser.error("--batch, --size and --rounds must be positive")

    rows = []
    key = jax.random.key(0)
    for name, shape, stage in strided_convs(args.size):
        k, p = stage.kernel, stage.padding
        x = jax.random.normal(key, (args.batch, *shape))
        kernel = jax.random.normal(key, (k, k, shape[-1], stage.features)) * 0.05
        padding = ((p, p), (p, p))
        first_layer = shape[-1] == 3
        works = {}
        for way, convolve in WAYS.items():
            def loss(x, kernel, convolve=convolve):
                return jnp.sum(jnp.tanh(convolve(x, kernel, stage.stride, padding)))

            works[("forward", way)] = jax.jit(
                lambda x, kernel, convolve=convolve: convolve(x, kernel, stage.stride, padding))
            works[("forward + input gradient", way)] = jax.jit(jax.grad(loss))
            works[("forward + filter gradient" + ("" if first_layer else " + input gradient"),
                   way)] = jax.jit(jax.grad(loss, argnums=1 if first_layer else (0, 1)))
        times = in_turns({key_: (lambda f=f: f(x, kernel)) for key_, f in works.items()},
                         args.rounds, pause=0.2)
        for (work, way), seconds in times.items():
            rows.append({"conv": name, "work": work, "way": way, "batch": args.batch,
                         "input": list(shape), "kernel": k, "stride": stage.stride,
                         "best_ms_per_image": 1e3 * min(seconds) / args.batch,
                         "median_ms_per_image": 1e3 * statistics.median(seconds) / args.batch,
                         "seconds": seconds})

    print(f"{'conv':16} {'work':48} {'XLA conv':>9} {'patches':>9} {'ratio':>6}  (ms/image, best)")
    for row in rows:
        if row["way"] != "XLA conv":
            continue
        other = next(r for r in rows if r["conv"] == row["conv"] and r["work"] == row["work"]
                     and r["way"] == "patches")
        print(f"{row['conv']:16} {row['work']:48} {row['best_ms_per_image']:9.2f} "
              f"{other['best_ms_per_image']:9.2f} "
              f"{row['best_ms_per_image'] / other['best_ms_per_image']:6.2f}")
    out = Path(args.out or Path(__file__).resolve().parent / "results"
               / f"conv-{jax.default_backend()}.json")
    write_results(out, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
