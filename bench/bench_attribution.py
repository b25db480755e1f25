"""Speed of zfjax.nets.attribution against Captum, side by side in one run.

    python bench/bench_attribution.py [--size 224] [--width 1] [--units 256] [--images 16]
                                      [--steps 32] [--samples 16] [--rounds 3]
                                      [--unit-sample 16] [--only guided,ig,smoothgrad]
                                      [--out bench/results/attribution-cpu.json]

Three races on a random ZFNet (1000 classes) and random N(0, 1) images, the same
weights in zfjax and in PyTorch (bench/torch_reference.torch_network):

* guided: guided backprop of ``--units`` conv5 units of one image (each channel's
  strongest unit, strongest channels first; zfjax: one forward, then each unit's reverse
  pass inside its receptive field, ``deconv.project_units`` under the guided rule, which
  ``attribute`` runs for unit targets; and dense), against Captum's NeuronGuidedBackprop
  on the network cut after conv5, one call per unit (timed on ``--unit-sample``
  units, scaled) and batched (copies of the image, one unit each, through a
  per-example neuron selector);
* ig: integrated gradients of each image's class logit (its top class), ``--steps``
  midpoint steps from a zero baseline, ``--images`` images, against Captum's
  IntegratedGradients (method riemann_middle) at its best internal_batch_size;
* smoothgrad: SmoothGrad of the class logit, ``--samples`` noisy copies of each of
  ``--images`` images, against Captum's NoiseTunnel(Saliency) at its best
  nt_samples_batch_size.

Before timing, each race checks that zfjax and Captum agree (relative L2 on a few
units or images; SmoothGrad with the same noise through Captum's Saliency). zfjax's
ways are compiled ahead (compile seconds reported apart); Captum runs with
torch.set_num_threads(CPU count). Captum's batch-size choices are timed once each
and the fastest takes turns with zfjax for ``--rounds`` rounds (best and median
kept; the choice call is the fastest's first round). ratio = Captum's best / zfjax's
best. Prints a table, writes JSON with the command, machine and load
(bench/common.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from zfjax.nets import attribution, deconv, model, network  # noqa: E402
from zfjax.nets.attribution import LOGITS, Target  # noqa: E402
from common import in_turns, random_params, write_results  # noqa: E402  (bench/common.py)

RACES = ("guided", "ig", "smoothgrad")
TARGETS = {"guided": 3.0, "ig": 2.0, "smoothgrad": 2.0}  # issue 17: Captum / zfjax at least


def compiled(fn, *args):
    """fn jitted and compiled for args ahead of time: (callable on args, compile seconds)."""
    start = time.perf_counter()
    program = jax.jit(fn).lower(*args).compile()
    return (lambda: program(*args)), time.perf_counter() - start


def relative_l2(ours, theirs) -> float:
    """||ours - theirs|| / ||theirs||; theirs may be an NCHW torch tensor."""
    if hasattr(theirs, "detach"):
        theirs = theirs.detach().numpy()
        theirs = theirs.transpose(0, 2, 3, 1) if theirs.ndim == 4 else theirs
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


def nchw(images):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2)))


class Race:
    """One row: zfjax's ways {name: (call, compile seconds)}, Captum's batch-size
    choices {name: call}, agreement checks {name: relative L2}, and what each counts."""

    def __init__(self, name, work, zfjax_ways, captum_ways, checks, scale=None):
        self.name, self.work = name, work
        self.zfjax_ways, self.captum_ways, self.checks = zfjax_ways, captum_ways, checks
        self.scale = scale or {}  # way -> factor (loops timed on a sample of the units)


def guided_race(config, params, image, args):
    """Guided backprop of the strongest conv5 units of one image (1, H, W, 3)."""
    from captum.attr import NeuronGuidedBackprop
    import torch

    from torch_reference import torch_network

    _, aux = model.forward_jit(config, params, image)
    peaks = aux["activations"]["conv5"][0].max(axis=(0, 1))
    units = deconv.strongest_units(aux, "conv5", jnp.argsort(-peaks)[: args.units])
    k = len(units.channel)

    def windowed(p, im, units):
        _, aux = model.forward(config, p, im)
        return deconv.project_units(config, p, aux, "conv5", units,
                                    rule=attribution.RULES["guided_backprop"])

    def dense(p, im, c, y, x):
        # vmap over the targets of one image: the forward does not depend on them, runs once
        return jax.vmap(lambda c, y, x: attribution.attribute(
            config, p, im, Target("conv5", c, y, x), "guided_backprop",
            window=False).maps[0])(c, y, x)

    windowed_way = "zfjax forward + project_units(rule=guided), windowed (attribute's way)"
    ways = {windowed_way: compiled(windowed, params, image, units),
            "zfjax attribute(window=False), vmap over the units (dense)": compiled(
                dense, params, image, units.channel, units.y, units.x)}
    ours_call = ways[windowed_way][0]

    net, modules = torch_network(params, config)
    trunk = net[: list(net).index(modules["conv5"]) + 1]
    neuron = NeuronGuidedBackprop(trunk, modules["conv5"])
    x = nchw(image)
    c, y, xx = (torch.from_numpy(np.asarray(v)).long() for v in (units.channel, units.y, units.x))

    def batched(lo, hi):
        rows = torch.arange(hi - lo)
        return neuron.attribute(x.expand(hi - lo, -1, -1, -1).contiguous(),
                                neuron_selector=lambda out: out[rows, c[lo:hi], y[lo:hi], xx[lo:hi]])

    def chunked(size):
        return lambda: torch.cat([batched(lo, min(lo + size, k)) for lo in range(0, k, size)])

    sample = min(args.unit_sample, k)

    def loop():
        return [neuron.attribute(x, neuron_selector=(int(c[i]), int(y[i]), int(xx[i])))
                for i in range(sample)]

    check = min(16, k)
    ours = np.asarray(ours_call())
    theirs = batched(0, check)
    checks = {f"first {check} units, Captum batched": relative_l2(ours[:check], theirs),
              f"first {check} units, Captum batched, dense way": relative_l2(
                  np.asarray(ways["zfjax attribute(window=False), vmap over the units (dense)"][0]())[:check],
                  theirs),
              "first unit, Captum one call": relative_l2(ours[:1], loop()[0])}
    captum = {"Captum NeuronGuidedBackprop, one call per unit": loop}
    for size in sorted({min(32, k), k}):
        captum[f"Captum NeuronGuidedBackprop, {size} image copies per call"] = chunked(size)
    return Race("guided", f"guided backprop, {k} ZFNet conv5 units of one image", ways,
                captum, checks, {"Captum NeuronGuidedBackprop, one call per unit": k / sample})


def logit_targets(config, params, images):
    """Each image's top class: int32 (N,)."""
    return jnp.argmax(model.forward_jit(config, params, images)[0], axis=-1).astype(jnp.int32)


