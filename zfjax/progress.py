"""Progress bars: live tqdm bars on a terminal, sparse whole lines in a log.

tqdm redraws its bar with carriage returns many times a second, which in a log
file (stderr redirected) becomes one line per update. ``bar(...)`` returns a tqdm
that, when stderr is not a terminal, writes a plain line at most every
LOG_INTERVAL seconds (and the last state when it closes).
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL = 30.0  # seconds between lines when stderr is a log


class _Lines:
    """A text stream for tqdm that turns each redraw into one whole line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """A tqdm whose postfix updates wait for the next line instead of forcing one."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=True):
        super().set_postfix_str(s, refresh=False)


def bar(*, disable: bool = False, **kwargs) -> tqdm:
    """tqdm(**kwargs) suited to where stderr goes (see the module docstring)."""
    stream = sys.stderr
    if disable or stream is None or stream.isatty():
        return tqdm(disable=disable, **kwargs)
    kwargs.pop("leave", None)  # in a log, the last line stays
    return _LogBar(file=_Lines(stream), mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL,
                   miniters=1, ascii=True, dynamic_ncols=False, ncols=100, **kwargs)
