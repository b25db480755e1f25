"""How many units deconv.project_units should project per lax.map step, side by side.

    python bench/bench_chunk.py            # prints a table, writes bench/results/chunk.json

For ZFNet conv3 and conv5 at 64, 112 (width 0.5) and 224 px (full width), random
weights and one random image, each map's strongest unit is projected (at most 256
units) with batch_size 1, 4, 8, 16 and 64; each time is the mean of two calls after
a compiling one. The CPU default (8) was chosen from this table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zfjax.nets import deconv, model, network  # noqa: E402
from common import write_results  # noqa: E402  (bench/common.py)

SETTINGS = ((64, 0.5), (112, 0.5), (224, 1.0))
LAYERS = ("conv5", "conv3")


def strongest_per_map(aux, layer: str, count: int) -> deconv.Units:
    """Units: the strongest position of each of the first `count` maps of image 0."""
    acts = aux["activations"][layer][0]
    width, channels = acts.shape[1], acts.shape[-1]
    n = min(count, channels)
    at = jnp.argmax(acts.reshape(-1, channels), axis=0)[:n]
    return deconv.Units(jnp.zeros(n, jnp.int32), jnp.arange(n, dtype=jnp.int32),
                        at // width, at % width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 64])
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--out", default="bench/results/chunk.json")
    args = parser.parse_args()
    rows = []
    for size, width in SETTINGS:
        config = network.Network(num_classes=10, image_size=size, width=width)
        params = model.init_params(config, jax.random.PRNGKey(0))
        image = jax.random.normal(jax.random.PRNGKey(1), (1, size, size, 3))
        _, aux = model.forward(config, params, image)
        for layer in LAYERS:
            units = strongest_per_map(aux, layer, args.units)
            seconds = {}
            for b in args.batch_sizes:
                run = lambda: deconv.project_units(config, params, aux, layer, units,
                                                   batch_size=b).block_until_ready()
                run()
                start = time.perf_counter()
                run()
                run()
                seconds[b] = (time.perf_counter() - start) / 2
            best = min(seconds, key=seconds.get)
            rows.append({"size": size, "width": width, "layer": layer,
                         "units": int(units.channel.shape[0]), "seconds": seconds, "best": best})
            print(f"{size:4d} px w{width} {layer} {rows[-1]['units']:4d} units: "
                  + "  ".join(f"b{b} {s:.2f} s" for b, s in seconds.items())
                  + f"  best b{best}", flush=True)
    write_results(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