def ig_race(config, params, images, args):
    """Integrated gradients of each image's top class logit, zero baseline."""
    from captum.attr import IntegratedGradients
    import torch

    from torch_reference import torch_network

    classes = logit_targets(config, params, images)
    baseline = jnp.zeros(images.shape[1:], jnp.float32)
    steps = args.steps

    def ours_fn(p, ims, cls):
        return attribution.integrated_gradients(config, p, ims, Target(LOGITS, cls), baseline,
                                                steps=steps).maps

    call, compile_seconds = compiled(ours_fn, params, images, classes)
    net, _ = torch_network(params, config)
    ig = IntegratedGradients(net)
    x, target = nchw(images), torch.from_numpy(np.asarray(classes)).long()

    def captum_ig(inputs, tgt, batch):
        with warnings.catch_warnings():  # batch < images: Captum warns and uses the images
            warnings.simplefilter("ignore")
            return ig.attribute(inputs, torch.zeros_like(inputs), target=tgt, n_steps=steps,
                                method="riemann_middle", internal_batch_size=batch)

    check = min(2, images.shape[0])
    checks = {f"first {check} images": relative_l2(
        call()[:check], captum_ig(x[:check], target[:check], check * steps))}
    n = images.shape[0]
    captum = {f"Captum IntegratedGradients, internal_batch_size {b}":
              (lambda b=b: captum_ig(x, target, b))
              for b in sorted({min(b, n * steps) for b in (8, 32, 128, 512)})}
    return Race("ig", f"integrated gradients, {steps} steps, class logit, {n} images",
                {"zfjax integrated_gradients": (call, compile_seconds)}, captum, checks)


