"""Benchmark of training: train-step throughput, input pipeline, Fig. 4 snapshot cost.

* JAX train step (zfjax.train.training.make_train_step: SGD + momentum, filter
  renormalisation, donated state), full-width ZFNet, float32, batch 32, at input
  112 and 224; also without donation. Where torch is importable, the same ZFNet
  train step in PyTorch (channels-last), measured in the same rounds, interleaved.
* The input pipeline on its own: data.train_batches on real images.
* The snapshot: evolution.take_snapshot on a 1000-image probe at 224, as a fraction
  of an imagenette epoch (9,469 images) at the measured train-step rate.

    python bench/bench_train.py          # prints a table, writes bench/results/train.json
    python bench/bench_train.py --synthetic [--size 224 --batch 128 --dtype bfloat16]
        # the train step alone (crops on the device from uint8 batches already on the
        # device): img/s and model FLOP utilisation against the device's peak
    XLA_FLAGS=... python bench/bench_train.py --tag flags  # try XLA flags
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from zfjax.inputs import data  # noqa: E402
from zfjax.nets import model, network
from zfjax.train import training
from common import random_params, write_results  # noqa: E402  (bench/common.py)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagenette"
IMAGENETTE_TRAIN = 9469


# -------------------------------------------------------------------------------- JAX

class JaxStep:
    """A jitted ZFNet train step on one fixed random batch; call() runs `steps` steps."""

    def __init__(self, size, batch, donate=True):
        self.config = network.Network(num_classes=10, image_size=size)
        mesh = training.make_mesh()
        self.mesh = mesh
        self.state = training.create_state(self.config, training.TrainConfig(), mesh)
        if donate:
            self.fn = training.make_train_step(self.config, 0.1, mesh)
        else:
            from functools import partial
            self.fn = jax.jit(partial(training.train_step, config=self.config))
        rng = np.random.default_rng(0)
        self.batch = training.put_batch(
            mesh, rng.normal(0, 0.3, (batch, size, size, 3)).astype(np.float32),
            rng.integers(0, 10, batch).astype(np.int32))
        self.rng = jax.random.key(0)
        self(1)  # compile

    def __call__(self, steps):
        for _ in range(steps):
            self.state, metrics = self.fn(self.state, self.batch, self.rng)
        jax.block_until_ready(metrics)


# ------------------------------------------------------------------------------ torch

def torch_step(size, batch):
    """A PyTorch ZFNet train step (same layers, channels-last), or None without torch."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    # ceil_mode pooling, conv1 padding 1, conv2 padding 0: 110/55/26/13/13/13/13/6 at 224.
    net = nn.Sequential(
        nn.Conv2d(3, 96, 7, 2, 1), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0),
        nn.Conv2d(96, 256, 5, 2, 0), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0),
        nn.Conv2d(256, 384, 3, 1, 1), nn.ReLU(), nn.Conv2d(384, 384, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.LazyLinear(4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 10))
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    net(x)  # materialise the lazy layer
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def run(steps):
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()
            with torch.no_grad():  # the same filter renormalisation as ours
                for m in net:
                    if isinstance(m, nn.Conv2d):
                        rms = m.weight.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
                        m.weight.mul_(torch.where(rms > 0.1, 0.1 / rms, torch.ones_like(rms)))
    run(1)
    return run


# ------------------------------------------------------------------------------- rows

def timed(fn, steps):
    start = time.perf_counter()
    fn(steps)
    return (time.perf_counter() - start) / steps


def train_rows(sizes, batch, rounds, steps, with_torch, no_donate):
    """Interleaved rounds of every variant; the median seconds per step of each."""
    variants = {}
    for size in sizes:
        variants[("jax", size)] = JaxStep(size, batch)
        if no_donate:
            variants[("jax, no donation", size)] = JaxStep(size, batch, donate=False)
        if with_torch:
            run = torch_step(size, batch)
            if run is not None:
                variants[("torch 2 threads, channels-last", size)] = run
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for key, fn in variants.items():
            times[key].append(timed(fn, steps))
    rows = []
    for (work, size), ts in times.items():
        t = statistics.median(ts)
        rows.append({"work": f"train step ({work})", "input_size": size, "batch": batch,
                     "seconds": t, "images_per_s": batch / t, "rounds": ts})
    return rows


