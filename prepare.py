"""Prepare a dataset once for streamed training: zfjax.commands.prepare (--help)."""

import sys

from zfjax.commands.prepare import console_main

if __name__ == "__main__":
    sys.exit(console_main())
