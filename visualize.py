"""Reproduce the paper's figures from a trained zfjax run: zfjax.commands.visualize (--help)."""

import sys

from zfjax.commands.visualize import console_main

if __name__ == "__main__":
    sys.exit(console_main())
