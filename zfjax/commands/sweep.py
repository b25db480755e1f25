"""Train architecture variants one after another and write the paper's Table 3.

    python sweep.py --out runs/table3 [--variants NAME ...] [-- TRAIN_OPTIONS]

Each variant trains into <out>/<variant>/ with train.py and TRAIN_OPTIONS (e.g.
`-- --preset cpu --epochs 3 --limit 2000`). Run the same command again to
continue: finished variants are skipped, a stopped one is resumed. After every
variant <out>/table3.csv and <out>/table3.md are rewritten: parameters, train
top-1, val top-1 and val top-5 error per variant (see zfjax/train/sweep.py).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from zfjax import programs


def parse_args(argv=None, prog: str = "sweep.py"):
    from zfjax.nets import network

    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="sweep folder, one run folder per variant")
    p.add_argument("--variants", nargs="+", default=list(network.TABLE3_VARIANTS),
                   metavar="NAME", help="variants to train, in order (default: Table 3's: "
                                        f"{' '.join(network.TABLE3_VARIANTS)})")
    p.add_argument("train_options", nargs=argparse.REMAINDER,
                   help="options for train.py after '--' (not --out, --variant, --resume)")
    args = p.parse_args(argv)
    args.train_options = [a for a in args.train_options if a != "--"]
    unknown = [v for v in args.variants if v not in network.VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; expected some of {', '.join(network.VARIANTS)}")
    taken = {"--out", "--variant", "--resume"} & {a.split("=")[0] for a in args.train_options}
    if taken:
        p.error(f"{sorted(taken)[0]} is set by sweep.py per variant; leave it out of the "
                f"train.py options")
    return args


def main(argv=None, *, prog: str = "sweep.py", owns_process: bool = False) -> int:
    """Runs sweep.py's command line argv (default: sys.argv[1:]) with prog in usage and
    errors: trains each variant in this process (train.main). Returns the exit code: 0,
    or the failed variant's train.py code (130 after Ctrl-C); bad flags exit with 2
    (argparse).

    owns_process: this call is the whole process (the script, the entry point), so
    after a failed variant it ends the process at once (checkpoints.leave_now) once the
    table and the message are out, as train.py does after Ctrl-C: XLA's threads may
    still be busy and tearing the runtime down under them can crash."""
    args = parse_args(argv, prog)
    from zfjax.commands import train
    from zfjax.train import checkpoints, sweep

    out = Path(args.out)
    note = f"`{programs.command_line('sweep.py')} --out {args.out} -- {shlex.join(args.train_options)}`"
    for variant in args.variants:
        run_dir = out / variant
        train_argv = args.train_options + ["--variant", variant, "--out", str(run_dir)]
        epochs = train.build_run(train.parse_args(train_argv)).train.epochs
        state = sweep.state(run_dir, epochs)
        if state == "done":
            print(f"sweep: {variant} already trained ({epochs} epochs) in {run_dir}")
            continue
        print(f"sweep: {'resuming' if state == 'stopped' else 'training'} {variant} in {run_dir}")
        code = train.main(train_argv + (["--resume"] if state == "stopped" else []))
        sweep.write_table(out, sweep.table_rows(out, args.variants), note)
        if code:
            print(f"sweep: {variant} failed; fix the cause and run the same command to continue",
                  file=sys.stderr)
            if owns_process:
                checkpoints.leave_now(code)
            return code
    paths = sweep.write_table(out, sweep.table_rows(out, args.variants), note)
    print((out / sweep.TABLE_MD).read_text(), end="")
    for path in paths:
        print(path)
    return 0


def console_main() -> int:
    """sweep.py and the zfjax-sweep entry point: main on sys.argv, owning the process."""
    from zfjax.programs import program_name

    return main(sys.argv[1:], prog=program_name("sweep.py"), owns_process=True)
