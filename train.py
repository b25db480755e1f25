"""Train ZFNet with the recipe of Zeiler & Fergus (2014): zfjax.commands.train (--help)."""

import sys

from zfjax.commands.train import console_main

if __name__ == "__main__":
    sys.exit(console_main())
