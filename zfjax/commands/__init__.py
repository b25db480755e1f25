"""The commands: ``train``, ``prepare``, ``sweep`` and ``visualize`` (the top-level scripts
and the ``zfjax-*`` entry points both call their ``console_main``), and the ``visualize``
subcommands, one module per analysis: ``add_cli(subparsers)`` and ``run(args) -> list of
written paths``. Argparse, ``cli.load_analysis_inputs`` and the artifact writers live here;
the numbers come from the cores (``zfjax.analyses.<analysis>``) and the pictures from
``zfjax.figures``."""

from __future__ import annotations

import sys
from pathlib import Path

# The visualize subcommands in the order --help lists them, one module each,
# zfjax.commands.<name>; each defines add_cli(subparsers) -> parser whose defaults hold
# run(args) -> list of written paths.
SUBCOMMANDS = ("topk", "evolution", "invariance", "filters", "occlusion",
               "correspondence", "reconstructions", "maximize", "convergence", "transfer", "atlas",
               "methods", "sanity")


def program_name(script: str) -> str:
    """The name a command gives itself in usage and error lines: the entry point's
    (``zfjax-train``) when this process was started as one, else ``script``
    (``train.py``, also for ``python -m`` and in-process calls)."""
    started_as = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    return started_as if started_as.startswith("zfjax-") else script