def smoothgrad_race(config, params, images, args):
    """SmoothGrad (gradient) of each image's top class logit."""
    from captum.attr import NoiseTunnel, Saliency
    import torch

    from torch_reference import torch_network

    classes = logit_targets(config, params, images)
    samples, noise, key = args.samples, 0.15, jax.random.key(2)

    def ours_fn(p, ims, cls):
        return attribution.smoothgrad(config, p, ims, Target(LOGITS, cls), key=key,
                                      samples=samples, noise=noise).maps

    call, compile_seconds = compiled(ours_fn, params, images, classes)
    net, _ = torch_network(params, config)
    x, target = nchw(images), torch.from_numpy(np.asarray(classes)).long()

    check = min(2, images.shape[0])
    # smoothgrad draws its noise with this call: the same key gives the same noise.
    drawn = attribution.smoothgrad_noise(key, images, samples, noise)[:check]
    noisy = (images[:check, None] + drawn).reshape(check * samples, *images.shape[1:])
    theirs = Saliency(net).attribute(nchw(noisy), target=target[:check].repeat_interleave(samples),
                                     abs=False).detach().numpy().transpose(0, 2, 3, 1)
    checks = {f"first {check} images, the same noise": relative_l2(
        call()[:check], theirs.reshape(check, samples, *images.shape[1:]).mean(1))}
    tunnel = NoiseTunnel(Saliency(net))
    spread = float(noise * np.mean(np.ptp(np.asarray(images), axis=(1, 2, 3))))

    def captum_sg(batch):
        return tunnel.attribute(x, nt_type="smoothgrad", nt_samples=samples, stdevs=spread,
                                nt_samples_batch_size=batch, target=target, abs=False)

    n = images.shape[0]
    captum = {f"Captum NoiseTunnel(Saliency), nt_samples_batch_size {b} ({b * n} per pass)":
              (lambda b=b: captum_sg(b)) for b in sorted({1, min(4, samples), samples})}
    return Race("smoothgrad", f"SmoothGrad, {samples} samples, class logit, {n} images",
                {"zfjax smoothgrad": (call, compile_seconds)}, captum, checks)


def run_race(race: Race, rounds: int) -> tuple[list[dict], dict]:
    """Captum's choices once each (the fastest goes on, that call its first round),
    then zfjax's ways and it in turns. Returns (rows, summary)."""
    pause = 0.5
    choices = {}
    for name, fn in race.captum_ways.items():
        time.sleep(pause)
        start = time.perf_counter()
        fn()
        choices[name] = (time.perf_counter() - start) * race.scale.get(name, 1.0)
        print(f"  {race.name}: {name}: {choices[name]:.2f} s (one call)", flush=True)
    best_captum = min(choices, key=choices.get)
    cases = {name: call for name, (call, _) in race.zfjax_ways.items()}
    for call in cases.values():  # first run after compiling: allocations
        jax.block_until_ready(call())
    cases[best_captum] = race.captum_ways[best_captum]
    times = in_turns(cases, rounds, pause=pause, warm_up=False)
    # Captum's choice call (after the check's) counts as its first round.
    times[best_captum].insert(0, choices[best_captum] / race.scale.get(best_captum, 1.0))
    rows = []
    for name, seconds in times.items():
        seconds = [s * race.scale.get(name, 1.0) for s in seconds]
        row = {"race": race.name, "work": race.work, "way": name, "seconds": min(seconds),
               "median_seconds": float(np.median(seconds)), "rounds": len(seconds)}
        if name in race.zfjax_ways:
            row["compile_seconds"] = race.zfjax_ways[name][1]
        if name in race.scale:
            row["scaled_by"] = race.scale[name]
        rows.append(row)
    rows += [{"race": race.name, "work": race.work, "way": name, "seconds": s,
              "one_call": True} for name, s in choices.items() if name != best_captum]
    ours = min(r["seconds"] for r in rows if r["way"] in race.zfjax_ways)
    theirs = min(r["seconds"] for r in rows if r["way"] == best_captum)
    summary = {"work": race.work, "zfjax_seconds": ours, "captum_seconds": theirs,
               "captum_way": best_captum, "ratio": theirs / ours,
               "target": TARGETS[race.name], "met": theirs / ours >= TARGETS[race.name],
               "checks_relative_l2": race.checks}
    return rows, summary


