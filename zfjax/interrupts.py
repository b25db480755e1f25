"""Ctrl-C in the long commands: noticed even when Python drops it, held during a
save, or left by worker processes to the main one.

A terminal's Ctrl-C sends SIGINT to the whole process group. Python's default
handler raises KeyboardInterrupt in whatever Python code the main thread runs next.
When that code is a finalizer (a weakref callback or a ``__del__``; JAX's caches run
many of them while training), Python prints "Exception ignored in: ..." and carries
on: the press is lost and a 70-epoch run goes on training.

* ``watched()`` around a long loop: each press is noted as well as raised, and the
  loop calls ``Watch.check()`` between steps, so a press that Python dropped still
  stops it there (quietly: the "Exception ignored" report is left out).
* ``deferred()`` around a write that must not be cut (a checkpoint save): a press
  waits until the write is complete.
* ``ignore`` as a worker process's start-up (prepare's decoders, Grain's workers):
  the main process handles Ctrl-C for all of them.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator


class Watch:
    """Whether Ctrl-C was pressed inside a ``watched()`` block."""

    def __init__(self):
        self.pressed = False

    def check(self) -> None:
        """Raises KeyboardInterrupt if Ctrl-C was pressed since the block began (also
        when the KeyboardInterrupt raised then was dropped by a finalizer)."""
        if self.pressed:
            raise KeyboardInterrupt

    def _on_sigint(self, signum, frame):
        self.pressed = True
        raise KeyboardInterrupt


@contextlib.contextmanager
def watched() -> Iterator[Watch]:
    """Yields a Watch that notes every Ctrl-C in the block (which still raises
    KeyboardInterrupt at once, as usual). Python's report of a KeyboardInterrupt it
    dropped in a finalizer is left out: the next ``check()`` acts on it. Off the main
    thread, where Python delivers no signals, the Watch never fires."""
    watch = Watch()
    report = sys.unraisablehook

    def unless_noted(unraisable):
        if not (watch.pressed and issubclass(unraisable.exc_type, KeyboardInterrupt)):
            report(unraisable)

    sys.unraisablehook = unless_noted
    try:
        with _handler(watch._on_sigint):
            yield watch
    finally:
        sys.unraisablehook = report


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Holds a Ctrl-C pressed inside the block and raises KeyboardInterrupt when the
    block has ended: a checkpoint save then finishes (seconds) instead of leaving
    orbax's writer threads failing noisily."""
    pressed = []
    with _handler(lambda *_: pressed.append(True)):
        yield
    if pressed:
        raise KeyboardInterrupt


def ignore(*_) -> None:
    """Start-up of a worker process: leave Ctrl-C to the main process, which reports
    what is kept and shuts the workers down (each would otherwise print a
    KeyboardInterrupt traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _handler(on_sigint) -> Iterator[None]:
    """Python's SIGINT handler is on_sigint inside the block, the previous one after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None
                      else signal.default_int_handler)
