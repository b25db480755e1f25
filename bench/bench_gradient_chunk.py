"""How many images attribution.attribute's dense passes should run per chunk, side by side.

    python bench/bench_gradient_chunk.py [--images 128] [--size 224] [--width 1]
                                         [--chunks 8,16,32,64] [--rounds 2]
                                         [--out bench/results/gradient-chunk.json]

Input gradients of each image's class logit (``attribute(..., "gradient")``: the pass
SmoothGrad's noisy copies and integrated gradients' path points go through) for
``--images`` random images on a random ZFNet (1000 classes), one compiled call each:
all images as one batch, and as unrolled chunks of each ``--chunks`` size (what
``attribute`` does with ``default_chunk``). The ways take turns for ``--rounds``
rounds after a first call; best and median kept, images per second from the best.
Prints a table, writes JSON (bench/common.py). The CPU default was chosen from this.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from zfjax.nets import attribution, network  # noqa: E402
from zfjax.nets.attribution import LOGITS, Target  # noqa: E402
from common import in_turns, random_params, write_results  # noqa: E402  (bench/common.py)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0, help="ZFNet width multiplier")
    parser.add_argument("--chunks", default="8,16,32,64", help="chunk sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="bench/results/gradient-chunk.json")
    args = parser.parse_args(argv)
    chunks = sorted({int(c) for c in args.chunks.split(",") if c})
    if not chunks or min(chunks) <= 0 or args.images <= 0:
        parser.error("--images and every --chunks size must be positive whole numbers")

    config = network.Network(num_classes=1000, image_size=args.size, width=args.width,
                             init_std=None)
    params = jax.tree.map(jnp.asarray, random_params(config))
    images = jax.random.normal(jax.random.key(1), (args.images, args.size, args.size, 3))
    classes = jnp.arange(args.images, dtype=jnp.int32) % 1000
    default = attribution.default_chunk

    ways, compile_seconds = {}, {}
    try:
        for chunk in [args.images] + [c for c in chunks if c < args.images]:
            name = "one batch" if chunk == args.images else f"chunks of {chunk}"
            attribution.default_chunk = lambda chunk=chunk: chunk  # read while tracing
            start = time.perf_counter()
            program = jax.jit(lambda p, x, c: attribution.attribute(
                config, p, x, Target(LOGITS, c), "gradient").maps).lower(
                    params, images, classes).compile()
            compile_seconds[name] = time.perf_counter() - start
            ways[name] = lambda program=program: program(params, images, classes)
            print(f"{name}: compiled in {compile_seconds[name]:.1f} s", flush=True)
    finally:
        attribution.default_chunk = default

    times = in_turns(ways, args.rounds, pause=0.5)
    rows = [{"way": name, "seconds": min(s), "median_seconds": float(np.median(s)),
             "images_per_second": args.images / min(s), "compile_seconds": compile_seconds[name]}
            for name, s in times.items()]
    print(f"\nclass-logit input gradients, {args.images} images, ZFNet width {args.width} at "
          f"{args.size} px, {jax.devices()[0].platform}; attribute's default chunk here: "
          f"{default()}")
    print(f"{'way':16s} {'best s':>8s} {'median':>8s} {'img/s':>8s} {'compile':>8s}")
    for row in rows:
        print(f"{row['way']:16s} {row['seconds']:8.2f} {row['median_seconds']:8.2f} "
              f"{row['images_per_second']:8.1f} {row['compile_seconds']:8.1f}")
    given = sys.argv[1:] if argv is None else argv
    write_results(args.out, {"command": " ".join(["python bench/bench_gradient_chunk.py", *given]),
                             "default_chunk": default(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
