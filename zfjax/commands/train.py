"""Train ZFNet with the recipe of Zeiler & Fergus (2014); see zfjax/train/trainer.py.

Examples:
  python train.py --preset cpu --out runs/cpu          # 10 epochs of imagenette on a CPU
  python train.py --preset demo --out runs/demo        # 20 epochs at 112 px (README's figures)
  python train.py --preset imagenette --out runs/nette # full ZFNet, 224 px, 64 epochs
  python train.py --out runs/nette --resume            # continue a stopped run exactly
  python train.py --preset paper --data-dir ~/tensorflow_datasets

Several hosts (data parallel over every device of every host): start the same
command on each host with --distributed and the run folder on a shared file system:
  python train.py --preset paper --out /shared/runs/paper --distributed \\
      --coordinator host0:1234 --num-processes 4 --process-id $RANK
(on Cloud TPU, SLURM or Open MPI, --distributed alone finds these itself).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, NamedTuple


def parse_args(argv=None, prog: str = "train.py"):
    from zfjax import argtypes
    from zfjax.nets import network
    from zfjax.train import run

    names = list(run.PRESETS)
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=names, default=None,
                   help="paper: ImageNet, 224 px, 70 epochs, N(0, 1e-2) init; imagenette: full "
                        "ZFNet at 224 px, 64 epochs, He init; cpu: 64 px, width 0.5, 10 epochs, "
                        "He init; demo: 112 px, width 0.5, 20 epochs, He init (the README's "
                        "figures) (default: imagenette)")
    p.add_argument("--data", help="TFDS name (e.g. imagenet2012) or image folder "
                                  "<root>/<split>/<class>/<image>")
    p.add_argument("--data-dir", help="TFDS data directory")
    p.add_argument("--offline", action="store_true",
                   help="never download: a TFDS dataset that is not prepared is an error "
                        "(without it, a preset's TFDS dataset is downloaded the first time)")
    p.add_argument("--epochs", type=argtypes.positive_int)
    p.add_argument("--batch", type=argtypes.positive_int, help="global batch size (all devices)")
    p.add_argument("--lr", type=argtypes.positive_float, help="initial learning rate")
    p.add_argument("--size", type=argtypes.image_size, help="input side in pixels")
    p.add_argument("--width", type=argtypes.width, help="channel multiplier")
    p.add_argument("--seed", type=argtypes.seed)
    p.add_argument("--limit", type=argtypes.positive_int, help="use at most this many training images")
    p.add_argument("--variant", choices=list(network.VARIANTS), default=None,
                   help="an architecture of the paper's Table 3: " + "; ".join(
                       f"{k}: {v}" for k, v in network.VARIANTS.items()))
    p.add_argument("--no-renorm", action="store_true",
                   help="train without filter renormalisation (the paper's Fig. 6 (a); compare "
                        "with visualize.py filters RUN --compare OTHER_RUN)")
    p.add_argument("--shuffle-labels", action="store_true",
                   help="train on the training labels permuted over the images (from --seed; "
                        "validation keeps the true ones): the data randomisation of the sanity "
                        "checks, visualize.py sanity RUN --random-labels THIS_RUN")
    p.add_argument("--out", help="run folder (default: runs/<preset>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint, with its config; "
                        "--epochs and --lr may change, other settings may not")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--checkpoint-every", type=argtypes.positive_int, metavar="N",
                   help="also checkpoint every N steps inside an epoch (resume continues there)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"),
                   help="compute dtype (parameters stay float32); default bfloat16 on GPU/TPU, "
                        "float32 on CPU")
    g = p.add_argument_group("input pipeline")
    g.add_argument("--memory-budget", type=argtypes.positive_float, metavar="GIB",
                   help="a split whose decoded images exceed this is streamed from a prepared "
                        "store instead of held in memory (default: a quarter of the RAM)")
    g.add_argument("--store", metavar="DIR",
                   help="where to prepare the store when streaming (default: "
                        "$ZFJAX_CACHE/stores/..., ZFJAX_CACHE defaulting to ~/.cache/zfjax)")
    g.add_argument("--workers", type=argtypes.nonnegative_int,
                   help="decoding processes when streaming (0: threads only; default: cores - 1)")
    g = p.add_argument_group("several hosts")
    g.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() before anything else")
    g.add_argument("--coordinator", help="host:port of process 0")
    g.add_argument("--num-processes", type=argtypes.positive_int)
    g.add_argument("--process-id", type=argtypes.nonnegative_int)
    return p.parse_args(argv)


DEFAULT_PRESET = "imagenette"


class Flag(NamedTuple):
    """A flag that sets one run setting (a name of run.RunSpec.settings()); value turns
    the parsed value into the setting's (default: as parsed)."""

    setting: str
    value: Callable | None = None


