"""Checked numbers for command-line options: argparse ``type=`` functions.

One rule per kind of number, used by train.py and every visualize.py subcommand,
so a bad value is refused at parse time with argparse's one line naming the flag
(``error: argument --limit: must be an integer >= 1, got '0'``) instead of being
reinterpreted (0 meaning "all", -5 meaning "all but five") or reaching the math
as NaN.
"""

from __future__ import annotations

import argparse
import math


def _number(kind, text: str, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def int_range(low: int, high: int | None = None):
    """A type= function accepting integers low <= n (<= high)."""
    what = (f"an integer from {low} to {high}" if high is not None
            else f"an integer >= {low}")

    def check(text: str) -> int:
        value = _number(int, text, what)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    check.__name__ = f"int_range({low}, {high})"
    return check


def float_range(low: float | None = None, high: float | None = None, *,
                low_open: bool = False):
    """A type= function accepting finite floats in [low, high] ((low, high] if low_open)."""
    parts = ([f"> {low:g}" if low_open else f">= {low:g}"] if low is not None else []) + (
        [f"<= {high:g}"] if high is not None else [])
    what = "a finite number" + (f" {' and '.join(parts)}" if parts else "")

    def check(text: str) -> float:
        value = _number(float, text, what)
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    check.__name__ = "float_range"
    return check


positive_int = int_range(1)
nonnegative_int = int_range(0)
finite_float = float_range()
positive_float = float_range(0.0, low_open=True)
nonnegative_float = float_range(0.0)
unit_interval = float_range(0.0, 1.0, low_open=True)  # fractions in (0, 1]
seed = int_range(0, 2**32 - 1)  # numpy and JAX both take seeds in 0 .. 2**32 - 1
# Input side of the network: ZFNet needs >= 64 px; past 1024 px a single image's
# activations alone need gigabytes.
image_size = int_range(64, 1024)
# Channel multiplier: width 4 is already 16x the paper's parameters (about 900 M).
width = float_range(0.0, 4.0, low_open=True)