def pipeline_rows(folder, sizes, batch, limit):
    rows = []
    for size in sizes:
        images = data.load_split(folder, "train", size, limit=limit, progress=False)
        mean = data.mean_image(images)
        start = time.perf_counter()
        n = sum(len(y) for _, y in data.train_batches(images, mean, batch, size, seed=0, epoch=1))
        t = time.perf_counter() - start
        rows.append({"work": "input pipeline (train_batches)", "input_size": size,
                     "batch": batch, "images": n, "seconds": t, "images_per_s": n / t})
    return rows


def snapshot_row(folder, count, train_images_per_s):
    """take_snapshot cost on a count-image probe at 224, vs an imagenette epoch."""
    from zfjax.analyses import evolution
    config = network.Network(num_classes=10)
    val = data.load_split(folder, "val", 224, limit=count, progress=False)
    probe = evolution.make_probe(val, data.mean_image(val), config, count=count)
    params = model.init_params(config, jax.random.key(0))
    evolution.take_snapshot(config, params, probe)  # compile
    start = time.perf_counter()
    evolution.take_snapshot(config, params, probe)
    t = time.perf_counter() - start
    epoch = IMAGENETTE_TRAIN / train_images_per_s
    return {"work": f"snapshot ({count}-image probe)", "input_size": 224, "batch": 128,
            "seconds": t, "images_per_s": count / t, "epoch_seconds_estimate": epoch,
            "fraction_of_epoch": t / epoch}


# Dense peak FLOP/s by device kind (bf16 / f32 without sparsity), for MFU.
PEAK_TFLOPS = {"H100": {"bfloat16": 989.0, "float32": 67.0},
               "H200": {"bfloat16": 989.0, "float32": 67.0},
               "A100": {"bfloat16": 312.0, "float32": 19.5},
               "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
               "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0},
               "TPU v5p": {"bfloat16": 459.0, "float32": 459.0}}


def peak_tflops(dtype):
    kind = jax.devices()[0].device_kind
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peaks[dtype]
    return None