# Every flag that sets a run setting, by argparse dest: the one table build_run applies
# and a refused --resume names the flag from. A flag left out (None, or False for a
# switch) sets nothing.
FLAGS = {
    "size": Flag("image_size"), "width": Flag("width"), "variant": Flag("variant"),
    "epochs": Flag("epochs"), "batch": Flag("batch_size"), "lr": Flag("learning_rate"),
    "seed": Flag("seed"), "no_renorm": Flag("filter_radius", lambda on: None),
    "data": Flag("data"), "data_dir": Flag("data_dir"), "limit": Flag("train_limit"),
    "shuffle_labels": Flag("shuffle_labels"),
}


def flag_settings(args) -> dict:
    """setting name -> (value, the words of the command line that set it) for every
    flag of FLAGS that args gives."""
    found = {}
    for dest, flag in FLAGS.items():
        given = getattr(args, dest)
        if given is None or given is False:
            continue
        words = "--" + dest.replace("_", "-") + ("" if given is True else f" {given}")
        found[flag.setting] = (flag.value(given) if flag.value else given, words)
    return found


def resume_refusal(args, stored) -> str | None:
    """Why the command line asks for a run other than `stored` (the run folder's
    run.RunSpec), or None: one comparison of the stored spec with the requested one
    (the stored spec with the flags applied, or --preset with them), naming the flags
    given explicitly first."""
    from zfjax.train import run

    flags = flag_settings(args)
    base = run.PRESETS[args.preset] if args.preset is not None else stored
    requested = base.with_settings({name: value for name, (value, _) in flags.items()})
    differ = sorted(stored.differences(requested), key=lambda name: name not in flags)
    if not differ:
        return None
    name = differ[0]
    value = requested.settings()[name]
    words = flags[name][1] if name in flags else f"--preset {args.preset} (its {name} {value!r})"
    return (f"{words} differs from the run's {name} {stored.settings()[name]!r}; --resume can "
            f"only change the learning rate (--lr) and the number of epochs (--epochs); start "
            f"a new run (another --out) to change {words.split()[0]}")


def curves_hook():
    """The training curves drawn into curves.png after every epoch (zfjax.figures.curves)."""
    from zfjax.figures.curves import plot_curves

    return plot_curves


def snapshot_hook():
    """The per-epoch Fig. 4 snapshots the training loop takes (zfjax.analyses.evolution)."""
    from zfjax.analyses import evolution

    return evolution.EpochSnapshots()


def build_run(args):
    """The preset with the command line's settings applied (a run.RunSpec)."""
    from zfjax.train import run

    spec = run.PRESETS[args.preset or DEFAULT_PRESET]
    changes = {name: value for name, (value, _) in flag_settings(args).items()}
    return spec.with_settings({**changes, "dtype": args.dtype or _default_dtype()})


