"""How the user started zfjax, for every line that names a command: usage and error
lines, and hints that say what to run next (``continue with: zfjax-train --out RUN
--resume``). A process started as an entry point (``zfjax-train``) names the entry
points; one started from a script, with ``python -m`` or in-process names the scripts."""

from __future__ import annotations

import sys
from pathlib import Path

ENTRY_POINT_PREFIX = "zfjax-"


def _started_as() -> str:
    return Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""


def program_name(script: str) -> str:
    """The name a command gives itself in usage and error lines: the entry point's
    (``zfjax-train``) when this process was started as one, else ``script``
    (``train.py``)."""
    started_as = _started_as()
    return started_as if started_as.startswith(ENTRY_POINT_PREFIX) else script


def command_line(script: str) -> str:
    """What a hint tells the user to type to run ``script`` (``prepare.py``):
    ``zfjax-prepare`` when this process was started as any entry point, else
    ``python prepare.py``."""
    if _started_as().startswith(ENTRY_POINT_PREFIX):
        return ENTRY_POINT_PREFIX + Path(script).stem
    return f"python {script}"
