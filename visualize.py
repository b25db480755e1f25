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

from zfjax import cli, interrupts
from zfjax.train import checkpoints

# One command module per analysis, zfjax.commands.<name>; each defines
# add_cli(subparsers) -> parser whose defaults hold run(args) -> list of written paths.
ANALYSES = ("topk", "evolution", "invariance", "filters", "occlusion",
            "correspondence", "reconstructions", "maximize", "convergence", "transfer", "atlas",
            "methods", "sanity")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visualize.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name in ANALYSES:
        importlib.import_module(f"zfjax.commands.{name}").add_cli(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cli.check_output_folder(args)  # before minutes of work, not after
        with interrupts.watched():  # Ctrl-C: also one press Python drops in a finalizer
            paths = args.run(args)
    except KeyboardInterrupt:  # every output is written atomically (zfjax.artifacts)
        print(f"\nvisualize.py {args.command}: interrupted; no half-written file is left",
              file=sys.stderr)
        if __name__ == "__main__":  # XLA may still be computing: its shutdown can crash
            checkpoints.leave_now(130)
        return 130
    except (ValueError, OSError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"visualize.py {args.command}: error: {message}", file=sys.stderr)
        if __name__ == "__main__" and isinstance(err, checkpoints.DamagedCheckpoint):
            checkpoints.leave_now(2)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