def _default_dtype() -> str:
    """bfloat16 compute on accelerators, float32 on CPU."""
    import jax
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def tune_malloc() -> bool:
    """Keeps freed memory in this process (glibc only; before JAX starts its threads).

    XLA:CPU allocates and frees the step's large buffers every step; glibc returned
    them to the kernel each time (per-thread arenas trimmed, large blocks mmapped),
    and touching them again cost about 22,000 minor page faults and 40 ms of kernel
    time per step of the cpu preset. One arena that is never trimmed and no mmap for
    blocks under 256 MiB: 1.3 M faults over 60 steps became 6, kernel time 2.6 s -> 0.0
    s (see the issue 7 note). Peak RSS may stay higher by what a step frees.
    Returns whether the settings were applied.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    return all(mallopt(option, value) == 1 for option, value in (
        (m_arena_max, 1), (m_trim_threshold, 1 << 30), (m_mmap_threshold, 1 << 28)))


def start_distributed(args) -> int:
    """jax.distributed.initialize from --coordinator/--num-processes/--process-id (JAX
    finds what is not given on Cloud TPU, SLURM, Open MPI). Returns 0, or the exit code
    after printing one error line: 2 for flags that do not fit, 1 if JAX cannot start."""
    import jax

    n, i = args.num_processes, args.process_id
    if n is not None and i is not None and i >= n:
        print(f"error: --process-id {i} is not below --num-processes {n}; the processes are "
              f"numbered 0 to {n - 1}", file=sys.stderr)
        return 2
    print(f"waiting for {f'{n} processes' if n else 'every process of the cluster'} at "
          f"{args.coordinator or 'the coordinator the cluster names'} "
          f"(jax.distributed.initialize)", flush=True)
    try:
        jax.distributed.initialize(args.coordinator, n, i)
    except ValueError as e:  # no cluster found and not enough flags to make one
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: --distributed: {first} (JAX found no cluster: on a machine without "
              f"one, give --coordinator HOST:PORT --num-processes N --process-id I)",
              file=sys.stderr)
        return 2
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: --distributed: {first}", file=sys.stderr)
        return 1
    return 0


def main(argv=None, *, prog: str = "train.py", owns_process: bool = False) -> int:
    """Runs train.py's command line argv (default: sys.argv[1:]) with prog in usage and
    errors. Returns the exit code: 0, 1 (data, disk or run trouble), 2 (flags that do
    not fit), 130 (Ctrl-C).

    owns_process: this call is the whole process (the script, the entry point), so
    after Ctrl-C or a damaged checkpoint it ends the process at once
    (checkpoints.leave_now) once its message is out: XLA may still be compiling or
    copying on its own threads (the input prefetch thread's transfers) and tearing the
    runtime down under them crashed with SIGSEGV (3 runs in 3); abandoned orbax reads
    print tracebacks in the teardown. Every file a run writes is complete by then
    (atomic writes, deferred saves). In-process callers (tests, sweep) get the code."""
    tune_malloc()
    args = parse_args(argv, prog)
    cluster_flags = [flag for flag, value in (
        ("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
        ("--process-id", args.process_id)) if value is not None]
    if cluster_flags and not args.distributed:
        print(f"error: {', '.join(cluster_flags)} only work with --distributed; add "
              f"--distributed for a run over several processes, or leave them out",
              file=sys.stderr)
        return 2
    if args.distributed:  # must come before any other JAX call
        code = start_distributed(args)
        if code:
            return code
    from zfjax.train import checkpoints, trainer
    from zfjax.train.run import RunDir

    if args.resume and not args.out:
        print("error: --resume needs --out, the run folder to continue", file=sys.stderr)
        return 2
    out = args.out or f"runs/{args.preset or DEFAULT_PRESET}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        budget = None if args.memory_budget is None else int(args.memory_budget * 2**30)
        feeding = dict(progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
                       memory_budget=budget, store_dir=args.store, workers=args.workers,
                       download=not args.offline, snapshots=snapshot_hook(),
                       curves=curves_hook())
        if args.resume:
            refusal = resume_refusal(args, RunDir(out).read_spec())
            if refusal:
                raise ValueError(refusal)
            trainer.fit(None, out, resume=True, epochs=args.epochs, learning_rate=args.lr,
                        **feeding)
        else:
            trainer.fit(build_run(args), out, epochs=args.epochs, **feeding)
    except trainer.Interrupted as e:
        print(f"\n{e}", file=sys.stderr)
        if owns_process:
            checkpoints.leave_now(130)
        return 130
    except (OSError, ValueError, trainer.NonFiniteLoss) as e:  # user, data or disk trouble
        print(f"error: {e}", file=sys.stderr)
        if owns_process and isinstance(e, checkpoints.DamagedCheckpoint):
            checkpoints.leave_now(1)
        return 1
    return 0


def console_main() -> int:
    """train.py and the zfjax-train entry point: main on sys.argv, owning the process."""
    from zfjax.programs import program_name

    return main(sys.argv[1:], prog=program_name("train.py"), owns_process=True)
