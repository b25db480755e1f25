"""Train architecture variants one after another and write the paper's Table 3:
zfjax.commands.sweep (--help)."""

import sys

from zfjax.commands.sweep import console_main

if __name__ == "__main__":
    sys.exit(console_main())
