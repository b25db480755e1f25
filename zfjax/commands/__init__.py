"""The ``visualize.py`` subcommands, one module per analysis: ``add_cli(subparsers)`` and
``run(args) -> list of written paths``. Argparse, ``cli.load_analysis_inputs`` and the
artifact writers live here; the numbers come from the cores (``zfjax.<analysis>``) and
the pictures from ``zfjax.figures``."""