def synthetic_rows(size, batch, dtype, steps, rounds, peak, *, width=1.0, num_classes=1000,
                   devices=None):
    """The stored train step on device-resident uint8 batches: img/s and MFU.

    devices: the mesh's devices (default: all); the batch is global, split over them.
    """
    config = network.Network(num_classes=num_classes, image_size=size, dtype=dtype,
                               width=width)
    mesh = training.make_mesh(devices)
    training.check_batch_size(batch, mesh)
    stored = data.stored_size(size)
    tcfg = training.TrainConfig(batch_size=batch)
    params = random_params(config)  # numpy draws: no init_params compile
    optimizer = training.make_optimizer(tcfg.learning_rate, tcfg.momentum)
    state = training.replicate(training.TrainState(np.int32(0), params, optimizer.init(params)),
                               mesh)
    rng = np.random.default_rng(0)
    host = (rng.integers(0, 256, (batch, stored, stored, 3), np.uint8),
            rng.integers(0, 1000, batch).astype(np.int32),
            *data.crop_params(0, 1, 0, batch, stored, size))
    batch_dev = training.put_batch(mesh, *host)
    mean = training.replicate(np.full((stored, stored, 3), 120, np.float32), mesh)
    key = training.dropout_key(training.TrainConfig())
    # The compiled step itself runs below: compiling once, not once more on the first call.
    fn = training.make_stored_train_step(config, 0.1, mesh).lower(
        state, batch_dev, mean, key).compile()
    flops = fn.cost_analysis()
    flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
    state, metrics = fn(state, batch_dev, mean, key)  # compile, warm up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = fn(state, batch_dev, mean, key)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - start) / steps)
    t = statistics.median(times)
    per_image = flops / batch
    achieved = flops / t / 1e12
    return [{"work": f"train step, synthetic uint8 ({dtype})", "input_size": size, "batch": batch,
             "seconds": t, "images_per_s": batch / t, "rounds": times,
             "gflop_per_image": per_image / 1e9, "tflops": achieved, "peak_tflops": peak,
             "mfu": achieved / peak if peak else None,
             "device": jax.devices()[0].device_kind, "devices": mesh.size}]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="image folder root")
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-donate", action="store_true", help="also time without donation")
    parser.add_argument("--probe", type=int, default=1000, help="snapshot probe images (0: skip)")
    parser.add_argument("--pipeline-limit", type=int, default=1000,
                        help="images for the input pipeline rows (0: skip)")
    parser.add_argument("--tag", default="", help="suffix for the JSON file name")
    parser.add_argument("--out", default=None)
    parser.add_argument("--synthetic", action="store_true",
                        help="only the train step on device-resident uint8 batches, with MFU")
    parser.add_argument("--size", type=int, default=224, help="input side for --synthetic")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                        help="compute dtype for --synthetic (default: bfloat16 on GPU/TPU)")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak TFLOP/s (default: from a small table)")
    args = parser.parse_args()
    if args.synthetic:
        dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
        peak = args.peak_tflops or peak_tflops(dtype)
        rows = synthetic_rows(args.size, args.batch, dtype, args.steps, args.rounds, peak)
        r = rows[0]
        print(f"{'work':40} {'input':>5} {'batch':>5} {'s/step':>8} {'img/s':>8} "
              f"{'GFLOP/img':>9} {'TFLOP/s':>8} {'MFU':>6}")
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"{r['work']:40} {r['input_size']:>5} {r['batch']:>5} {r['seconds']:>8.3f} "
              f"{r['images_per_s']:>8.1f} {r['gflop_per_image']:>9.2f} {r['tflops']:>8.3f} "
              f"{mfu:>6}")
        if r["mfu"] is None:
            print(f"(no peak known for {r['device']}: pass --peak-tflops for MFU)")
        out = Path(args.out or ROOT / "bench" / "results" /
                   f"train-synthetic{'-' + args.tag if args.tag else ''}.json")
        write_results(out, {"rows": rows})
        return

    rows = train_rows(args.sizes, args.batch, args.rounds, args.steps, not args.no_torch,
                      args.no_donate)
    have_data = Path(args.data).is_dir()
    if have_data and args.pipeline_limit > 0:
        rows += pipeline_rows(args.data, args.sizes, args.batch, args.pipeline_limit)
    if have_data:
        jax224 = [r for r in rows if r["work"] == "train step (jax)" and r["input_size"] == 224]
        if args.probe and jax224:
            rows.append(snapshot_row(args.data, args.probe, jax224[0]["images_per_s"]))

    print(f"{'work':44} {'input':>5} {'batch':>5} {'s':>8} {'img/s':>8}")
    for r in rows:
        extra = (f"  ({100 * r['fraction_of_epoch']:.1f}% of a "
                 f"{r['epoch_seconds_estimate']:.0f} s epoch)" if "fraction_of_epoch" in r else "")
        print(f"{r['work']:44} {r['input_size']:>5} {r['batch']:>5} {r['seconds']:>8.3f} "
              f"{r['images_per_s']:>8.1f}{extra}")
    for size in args.sizes:
        j = [r for r in rows if r["work"] == "train step (jax)" and r["input_size"] == size]
        t = [r for r in rows
             if r["work"].startswith("train step (torch") and r["input_size"] == size]
        if j and t:
            print(f"JAX / PyTorch train-step speed at {size}: "
                  f"{j[0]['images_per_s'] / t[0]['images_per_s']:.2f}")

    name = f"train-{args.tag}.json" if args.tag else "train.json"
    out = Path(args.out or ROOT / "bench" / "results" / name)
    write_results(out, {"data": args.data if have_data else None, "rows": rows})


if __name__ == "__main__":
    main()
