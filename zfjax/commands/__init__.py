"""The commands: ``train``, ``prepare``, ``sweep`` and ``visualize`` (the top-level scripts
and the ``zfjax-*`` entry points both call their ``console_main``), and the ``visualize``
subcommands, one module per analysis: ``add_cli(subparsers)`` and ``run(args) -> list of
written paths``. Argparse, ``cli.load_analysis_inputs`` and the artifact writers live here;
the numbers come from the cores (``zfjax.analyses.<analysis>``) and the pictures from
``zfjax.figures``."""

from __future__ import annotations

# The visualize subcommands in the order --help lists them, one module each,
# zfjax.commands.<name>; each defines add_cli(subparsers) -> parser whose defaults hold
# run(args) -> list of written paths.
SUBCOMMANDS = ("topk", "evolution", "invariance", "filters", "occlusion",
               "correspondence", "reconstructions", "maximize", "convergence", "transfer", "atlas",
               "methods", "sanity")
