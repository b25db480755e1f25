"""Reproduce the paper's figures from a trained zfjax run.

    python visualize.py SUBCOMMAND RUN_OR_CHECKPOINT [options]
    python visualize.py --help            # lists the subcommands

Each subcommand writes a PNG and the raw arrays (.npz) under the run's
figures/ folder (or --out) and prints their paths. Bad input gives one line
saying what is wrong and a non-zero exit, with nothing half-written; Ctrl-C, one line
and exit 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from zfjax import cli, commands, interrupts, programs
from zfjax.train import checkpoints


def build_parser(prog: str = "visualize.py") -> argparse.ArgumentParser:
    """The command line parser with every subcommand of commands.SUBCOMMANDS (read at
    each call, so a test may register fewer)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name in commands.SUBCOMMANDS:
        importlib.import_module(f"zfjax.commands.{name}").add_cli(sub)
    return parser


def main(argv=None, *, prog: str = "visualize.py", owns_process: bool = False) -> int:
    """Runs visualize.py's command line argv (default: sys.argv[1:]) with prog in usage
    and errors; prints the written paths. Returns the exit code: 0, 2 (bad input), 130
    (Ctrl-C).

    owns_process: this call is the whole process (the script, the entry point), so
    after Ctrl-C or a damaged checkpoint it ends the process at once
    (checkpoints.leave_now) once its message is out: XLA may still be computing and
    its shutdown can crash; abandoned orbax reads print tracebacks in the teardown.
    In-process callers (tests) get the code."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        cli.check_output_folder(args)  # before minutes of work, not after
        with interrupts.watched():  # Ctrl-C: also one press Python drops in a finalizer
            paths = args.run(args)
    except KeyboardInterrupt:  # every output is written atomically (zfjax.artifacts)
        print(f"\n{prog} {args.command}: interrupted; no half-written file is left",
              file=sys.stderr)
        if owns_process:
            checkpoints.leave_now(130)
        return 130
    except (ValueError, OSError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{prog} {args.command}: error: {message}", file=sys.stderr)
        if owns_process and isinstance(err, checkpoints.DamagedCheckpoint):
            checkpoints.leave_now(2)
        return 2
    for path in paths:
        print(path)
    return 0


def console_main() -> int:
    """visualize.py and the zfjax-visualize entry point: main on sys.argv, owning the
    process."""
    return main(sys.argv[1:], prog=programs.program_name("visualize.py"), owns_process=True)