def print_table(rows, summaries):
    print(f"\n{'way':72s} {'best s':>8s} {'median':>8s} {'compile':>8s}")
    for race, summary in summaries.items():
        print(f"-- {summary['work']}")
        for row in (r for r in rows if r["race"] == race):
            median = f"{row['median_seconds']:8.2f}" if "median_seconds" in row else "  (once)"
            comp = f"{row['compile_seconds']:8.1f}" if "compile_seconds" in row else ""
            print(f"   {row['way']:69s} {row['seconds']:8.2f} {median} {comp}")
        checks = ", ".join(f"{k} {v:.1e}" for k, v in summary["checks_relative_l2"].items())
        print(f"   ratio Captum / zfjax {summary['ratio']:.2f}x (target {summary['target']:.0f}x: "
              f"{'met' if summary['met'] else 'MISSED'}); agree (relative L2): {checks}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0, help="ZFNet width multiplier")
    parser.add_argument("--units", type=int, default=256, help="conv5 units (guided)")
    parser.add_argument("--unit-sample", type=int, default=16,
                        help="units timed in Captum's one-call-per-unit loop (then scaled)")
    parser.add_argument("--images", type=int, default=16, help="images (ig, smoothgrad)")
    parser.add_argument("--steps", type=int, default=32, help="integrated-gradients steps")
    parser.add_argument("--samples", type=int, default=16, help="SmoothGrad samples")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in turns (best kept)")
    parser.add_argument("--only", default=",".join(RACES), help="races, comma-separated")
    parser.add_argument("--out", default="bench/results/attribution-cpu.json")
    args = parser.parse_args(argv)
    races = [r for r in args.only.split(",") if r]
    if unknown := sorted(set(races) - set(RACES)):
        parser.error(f"unknown race {', '.join(unknown)}; expected some of {', '.join(RACES)}")
    try:
        import captum.attr  # noqa: F401
        import torch
    except ImportError:
        print("bench_attribution needs torch and captum: pip install torch==2.13.0 captum",
              file=sys.stderr)
        return 2
    torch.set_num_threads(os.cpu_count())

    config = network.Network(num_classes=1000, image_size=args.size, width=args.width,
                           init_std=None)
    params = jax.tree.map(jnp.asarray, random_params(config))
    images = jax.random.normal(jax.random.key(1), (args.images, args.size, args.size, 3))
    build = {"guided": lambda: guided_race(config, params, images[:1], args),
             "ig": lambda: ig_race(config, params, images, args),
             "smoothgrad": lambda: smoothgrad_race(config, params, images, args)}
    rows, summaries = [], {}
    for name in races:
        print(f"{name}: compiling, checking against Captum", flush=True)
        race = build[name]()
        race_rows, summaries[name] = run_race(race, args.rounds)
        rows += race_rows

    print(f"\nzfjax attribution vs Captum, ZFNet width {args.width} at {args.size} px, "
          f"{jax.devices()[0].platform}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    print_table(rows, summaries)
    print()
    given = sys.argv[1:] if argv is None else argv
    write_results(args.out, {
        "command": " ".join(["python bench/bench_attribution.py", *given]),
        "config": {k: getattr(args, k) for k in ("size", "width", "units", "unit_sample",
                                                  "images", "steps", "samples", "rounds")},
        "torch_threads": torch.get_num_threads(), "rows": rows, "races": summaries,
        "load_average_at_end": os.getloadavg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
